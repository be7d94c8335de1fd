"""The teacher behind one small interface: "the log-probs of these tokens under the teacher".

OPD's `sampled` estimator needs only the teacher's log-prob of each token the student
sampled; the `full` estimator needs the teacher's whole next-token distribution, or,
from a remote teacher, its top-k (`losses.topk_tail_reverse_kl`). Two implementations:

- `InProcessTeacher`: the teacher model in this process (one forward over the
  completions; also returns the full logits, which the engine uses for the exact KL
  and the per-token records);
- `VllmTeacher`: a vLLM server's OpenAI-compatible `/v1/completions` with token-id
  prompts and `prompt_logprobs=k` (vLLM's extension of the API): the server scores the
  prompt-plus-completion tokens and returns, at each position, the log-prob of the
  token that is there plus the top-k alternatives. Only `httpx` is needed on this side
  (`pip install opd-lab[vllm]` names it; gradio already brings it).

    vllm serve HuggingFaceTB/SmolLM2-1.7B-Instruct --max-logprobs 20   # on the teacher's GPU

A remote teacher scores at temperature 1 (vLLM's prompt log-probs are those of the raw
logits), so it serves runs sampled at temperature 1 only.

`load_teacher` builds a run's teacher, in process or behind its server, after checking
that it shares the student's tokenizer; `teacher_routing` puts one in front of each task.

Example:
    >>> scorer = InProcessTeacher(teacher)  # doctest: +SKIP
    >>> scores = scorer.score(rollouts, top_k=5)  # doctest: +SKIP
    >>> scores.logprobs_BL.shape == rollouts.completion_mask_BL.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from opd_lab.flops import count_parameters
from opd_lab.generation import Rollouts, completion_logits
from opd_lab.losses import chunked_token_logprobs, tempered_log_softmax
from opd_lab.models import PairMismatchError, check_pair_compatible, load_model, load_tokenizer, parameter_count
from opd_lab.noisy_teacher import NoisyTeacherModel


@dataclass
class TeacherScores:
    """The teacher's view of a batch's completion tokens (L = completion columns).

    `logprobs_BL` is 0 off `rollouts.completion_mask_BL`; the top-k tensors are None
    when `top_k` was 0, and padded positions hold id 0 with log-prob -inf.
    """

    logprobs_BL: torch.Tensor  # (B, L) log p_teacher of each completion token
    top_ids_BLK: torch.Tensor | None = None  # (B, L, K) the teacher's k most likely tokens
    top_logprobs_BLK: torch.Tensor | None = None  # (B, L, K) their log-probs, descending
    logits_BLV: torch.Tensor | None = None  # (B, L, V) full logits; in-process teachers only
    logprobs_BLV: torch.Tensor | None = None  # (B, L, V) their tempered log-softmax; in-process, with a top-k only


class TeacherScorer(Protocol):
    """What the engine asks of a teacher."""

    def score(self, rollouts: Rollouts, top_k: int = 0) -> TeacherScores:
        """Log-probs of `rollouts`' completion tokens (and the top-k) at the rollouts' temperature."""
        ...


class InProcessTeacher:
    """The teacher model in this process; one batched forward, no gradients."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def score(self, rollouts: Rollouts, top_k: int = 0) -> TeacherScores:
        logits_BLV = completion_logits(self.model, rollouts)
        mask_BL = rollouts.completion_mask_BL
        # The sampled tokens' log-probs a chunk at a time; the (B, L, V) log-softmax only for a top-k.
        logps_BL = chunked_token_logprobs(logits_BLV, rollouts.sequences_BS[:, rollouts.prompt_length :],
                                          rollouts.temperature) * mask_BL
        logps_BLV = tempered_log_softmax(logits_BLV, rollouts.temperature) if top_k else None
        top = logps_BLV.topk(top_k, dim=-1) if top_k else None
        return TeacherScores(logps_BL, top.indices if top else None, top.values if top else None, logits_BLV,
                             logps_BLV)


