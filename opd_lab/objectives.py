"""What the student's own samples are trained on: one named objective per training signal.

The on-policy part of a step (`trainer.Trainer`) has the student's completion logits and,
for OPD, the teacher's scores of the same tokens. Which loss it takes from them is the
run's choice (`RunConfig.method`, `estimator`); `objective_for` makes it, and each choice
is one small function here:

| run                                         | objective            | loss (in `losses`)                     |
| ------------------------------------------- | -------------------- | -------------------------------------- |
| OPD `sampled` / `clipped`, and RL           | `policy_gradient`    | `per_token_advantages`, `policy_gradient_loss` |
| OPD `full`, teacher in process              | `full_divergence`    | `divergence_loss` (exact, over V)      |
| OPD `full`, teacher behind a server (top-k) | `topk_tail`          | `topk_tail_loss` (a lower bound)       |
| OPD `topk`                                  | `topk_renormalized`  | `topk_renormalized_reverse_kl`         |

Each returns an `Objective`: the loss (a mean over the part's completion tokens) and its
metrics: `logprob_diff` (the gap between the log-probs the sampler recorded and the
trained student's, `sampler_gap`) and those only that objective has. The loss math stays in `losses` (pure
functions); this module only picks and wires it.

The logged divergence belongs to no objective: `TokenKL.of` measures every part's
per-token reverse KL, exact from full teacher logits (`train/reverse_kl`) or its top-k +
tail lower bound from a teacher server (`train/reverse_kl_topk`), whatever trained it.

Example:
    >>> objective = objective_for(config, scores)  # doctest: +SKIP
    >>> result = objective(OnPolicyBatch(student_logits_BLV, targets_BL, sampling_logps_BL, mask_BL,
    ...                                  rewards_B, scores), config)  # doctest: +SKIP
    >>> result.loss.backward()  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from opd_lab import losses
from opd_lab.config import RunConfig
from opd_lab.teacher_scoring import TeacherScores

# Metrics of `losses` an objective does not report: the step reports the loss once for
# the whole batch and the KL through `TokenKL`; `sampler_gap` gives logprob_diff.
_REPORTED_ELSEWHERE = ("loss", "reverse_kl", "reverse_kl_topk", "logprob_diff")


@dataclass
class OnPolicyBatch:
    """What an objective sees of one on-policy part (L = completion columns)."""

    student_logits_BLV: torch.Tensor  # (B, L, V) the student's completion logits, with the graph
    targets_BL: torch.Tensor  # (B, L) the sampled token ids
    sampling_logps_BL: torch.Tensor  # (B, L) the student's log-probs of them at sampling time
    mask_BL: torch.Tensor  # (B, L) 1 on the completion tokens
    rewards_B: torch.Tensor  # (B,) the verifier's reward of each sample
    scores: TeacherScores | None  # the teacher's view; None for RL on a step that logs nothing


@dataclass
class Objective:
    """One objective's result on a part."""

    loss: torch.Tensor  # a mean over the part's completion tokens, with the graph
    metrics: dict[str, float] = field(default_factory=dict)  # without "train/"


def sampler_gap(logps_BL: torch.Tensor, batch: OnPolicyBatch) -> dict[str, float]:
    """`logprob_diff`: the mean over completion tokens of |log p_trained - log p_sampled|, how far
    the student being trained is from the one that sampled (0 but for float noise on-policy)."""
    gap_BL = (logps_BL.detach() - batch.sampling_logps_BL).abs()
    return {"logprob_diff": float(losses.masked_mean(gap_BL, batch.mask_BL))}


def _own(metrics: dict[str, float], logps_BL: torch.Tensor, batch: OnPolicyBatch) -> dict[str, float]:
    """An objective's metrics: `sampler_gap`'s and those of `losses` reported nowhere else."""
    return {**sampler_gap(logps_BL, batch),
            **{key: value for key, value in metrics.items() if key not in _REPORTED_ELSEWHERE}}


def policy_gradient(batch: OnPolicyBatch, config: RunConfig) -> Objective:
    """OPD `sampled` and `clipped`, and RL: a per-token advantage (`losses.per_token_advantages`:
    the teacher's log-prob minus the student's, or the group-normalized reward) fed to the
    one policy-gradient loss. The picked tokens' log-probs are taken a chunk of positions at
    a time, so no (B, L, V) log-softmax is kept for the backward."""
    logps_BL = losses.chunked_token_logprobs(batch.student_logits_BLV, batch.targets_BL, config.temperature)
    advantages_BL, signal_metrics = losses.per_token_advantages(
        config.method, batch.mask_BL, batch.rewards_B,
        teacher_logps_BT=batch.scores.logprobs_BL if config.method == "opd" else None,
        sampling_logps_BT=batch.sampling_logps_BL, group_size=config.samples_per_prompt,
        reward_coef=config.reward_coef,
        advantage_clip=config.advantage_clip if config.estimator == "clipped" else 0.0)
    loss, metrics = losses.policy_gradient_loss(logps_BL, batch.sampling_logps_BL, advantages_BL, batch.mask_BL)
    return Objective(loss, {**_own(metrics, logps_BL, batch), **signal_metrics})


