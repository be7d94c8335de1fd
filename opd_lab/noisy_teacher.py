"""A noisy teacher: the teacher's next-token distribution mixed with uniform noise.

    p_noisy(v) = (1 - q) * p_teacher(v) + q / V            (per position, V = vocabulary)

This is the "noisy expert" of Sriraman, Liu, Hsu & Block (2026, arXiv 2606.30923): the
learner sees only a noisy version of the expert's policy but is judged against the
clean expert. With q = 0.03 the lab's addition teacher keeps its greedy answers (the
mixture never changes which token is most likely) but its samples at temperature 1
slip on about one token in 33, so few of its 31-token answers are right.

`NoisyTeacherModel` wraps a causal LM so that its logits *are* the mixture's
log-probabilities: everything that reads the teacher (teacher scoring for OPD, the
teacher's samples for SFT, its greedy outputs) sees the same noisy teacher through
the one inference path (`opd_lab.generation`). A run sets it with
`RunConfig.teacher_noise`. The mixture is taken at temperature 1; a run sampled at
another temperature tempers the mixture's log-probabilities.

Example:
    >>> import torch
    >>> logits = torch.tensor([[[4.0, 0.0, 0.0, 0.0]]])
    >>> noisy = noisy_logprobs(logits, 0.2)
    >>> round(float(noisy.exp().sum()), 6), round(float(noisy.exp()[0, 0, 1]), 4)
    (1.0, 0.0639)
"""

from __future__ import annotations

import math

import torch


def noisy_logprobs(logits_BLV: torch.Tensor, noise: float) -> torch.Tensor:
    """`log((1 - noise) * softmax(logits) + noise / V)`, computed in log space.

    `logaddexp(log(1 - q) + log p, log(q / V))` never forms `p` itself, so it stays exact
    where `p` underflows: the result is at least `log(q / V)`.

    Args:
        logits_BLV: (..., V) logits of any float dtype.
        noise: q in [0, 1); 0 returns the plain log-softmax.
    Returns:
        (..., V) float32 log-probabilities of the mixture (they sum to 1 in probability).
    """
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    logps_BLV = torch.log_softmax(logits_BLV.float(), dim=-1)
    if noise == 0.0:
        return logps_BLV
    vocabulary = logps_BLV.shape[-1]
    return torch.logaddexp(logps_BLV + math.log1p(-noise),
                           torch.full_like(logps_BLV, math.log(noise / vocabulary)))


class NoisyTeacherModel(torch.nn.Module):
    """A causal LM whose output logits are `noisy_logprobs(its logits, noise)`.

    Calls, caches and parameters are the wrapped model's; only `output.logits` changes.
    """

    def __init__(self, model: torch.nn.Module, noise: float):
        super().__init__()
        if not 0.0 < noise < 1.0:
            raise ValueError(f"noise must be in (0, 1), got {noise}")
        self.model, self.noise = model, noise
        self.config = model.config

    def get_base_model(self) -> torch.nn.Module:
        """The wrapped model (generation inspects its forward's arguments)."""
        return self.model

    def forward(self, *args, **kwargs):
        output = self.model(*args, **kwargs)
        output.logits = noisy_logprobs(output.logits, self.noise)
        return output


def noise_statistics(student_logits_BLV: torch.Tensor, clean_teacher_logits_BLV: torch.Tensor,
                     mask_BL: torch.Tensor, floor: float = 1e-3) -> dict[str, float]:
    """How much of the noise a student learned, along its own completions.

    Returns the means over masked positions of the student's entropy (nats) and of its
    *noise mass*: the probability it gives to tokens the clean teacher gives less than
    `floor` (tokens only the noise could have taught it).

    Example:
        >>> student = torch.log(torch.tensor([[[0.9, 0.1, 0.0 + 1e-9]]]))
        >>> teacher = torch.log(torch.tensor([[[0.9999, 0.00005, 0.00005]]]))
        >>> stats = noise_statistics(student, teacher, torch.ones(1, 1))
        >>> round(stats["noise_mass"], 3), round(stats["entropy"], 3)
        (0.1, 0.325)
    """
    student_BLV = torch.log_softmax(student_logits_BLV.float(), dim=-1)
    teacher_BLV = torch.log_softmax(clean_teacher_logits_BLV.float(), dim=-1)
    probabilities_BLV = student_BLV.exp()
    entropy_BL = -(probabilities_BLV * student_BLV.clamp(min=-1e4)).sum(-1)
    noise_BL = (probabilities_BLV * (teacher_BLV < math.log(floor))).sum(-1)
    weights_BL = mask_BL.float()
    count = weights_BL.sum().clamp(min=1)
    return {"entropy": float((entropy_BL * weights_BL).sum() / count),
            "noise_mass": float((noise_BL * weights_BL).sum() / count)}