class VllmTeacher:
    """A vLLM server's prompt log-probs (`/v1/completions`, token-id prompts, `prompt_logprobs`).

    Args:
        base_url: the server, e.g. "http://teacher-host:8000" (with or without "/v1").
        model: the model name the server serves (`vllm serve NAME`).
        timeout_s: how long one scoring request may take.
    """

    def __init__(self, base_url: str, model: str, timeout_s: float = 120.0):
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/v1/completions"
        self.model, self.timeout_s = model, timeout_s

    def score(self, rollouts: Rollouts, top_k: int = 0) -> TeacherScores:
        if rollouts.temperature != 1.0:
            raise ValueError(f"a vLLM teacher scores at temperature 1, not {rollouts.temperature}: "
                             "sample at temperature 1 or use the in-process teacher")
        import httpx

        token_rows = [row[mask.bool()].tolist() for row, mask in zip(rollouts.sequences_BS, rollouts.attention_mask_BS)]
        request = {"model": self.model, "prompt": token_rows, "max_tokens": 1, "temperature": 1.0,
                   "prompt_logprobs": top_k}
        try:
            response = httpx.post(self.url, json=request, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise RuntimeError(f"teacher server {self.url}: {error}") from None
        return scores_from_vllm(response.json(), rollouts, top_k)


def scores_from_vllm(response: dict, rollouts: Rollouts, top_k: int) -> TeacherScores:
    """`TeacherScores` from a vLLM `/v1/completions` response with `prompt_logprobs`.

    Each choice (one per prompt, by `index`) has `prompt_logprobs`: one entry per prompt
    token, None for the first, else `{token id as a string: {"logprob", "rank",
    "decoded_token"}}` holding the token that is there plus the top-k.
    """
    mask_BL = rollouts.completion_mask_BL
    batch, length = mask_BL.shape
    logps_BL = torch.zeros(batch, length)
    top_ids_BLK = torch.zeros(batch, length, top_k, dtype=torch.long)
    top_logps_BLK = torch.full((batch, length, top_k), float("-inf"))
    choices = sorted(response.get("choices", []), key=lambda choice: choice["index"])
    if len(choices) != batch:
        raise ValueError(f"the teacher server answered {len(choices)} choices for {batch} sequences")
    prompt_lengths = rollouts.attention_mask_BS[:, : rollouts.prompt_length].sum(dim=1).tolist()
    completion_BL = rollouts.sequences_BS[:, rollouts.prompt_length :]
    for row, choice in enumerate(choices):
        entries = choice.get("prompt_logprobs")
        if entries is None:
            raise ValueError("the teacher server returned no prompt_logprobs (is it vLLM, with --max-logprobs "
                             f">= {top_k}?)")
        for column in range(int(mask_BL[row].sum())):
            entry = entries[int(prompt_lengths[row]) + column]
            logps_BL[row, column] = entry[str(int(completion_BL[row, column]))]["logprob"]
            ranked = sorted(((item["rank"], int(token), item["logprob"]) for token, item in entry.items()
                             if item.get("rank") is not None and item["rank"] <= top_k))
            for k, (_, token, logprob) in enumerate(ranked[:top_k]):
                top_ids_BLK[row, column, k], top_logps_BLK[row, column, k] = token, logprob
    device = mask_BL.device
    return TeacherScores(logps_BL.to(device), top_ids_BLK.to(device) if top_k else None,
                         top_logps_BLK.to(device) if top_k else None)


@dataclass
class Teacher:
    """A run's teacher: how to ask it (`scorer`), its size (for FLOPs), and its model when
    it runs in this process (None behind a server, which cannot write samples here)."""

    spec: str  # the model spec, as the config names it
    scorer: TeacherScorer
    params: int
    model: torch.nn.Module | None = None
    server: str = ""  # the vLLM server's base URL; "" in process


def load_teacher(spec: str, task: str, student_tokenizer, device: torch.device, dtype: torch.dtype,
                 server: str = "", trust_remote_code: bool = False, noise: float = 0.0) -> Teacher:
    """The teacher `spec` for `task` (a bare 'lab' is that task's lab teacher), in process
    (weights in `dtype`, eval mode, no gradients) or scored by `server`. `noise` q > 0 mixes
    uniform noise into an in-process teacher (`noisy_teacher.NoisyTeacherModel`), so its
    scores, samples and greedy answers all come from (1 - q) p + q / V.

    Raises:
        PairMismatchError: its tokenizer or chat template differs from the student's; the
            message names the teacher and its task.
    """
    try:
        check_pair_compatible(load_tokenizer(spec, "teacher", task, trust_remote_code), student_tokenizer)
    except PairMismatchError as error:
        raise PairMismatchError(f"teacher {spec} (task {task}): {error}") from None
    if server:  # its weights stay on the server; only its tokenizer and size are read here
        return Teacher(spec, VllmTeacher(server, spec),
                       parameter_count(spec, "teacher", task, trust_remote_code), None, server)
    model, _ = load_model(spec, "teacher", task, device, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval().requires_grad_(False)
    params = count_parameters(model)
    if noise:
        model = NoisyTeacherModel(model, noise)
    return Teacher(spec, InProcessTeacher(model), params, model)
