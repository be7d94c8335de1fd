"""Per-token teacher feedback: what the teacher thinks of every token the student wrote.

For each completion token a `TokenRecord`: its text, the student's and the teacher's
log-probs, their difference (the OPD advantage, `log p_teacher - log p_student`), the
exact full-vocabulary reverse KL at that position, the student's entropy, and both
models' top-k alternatives. The training engine logs these records into `samples.jsonl`; the
app's Inspect and Playground tabs and the notebooks compute them on demand for any
prompt and completion. Each model scores a whole batch in one forward pass.

Example:
    >>> records = score_completions(teacher, student, tokenizer, ["347+285="],
    ...                             ["7+5+0=12;4+8+1=13;3+2+1=06;632"])[0]  # doctest: +SKIP
    >>> records[0]["text"], round(records[0]["reverse_kl"], 3)  # doctest: +SKIP
    ('7', 0.002)
"""

from __future__ import annotations

import math

from typing import TypedDict

import torch

from opd_lab.generation import Rollouts, completion_logits, generate, rollouts_from_texts
from opd_lab.losses import kl_from_logprobs


def token_texts(tokenizer, token_ids: list[int]) -> list[str]:
    """Each token's share of the decoded text, so that `"".join(texts) == tokenizer.decode(token_ids)`.

    Byte-level BPE (SmolLM2, GPT-2, Llama 3) may split one character (é, an emoji, CJK)
    over several tokens; decoding those tokens one by one gives U+FFFD pieces. Here the
    ids are decoded cumulatively and each token gets the text it completes: a token that
    ends inside a character gets "", and the token that completes it carries the whole
    character. Decoding in context also keeps a leading space that some tokenizers drop
    when a token is decoded alone. A text that really ends in U+FFFD is kept back until
    a later token or the last one.

    Example:
        >>> tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> token_texts(tokenizer, tokenizer("x🦜", add_special_tokens=False)["input_ids"])  # doctest: +SKIP
        ['x', '', '', '🦜']
    """
    texts, emitted = [], ""
    for end in range(1, len(token_ids) + 1):
        decoded = tokenizer.decode(token_ids[:end], clean_up_tokenization_spaces=False)
        unfinished = decoded.endswith("\ufffd") and end < len(token_ids)
        if unfinished or not decoded.startswith(emitted):
            texts.append("")
            continue
        texts.append(decoded[len(emitted):])
        emitted = decoded
    return texts


class TokenRecord(TypedDict, total=False):
    """One completion token as both models see it: an entry of samples.jsonl's `tokens`.

    Probabilities are at the rollouts' sampling temperature. The teacher's fields are
    there only when a teacher scored the token.
    """

    text: str  # the text this token completes (see `token_texts`): the completion's records join to its text
    token_id: int
    student_logprob: float  # log p_student(token)
    student_entropy: float  # entropy of the student's next-token distribution (nats)
    student_top: list[list]  # the student's top-k alternatives, [[text, probability], ...]
    teacher_logprob: float  # log p_teacher(token)
    advantage: float  # log p_teacher(token) - log p_student(token): OPD's per-token signal
    reverse_kl: float  # exact KL(student ‖ teacher) over the whole vocabulary at this position
    teacher_top: list[list]  # the teacher's top-k alternatives


def _top(logprobs_V: torch.Tensor, tokenizer, k: int) -> list[list]:
    values, indices = logprobs_V.topk(k)
    return [[tokenizer.decode([int(i)]), round(float(v.exp()), 6)] for v, i in zip(values, indices)]


