"""FLOPs accounting, so OPD, SFT and RL can be compared on one compute axis.

The paper compares methods by GPU hours; on a laptop wall-clock time depends on the
machine, so runs also log an estimate of the floating-point operations they spent,
split by what they were spent on (`perf/flops_*` in metrics.jsonl, the "flops" x-axis of
`opd_lab.plots`).

Convention (the usual transformer rule of thumb, Kaplan et al. 2020):

- a forward pass costs `2 N` FLOPs per token (one multiply and one add per weight);
- a training step costs `6 N` per token: the forward (2N), plus a backward that computes
  gradients w.r.t. the activations (2N) and w.r.t. the weights (2N).

Approximations, chosen to be simple and the same for every method:

- `N` counts *all* parameters, embeddings included (Kaplan leaves them out; for the tiny
  lab models they are a large share, so absolute numbers overstate, but every method is
  overstated by the same factor), and attention's context-length term is ignored;
- sampling is charged `2 N` per token of the sequence (prompt + completion), as if there
  were no KV cache reuse across steps; teacher scoring likewise;
- LoRA training is still charged `6 N` with `N` the full model: the backward pass runs
  through the frozen base to reach the adapters, so the activation-gradient half is
  paid in full; only the frozen weights' gradients (2N) are skipped, so the true cost is
  nearer `4 N` and LoRA runs are overcharged by up to 1.5x on the training share.

Example:
    >>> counter = FlopsCounter()
    >>> counter.add_sampling(n_params=1_000, tokens=10)
    >>> counter.add_training(n_params=1_000, tokens=10)
    >>> counter.as_metrics()["perf/flops"]
    80000.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of `model` (tied weights counted once).

    Args:
        model: any torch module.
        trainable_only: count only parameters with `requires_grad` (e.g. LoRA adapters).
    Returns:
        The parameter count.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_counts(n_params: int, n_tokens: int) -> None:
    if n_params < 0 or n_tokens < 0:
        raise ValueError(f"parameter and token counts must be non-negative, got {n_params} and {n_tokens}")


def forward_flops(n_params: int, n_tokens: int) -> int:
    """FLOPs of a forward pass over `n_tokens` tokens: `2 * n_params * n_tokens`."""
    _check_counts(n_params, n_tokens)
    return 2 * n_params * n_tokens


def training_flops(n_params: int, n_tokens: int) -> int:
    """FLOPs of forward + backward over `n_tokens` tokens: `6 * n_params * n_tokens`."""
    _check_counts(n_params, n_tokens)
    return 6 * n_params * n_tokens


@dataclass
class FlopsCounter:
    """Cumulative FLOPs of a run, by purpose. Mutable: the trainer adds to it every step.

    Fields are floats so they survive a JSON round trip exactly (metrics.jsonl, checkpoints).
    """

    sampling: float = 0.0
    """Rollouts: the student sampling (OPD, RL) or the teacher writing SFT data."""
    teacher: float = 0.0
    """Teacher forward passes that score student rollouts (OPD only)."""
    training: float = 0.0
    """Student forward + backward passes of the optimizer steps."""

    @property
    def total(self) -> float:
        return self.sampling + self.teacher + self.training

    def add_sampling(self, n_params: int, tokens: int) -> None:
        """Charge generating `tokens` tokens with an `n_params` model (2N per token)."""
        self.sampling += float(forward_flops(n_params, tokens))

    def add_teacher(self, n_params: int, tokens: int) -> None:
        """Charge the teacher scoring `tokens` tokens (2N per token)."""
        self.teacher += float(forward_flops(n_params, tokens))

    def add_training(self, n_params: int, tokens: int) -> None:
        """Charge training the student on `tokens` tokens (6N per token)."""
        self.training += float(training_flops(n_params, tokens))

    def as_metrics(self) -> dict[str, float]:
        """The counter as namespaced metrics, `perf/flops` being the total."""
        return {"perf/flops_sampling": self.sampling, "perf/flops_teacher": self.teacher,
                "perf/flops_training": self.training, "perf/flops": self.total}

    @classmethod
    def from_metrics(cls, metrics: dict) -> "FlopsCounter":
        """Rebuild a counter from `as_metrics()` output (e.g. a checkpoint, on resume)."""
        return cls(sampling=float(metrics["perf/flops_sampling"]), teacher=float(metrics["perf/flops_teacher"]),
                   training=float(metrics["perf/flops_training"]))
