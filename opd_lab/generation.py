"""The one inference path: batched sampling and scoring of completions.

Training rollouts, evaluation, the CLI, the app's playground and the notebooks all
sample through `generate` and score through `forward_logits`, so the log-probs a
student reports while sampling are the ones it is trained on.

Batches are left-padded: every prompt ends at the same column, so the completion
tokens of all rows are written in lock-step with a KV cache. Position ids are counted
from each row's first real token (`cumsum(attention_mask) - 1`), so a padded prompt
gets exactly the positions it would get alone.

Layout of a `Rollouts` batch (P = padded prompt length, L = generated length):

    sequences_BS        [pad pad p1 p2 p3 | c1 c2 c3 <eos> pad]   S = P + L
    attention_mask_BS   [ 0   0  1  1  1  |  1  1  1   1    0 ]
    target_mask_BT      mask over *targets* sequences[:, 1:] (T = S - 1): 1 on c1..<eos>

Targets are shifted by one because the logits at position s predict token s + 1.

Decoding: a row that writes EOS leaves the decoding batch and the KV cache, so the
model runs only on the rows still writing. Sampling draws its noise for the whole batch
at every step (`_sample_tokens`), so a seed gives exactly the tokens of a loop that
keeps every row to the end. A static (pre-allocated) KV cache was measured and not
used: on the CPU it was slower (lab: 0.90x; SmolLM2: about 0.85x) and cannot shrink.

Example:
    >>> rollouts = generate(model, tokenizer, ["347+285="], max_new_tokens=40)  # doctest: +SKIP
    >>> rollouts.completions[0]  # doctest: +SKIP
    '7+5+0=12;4+8+1=13;3+2+1=06;632'
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from opd_lab.losses import token_logprobs


@dataclass
class Rollouts:
    """A batch of prompts with their completions (see the module docstring for layout)."""

    prompts: list[str]
    completions: list[str]
    sequences_BS: torch.Tensor
    attention_mask_BS: torch.Tensor
    target_mask_BT: torch.Tensor
    sampling_logprobs_BT: torch.Tensor
    prompt_length: int
    temperature: float

    @property
    def completion_lengths(self) -> list[int]:
        """Completion tokens per row, EOS included."""
        return [int(n) for n in self.target_mask_BT.sum(dim=1).tolist()]

    @property
    def first_target(self) -> int:
        """Index in the (B, T) target axis of the first completion token (`prompt_length - 1`)."""
        return self.prompt_length - 1

    @property
    def completion_mask_BL(self) -> torch.Tensor:
        """`target_mask_BT` over the completion columns only (L = S - P)."""
        return self.target_mask_BT[:, self.first_target :]

    @property
    def completion_sampling_logprobs_BL(self) -> torch.Tensor:
        """`sampling_logprobs_BT` over the completion columns only."""
        return self.sampling_logprobs_BT[:, self.first_target :]

    def completion_token_ids(self, row: int) -> list[int]:
        """The token ids of one row's completion (EOS included when it was produced)."""
        length = self.completion_lengths[row]
        return self.sequences_BS[row, self.prompt_length : self.prompt_length + length].tolist()


def format_prompt(tokenizer, prompt: str) -> str:
    """Wrap `prompt` in the tokenizer's chat template when it has one (real chat models).

    Lab tokenizers have no template: their prompts are used as they are.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def encode_prompts(tokenizer, prompts: list[str], device: torch.device | str = "cpu"):
    """Left-padded `(input_ids_BP, attention_mask_BP)` for a list of prompts."""
    if not prompts:
        raise ValueError("encode_prompts needs at least one prompt")
    encoded = [tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("a prompt encodes to zero tokens")
    width = max(len(ids) for ids in encoded)
    pad_id = tokenizer.pad_token_id
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def position_ids_for(attention_mask_BS: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token; padding gets position 0."""
    return (attention_mask_BS.long().cumsum(dim=1) - 1).clamp(min=0)


def forward_logits(model, sequences_BS: torch.Tensor, attention_mask_BS: torch.Tensor,
                   logits_to_keep: int = 0) -> torch.Tensor:
    """Logits `(B, S, V)` for whole sequences, with left-padding-aware positions.

    `logits_to_keep > 0` runs the LM head on the last `logits_to_keep` positions only and
    returns `(B, logits_to_keep, V)`. Gradients flow unless the caller wraps this in
    `torch.no_grad()` (teacher scoring). Logits come back in float32 (a no-op for fp32 models).
    """
    output = model(
        input_ids=sequences_BS,
        attention_mask=attention_mask_BS,
        position_ids=position_ids_for(attention_mask_BS),
        use_cache=False,
        **({"logits_to_keep": logits_to_keep} if logits_to_keep else {}),
    )
    return output.logits.float()