def token_records(tokenizer, rollouts: Rollouts, student_logits_BLV: torch.Tensor,
                  teacher_logits_BLV: torch.Tensor | None, rows: list[int] | None = None,
                  top_k: int = 5, teacher_top=None) -> list[list[TokenRecord]]:
    """Per-token records of the completions of `rows` (all rows by default).

    Args:
        rollouts: the batch the logits were computed on.
        student_logits_BLV, teacher_logits_BLV: logits that score the completion tokens
            (`generation.completion_logits`; column l predicts completion token l). The
            teacher's may be None, then only student fields are filled.
        top_k: how many alternatives to list per model.
        teacher_top: instead of the teacher's logits, a teacher known only by its scores
            (`teacher_scoring.TeacherScores` from a teacher server: `logprobs_BL`,
            `top_ids_BLK`, `top_logprobs_BLK`): fills `teacher_logprob`, `advantage` and
            `teacher_top` (its first `top_k`), and no `reverse_kl`, which needs the
            teacher's whole distribution.

    Returns:
        One list of token dicts per row (see docs/run-folder.md, samples.jsonl).
    """
    temperature = rollouts.temperature
    rows = list(rows if rows is not None else range(len(rollouts.prompts)))
    student_logprobs = torch.log_softmax(student_logits_BLV[rows].detach().float() / temperature, dim=-1)
    teacher_logprobs = (torch.log_softmax(teacher_logits_BLV[rows].detach().float() / temperature, dim=-1)
                        if teacher_logits_BLV is not None else None)
    if teacher_logprobs is not None:
        kl_BL = kl_from_logprobs(student_logprobs, teacher_logprobs)
    targets_BL = rollouts.sequences_BS[:, rollouts.prompt_length :]
    mask_BL = rollouts.completion_mask_BL
    results = []
    for index, row in enumerate(rows):
        records = []
        positions = mask_BL[row].nonzero().flatten().tolist()
        texts = token_texts(tokenizer, [int(targets_BL[row, t]) for t in positions])
        for t, text in zip(positions, texts):
            token = int(targets_BL[row, t])
            s_lp = student_logprobs[index, t]
            entropy = float(-(s_lp.exp() * s_lp).sum())
            record = TokenRecord(text=text, token_id=token,
                                 student_logprob=float(s_lp[token]), student_entropy=entropy,
                                 student_top=_top(s_lp, tokenizer, top_k))
            if teacher_logprobs is not None:
                t_lp = teacher_logprobs[index, t]
                record.update(teacher_logprob=float(t_lp[token]), advantage=float(t_lp[token] - s_lp[token]),
                              reverse_kl=float(kl_BL[index, t]), teacher_top=_top(t_lp, tokenizer, top_k))
            elif teacher_top is not None:
                t_token = float(teacher_top.logprobs_BL[row, t])
                pairs = zip(teacher_top.top_ids_BLK[row, t, :top_k].tolist(),
                            teacher_top.top_logprobs_BLK[row, t, :top_k].tolist())
                record.update(teacher_logprob=t_token, advantage=t_token - float(s_lp[token]),
                              teacher_top=[[tokenizer.decode([i]), round(math.exp(v), 6)] for i, v in pairs
                                           if v != float("-inf")])
            records.append(record)
        results.append(records)
    return results


@torch.no_grad()
def score_rollouts(teacher, student, tokenizer, rollouts: Rollouts, top_k: int = 5) -> list[list[TokenRecord]]:
    """Records for every row of `rollouts`, one forward pass per model."""
    student_logits = completion_logits(student, rollouts)
    teacher_logits = completion_logits(teacher, rollouts) if teacher is not None else None
    return token_records(tokenizer, rollouts, student_logits, teacher_logits, top_k=top_k)


def score_completions(teacher, student, tokenizer, prompts: list[str], completions: list[str],
                      top_k: int = 5) -> list[list[TokenRecord]]:
    """Records for given completions (typed, edited, or read from a run), EOS appended.

    "What would the teacher say": the teacher judges each token of a completion that
    neither model needs to have written.
    """
    device = next(student.parameters()).device
    rollouts = rollouts_from_texts(tokenizer, prompts, completions, device=device)
    return score_rollouts(teacher, student, tokenizer, rollouts, top_k=top_k)


def sample_and_score(teacher, student, tokenizer, prompts: list[str], max_new_tokens: int,
                     greedy: bool = True, temperature: float = 1.0, seed: int = 0,
                     top_k: int = 5) -> tuple[list[str], list[list[TokenRecord]]]:
    """Let the student answer, then score its answers: `(completions, records)`."""
    device = next(student.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rollouts = generate(student, tokenizer, prompts, max_new_tokens, temperature=temperature,
                        greedy=greedy, generator=generator)
    return rollouts.completions, score_rollouts(teacher, student, tokenizer, rollouts, top_k=top_k)


def rewrite_from(teacher, student, tokenizer, prompt: str, records: list[TokenRecord], position: int,
                 replacement: str, max_new_tokens: int, greedy: bool = True, temperature: float = 1.0,
                 seed: int = 0, top_k: int = 5) -> tuple[str, list[TokenRecord]]:
    """The red pen: replace token `position` of a completion and let the student go on from there.

    The completion keeps its tokens before `position`, takes `replacement` (the
    teacher's choice, or any other text) at `position`, and the student writes the rest
    by itself; the teacher then scores the whole new completion. This is OPD's promise
    made tangible: does the student recover once its mistake is corrected?

    Args:
        records: the old completion's records (their ``text`` fields are joined).
        position: index of the token to replace, 0 <= position < len(records).
        replacement: the text written in its place.
        max_new_tokens: the task's budget for the whole completion.

    Returns:
        `(new completion, its records)`.

    Example:
        >>> completion, new_records = rewrite_from(teacher, student, tokenizer, "347+285=", records,
        ...                                        position=22, replacement="6", max_new_tokens=40)  # doctest: +SKIP
    """
    if not 0 <= position < len(records):
        raise ValueError(f"position must be between 0 and {len(records) - 1} (got {position})")
    kept = "".join(str(record.get("text", "")) for record in records[:position])
    if replacement == tokenizer.decode([tokenizer.eos_token_id]):  # the pen ends the completion here
        completion = kept
    else:
        device = next(student.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        rollouts = generate(student, tokenizer, [prompt + kept + replacement], max(1, max_new_tokens - position - 1),
                            temperature=temperature, greedy=greedy, generator=generator)
        completion = kept + replacement + rollouts.completions[0]
    return completion, score_completions(teacher, student, tokenizer, [prompt], [completion], top_k=top_k)[0]