def _exact(batch: OnPolicyBatch, config: RunConfig) -> Objective:
    """The exact loss of the run's estimator (`losses.exact_loss`, the same function the
    off-policy part uses on teacher-written prefixes), differentiated through the student."""
    loss, metrics = losses.exact_loss(batch.student_logits_BLV, batch.scores.logits_BLV, batch.mask_BL,
                                      config.estimator, config.divergence, beta=config.jsd_beta,
                                      top_k=config.estimator_top_k, temperature=config.temperature)
    with torch.no_grad():  # only for train/logprob_diff: no graph
        logps_BL = losses.token_logprobs(batch.student_logits_BLV, batch.targets_BL, config.temperature)
    return Objective(loss, _own(metrics, logps_BL, batch))


def full_divergence(batch: OnPolicyBatch, config: RunConfig) -> Objective:
    """OPD `full` with the teacher in process: the exact divergence (`RunConfig.divergence`)
    over the vocabulary at the sampling temperature."""
    return _exact(batch, config)


def topk_tail(batch: OnPolicyBatch, config: RunConfig) -> Objective:
    """OPD `full` with a teacher server, which returns its top-k only: the top-k + tail
    lower bound of the reverse KL (`losses.topk_tail_loss`), at temperature 1 (a server
    scores nothing else; `RunConfig` refuses other temperatures with one)."""
    scores = batch.scores
    student_logps_BLV = losses.tempered_log_softmax(batch.student_logits_BLV, 1.0)
    loss, metrics = losses.topk_tail_loss(student_logps_BLV, scores.top_ids_BLK, scores.top_logprobs_BLK,
                                          batch.mask_BL)
    logps_BL = losses.gather_tokens(student_logps_BLV.detach(), batch.targets_BL)
    return Objective(loss, _own(metrics, logps_BL, batch))


def topk_renormalized(batch: OnPolicyBatch, config: RunConfig) -> Objective:
    """OPD `topk`: the exact reverse KL over the student's `estimator_top_k` most likely
    tokens, both distributions renormalized there (`losses.topk_renormalized_reverse_kl`)."""
    return _exact(batch, config)


def objective_for(config: RunConfig,
                  scores: TeacherScores | None) -> Callable[[OnPolicyBatch, RunConfig], Objective]:
    """The objective a run trains its on-policy samples with (the table in the module docstring).

    `scores` matters only for OPD `full`: without full teacher logits (a teacher server)
    it falls back on the top-k + tail bound."""
    if config.method == "opd" and config.estimator == "full":
        return full_divergence if scores.logits_BLV is not None else topk_tail
    if config.method == "opd" and config.estimator == "topk":
        return topk_renormalized
    return policy_gradient


@dataclass
class TokenKL:
    """Each completion token's reverse KL from the student to its teacher, (B, L), no graph.

    The one place training measures it: `name` is "reverse_kl" for the exact KL from full
    teacher logits, "reverse_kl_topk" for its top-k + tail lower bound from a teacher
    server's top-k (never called `reverse_kl`), and "" when the teacher did not score the
    part (RL and SFT on a step that logs nothing).
    """

    name: str = ""
    per_token_BL: torch.Tensor | None = None

    @classmethod
    def of(cls, student_logits_BLV: torch.Tensor, scores: TeacherScores | None, temperature: float) -> "TokenKL":
        """The KL of a part's tokens at `temperature` (the rollouts' sampling temperature)."""
        if scores is not None and scores.logits_BLV is not None:
            return cls("reverse_kl", losses.chunked_reverse_kl(student_logits_BLV.detach(), scores.logits_BLV,
                                                               temperature))
        if scores is not None and scores.top_ids_BLK is not None:
            student_logps_BLV = losses.tempered_log_softmax(student_logits_BLV.detach(), temperature)
            return cls("reverse_kl_topk", losses.topk_tail_reverse_kl(student_logps_BLV, scores.top_ids_BLK,
                                                                      scores.top_logprobs_BLK))
        return cls()

    def metrics(self, mask_BL: torch.Tensor) -> dict[str, float]:
        """`{"train/reverse_kl": mean over the masked tokens}` (or `train/reverse_kl_topk`); {} unscored."""
        if not self.name:
            return {}
        return {f"train/{self.name}": float(losses.masked_mean(self.per_token_BL, mask_BL))}