def completion_logits(model, rollouts: Rollouts) -> torch.Tensor:
    """Logits `(B, L, V)` that score the completion tokens only (L = S - P).

    Column l holds the logits at sequence position `P - 1 + l`, which predict completion
    token l; so they line up with `rollouts.completion_mask_BL` and
    `rollouts.sequences_BS[:, P:]`. The LM head never runs on prompt positions: with a
    49k vocabulary and a chat prompt that is a large share of the forward.
    """
    length = rollouts.sequences_BS.shape[1] - rollouts.prompt_length
    logits_BKV = forward_logits(model, rollouts.sequences_BS, rollouts.attention_mask_BS, logits_to_keep=length + 1)
    return logits_BKV[:, :-1]


def target_logprobs(logits_BSV: torch.Tensor, rollouts: Rollouts) -> torch.Tensor:
    """Log-probs `(B, S-1)` of each next token, at the rollouts' sampling temperature."""
    return token_logprobs(logits_BSV[:, :-1], rollouts.sequences_BS[:, 1:], temperature=rollouts.temperature)


def _cache_argument(model) -> str:
    """The keyword that passes the KV cache: `cache` in recent transformers, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _returned_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    row_seeds: list[int] | None = None,
) -> Rollouts:
    """Sample (or greedily decode) one completion per prompt, as one batch.

    Args:
        model: a causal LM (lab or Hugging Face), in eval mode or not: no gradients are taken.
        tokenizer: its tokenizer; `pad_token_id` and `eos_token_id` must be set.
        prompts: B prompt strings (chat-templated here when the tokenizer has a template).
        max_new_tokens: the most tokens a completion may have; rows stop at EOS.
        temperature: softmax temperature; the recorded log-probs are those of the
            tempered distribution that was actually sampled.
        greedy: take the argmax instead of sampling (log-probs still recorded).
        generator: a seeded `torch.Generator` on the model's device, for reproducibility.
        row_seeds: one seed per prompt instead of `generator`: each row then draws its
            tokens by inverse-CDF from its own stream of uniforms, so a row's completion
            does not depend on the other rows of the batch (data-parallel runs split a
            batch across processes; `distributed.row_seeds`).

    Returns:
        Rollouts with B rows; `sampling_logprobs_BT` holds the log-prob of each sampled
        token under the sampling policy, aligned with `target_mask_BT`.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if temperature <= 0:
        raise ValueError("temperature must be positive (use greedy=True for argmax decoding)")
    was_training = model.training
    model.eval()
    try:
        uniforms_BL = None
        if row_seeds is not None:
            if len(row_seeds) != len(prompts):
                raise ValueError(f"{len(row_seeds)} row seeds for {len(prompts)} prompts")
            uniforms_BL = torch.stack([
                torch.rand(max_new_tokens, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
                for seed in row_seeds]).to(_model_device(model))
        return _generate_batch(model, tokenizer, prompts, max_new_tokens, temperature, greedy, generator,
                               uniforms_BL)
    finally:
        model.train(was_training)


def _inverse_cdf_sample(logprobs_RV: torch.Tensor, uniforms_R: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative-probability interval holds each row's uniform, (R,).

    `right=True` never returns a token of probability 0 (its interval is empty).
    """
    cdf_RV = logprobs_RV.double().exp().cumsum(dim=-1)
    targets_R1 = (uniforms_R * cdf_RV[:, -1])[:, None]
    return torch.searchsorted(cdf_RV, targets_R1, right=True).squeeze(1).clamp(max=cdf_RV.shape[-1] - 1)


def _sample_tokens(logprobs_RV: torch.Tensor, rows_R: torch.Tensor, batch: int, greedy: bool,
                   generator: torch.Generator | None) -> torch.Tensor:
    """One token per decoding row R, from its log-probs `(R, V)`.

    Sampling is `torch.multinomial(p, 1)` written out: torch draws it as
    `argmax(p / q)` with `q ~ Exp(1)` (the Gumbel-max trick). The noise is drawn for
    all `batch` rows, finished ones included, and `rows_R` picks the decoding rows' noise,
    so a seed gives the same random stream, and so the same tokens, as a loop that keeps
    every row in the batch until the end.
    """
    if greedy:
        return logprobs_RV.argmax(dim=-1)
    noise_BV = torch.empty((batch, logprobs_RV.shape[1]), dtype=logprobs_RV.dtype,
                           device=logprobs_RV.device).exponential_(1, generator=generator)
    if rows_R.shape[0] < batch:
        noise_BV = noise_BV.index_select(0, rows_R)
    return (logprobs_RV.exp() / noise_BV).argmax(dim=-1)


def _generate_batch(model, tokenizer, prompts, max_new_tokens, temperature, greedy, generator,
                    uniforms_BL: torch.Tensor | None = None) -> Rollouts:
    """The decode loop. Rows that produced EOS leave the decoding batch (and the KV cache):
    the model runs on the R rows still writing, so a batch stops costing compute row by
    row. `rows_R` maps each decoding row to its row of the batch. With `uniforms_BL`
    (per-row seeds), row b's token at column l comes from its own uniform `uniforms_BL[b, l]`."""
    device = _model_device(model)
    input_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    batch, prompt_length = input_ids.shape
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    output = model(input_ids=input_ids, attention_mask=prompt_mask,
                   position_ids=position_ids_for(prompt_mask), use_cache=True, logits_to_keep=1)
    cache_argument = _cache_argument(model)
    cache, next_logits_RV = _returned_cache(output), output.logits[:, -1].float()
    # Every decoding row attends to its prompt and to all it has written: one mask for
    # the whole loop, sliced (a view) at each step instead of grown by a copy.
    decode_mask_RS = torch.cat([prompt_mask, prompt_mask.new_ones((batch, max_new_tokens))], dim=1)
    positions_R = position_ids_for(prompt_mask)[:, -1]
    rows_R = torch.arange(batch, device=device)
    completion_BL = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs_BL = torch.zeros((batch, max_new_tokens), device=device)
    length = max_new_tokens
    for column in range(max_new_tokens):
        logprobs_RV = torch.log_softmax(next_logits_RV if temperature == 1.0 else next_logits_RV / temperature, dim=-1)
        if uniforms_BL is not None and not greedy:
            token_R = _inverse_cdf_sample(logprobs_RV, uniforms_BL[rows_R, column])
        else:
            token_R = _sample_tokens(logprobs_RV, rows_R, batch, greedy, generator)
        completion_BL[rows_R, column] = token_R
        logprobs_BL[rows_R, column] = logprobs_RV.gather(1, token_R[:, None]).squeeze(1)
        writing_R = token_R != eos_id
        still_writing = int(writing_R.sum())
        if still_writing == 0 or column == max_new_tokens - 1:
            length = column + 1
            break
        if still_writing < rows_R.shape[0]:  # some rows just wrote EOS: drop them
            keep_R = writing_R.nonzero().squeeze(1)
            cache.batch_select_indices(keep_R)
            rows_R, token_R, positions_R = rows_R[keep_R], token_R[keep_R], positions_R[keep_R]
            decode_mask_RS = decode_mask_RS[keep_R]
        positions_R = positions_R + 1
        output = model(input_ids=token_R[:, None], attention_mask=decode_mask_RS[:, : prompt_length + column + 1],
                       position_ids=positions_R[:, None], use_cache=True, **{cache_argument: cache})
        cache, next_logits_RV = _returned_cache(output), output.logits[:, -1].float()

    completion_BL, logprobs_BL = completion_BL[:, :length], logprobs_BL[:, :length]
    # A row is live up to and including its EOS (or to the end when it never wrote one).
    is_eos_BL = (completion_BL == eos_id).long()
    live_BL = ((is_eos_BL.cumsum(dim=1) - is_eos_BL) == 0).long()
    sequences = torch.cat([input_ids, completion_BL], dim=1)
    full_mask = torch.cat([prompt_mask, live_BL], dim=1)
    target_mask = torch.zeros(batch, sequences.shape[1] - 1, device=device)
    target_mask[:, prompt_length - 1 :] = live_BL.float()
    sampling_logprobs = torch.zeros_like(target_mask)
    sampling_logprobs[:, prompt_length - 1 :] = logprobs_BL * live_BL
    completions = [
        tokenizer.decode(row[mask.bool()].tolist(), skip_special_tokens=True)
        for row, mask in zip(completion_BL, live_BL)
    ]
    return Rollouts(list(prompts), completions, sequences, full_mask, target_mask,
                    sampling_logprobs, prompt_length, temperature)


def rollouts_from_texts(tokenizer, prompts: list[str], completions: list[str],
                        device: torch.device | str = "cpu", temperature: float = 1.0) -> Rollouts:
    """Pack given (prompt, completion) texts into a `Rollouts` batch, EOS appended.

    Used for teacher-written or reference completions (SFT) and for completions typed
    by a user (the app's "what would the teacher say"). `sampling_logprobs_BT` is zero:
    nothing was sampled.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    input_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    encoded = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions]
    batch, prompt_length = input_ids.shape
    length = max(len(ids) for ids in encoded)
    completion_BL = torch.full((batch, length), tokenizer.pad_token_id, dtype=torch.long, device=device)
    live_BL = torch.zeros((batch, length), dtype=torch.long, device=device)
    for row, ids in enumerate(encoded):
        completion_BL[row, : len(ids)] = torch.tensor(ids, device=device)
        live_BL[row, : len(ids)] = 1
    sequences = torch.cat([input_ids, completion_BL], dim=1)
    target_mask = torch.zeros(batch, sequences.shape[1] - 1, device=device)
    target_mask[:, prompt_length - 1 :] = live_BL.float()
    return Rollouts(list(prompts), list(completions), sequences, torch.cat([prompt_mask, live_BL], dim=1),
                    target_mask, torch.zeros_like(target_mask), prompt_length, temperature)
