"""Every training loss once, as a pure function: tensors and a mask in, `(loss, metrics)` out.

Notation: `B` batch rows, `T` completion positions, `V` vocabulary. `p_s` is the student's
next-token distribution, `p_t` the teacher's. Masks are `(B, T)`, bool or float, 1 on the
completion tokens that count; every loss is a mean over masked tokens,
`sum(x * mask) / max(sum(mask), 1)`, so padding and prompt tokens never matter.

The divergences (per position, over the whole vocabulary):

- **reverse KL** `KL(p_s || p_t) = sum_v p_s(v) (log p_s(v) - log p_t(v))`, the on-policy
  distillation objective. The expectation is under the *student*, so a token the student
  gives mass but the teacher does not is punished hard (`log p_t -> -inf`), while a teacher
  mode the student ignores costs nothing. The student therefore collapses onto one of the
  teacher's modes instead of smearing itself over all of them: **mode-seeking**.
- **forward KL** `KL(p_t || p_s)`, classic distillation / SFT: expectation under the
  teacher, so the student is punished for missing any teacher mode: **mode-covering**.
- **generalized JSD** with `m = beta p_t + (1 - beta) p_s`:
  `beta KL(p_t || m) + (1 - beta) KL(p_s || m)`, bounded and symmetric-ish; as beta -> 0
  or 1 it vanishes (both terms shrink to zero), so beta must lie strictly in (0, 1).

Two estimators of the reverse KL gradient (`RunConfig.estimator`):

- `full`: `divergence_loss` computes the exact sum over `V` at every position and
  backpropagates through the student's logits (teacher detached).
- `sampled`: the student already sampled `x ~ p_s`, so the single-sample estimate
  `log p_s(x) - log p_t(x)` is unbiased for the reverse KL: its expectation over x is
  exactly the sum above. OPD turns it into a per-token advantage
  `A = log p_t(x) - log p_s(x)` (`opd_sampled_advantages`, no discounting) and feeds it
  to the same `policy_gradient_loss` RL uses. In expectation that surrogate's gradient,
  `-E_x[A(x) grad log p_s(x)]`, equals `grad KL(p_s || p_t)` (the remaining term,
  `E_x[grad log p_s(x)] = grad sum_x p_s(x) = 0`). tests/test_losses.py checks both facts
  by enumerating a small vocabulary. It needs only the sampled token's teacher log-prob.

Example:
    >>> import torch
    >>> logits = torch.randn(2, 3, 5)
    >>> kl_BT = per_token_reverse_kl(logits, logits)
    >>> float(kl_BT.abs().max()) < 1e-6
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from opd_lab.config import DIVERGENCES


# --- helpers -------------------------------------------------------------------------

def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (log-softmax over a large vocabulary needs it)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def _check_logits_pair(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor) -> None:
    if student_logits_BTV.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(student_logits_BTV.shape)}")
    _check_same_shape("student_logits_BTV", student_logits_BTV, "teacher_logits_BTV", teacher_logits_BTV)


def masked_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """`sum(values * mask) / max(sum(mask), 1)`; masked-out values (even inf/nan) are ignored.

    Args:
        values_BT: (B, T) per-token values.
        mask_BT: (B, T) bool or float mask.
    Returns:
        A scalar tensor (0 when the mask is empty).
    """
    _check_same_shape("values_BT", values_BT, "mask_BT", mask_BT)
    weights_BT = mask_BT.to(values_BT.dtype)
    kept_BT = torch.where(mask_BT != 0, values_BT, torch.zeros_like(values_BT))
    return (kept_BT * weights_BT).sum() / weights_BT.sum().clamp(min=1)


def kl_from_logprobs(logp_BTV: torch.Tensor, logq_BTV: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position from log-probabilities; tiny negative round-off clamped to 0.

    Tokens with p = 0 (log p = -inf, e.g. masked logits) contribute 0, the usual
    0 log 0 = 0 convention, instead of NaN; q = 0 where p > 0 gives +inf, as it should.
    """
    impossible_BTV = torch.isneginf(logp_BTV)
    difference_BTV = torch.where(impossible_BTV, torch.zeros_like(logp_BTV), logp_BTV - logq_BTV)
    return (logp_BTV.exp() * difference_BTV).sum(dim=-1).clamp(min=0.0)


# --- per-token quantities ------------------------------------------------------------

def tempered_log_softmax(logits_BTV: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`log_softmax(logits / temperature)` over the vocabulary, in float32 or wider.

    At temperature 1 the division is skipped: it would copy the full-vocabulary logits
    to get the same numbers back.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits_BTV = _full_precision(logits_BTV)
    return F.log_softmax(logits_BTV if temperature == 1.0 else logits_BTV / temperature, dim=-1)


def gather_tokens(logps_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """`logps_BTV[b, t, tokens_BT[b, t]]`: the log-prob of each given token, (B, T)."""
    return logps_BTV.gather(-1, tokens_BT.long().unsqueeze(-1)).squeeze(-1)


def token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each given token under `softmax(logits / temperature)`.

    Args:
        logits_BTV: (B, T, V) logits; position t scores `tokens_BT[:, t]`.
        tokens_BT: (B, T) integer token ids.
        temperature: softmax temperature (> 0), the one the tokens were sampled at.
    Returns:
        logps_BT: (B, T), differentiable w.r.t. the logits.
    """
    if logits_BTV.dim() != 3 or logits_BTV.shape[:2] != tokens_BT.shape:
        raise ValueError(f"logits {tuple(logits_BTV.shape)} and tokens {tuple(tokens_BT.shape)} "
                         "must be (B, T, V) and (B, T)")
    return gather_tokens(tempered_log_softmax(logits_BTV, temperature), tokens_BT)


# Positions per chunk of the chunked helpers below: about 2M logits (8 MB in float32).
CHUNK_LOGITS = 1 << 21


def _chunk_rows(vocabulary: int) -> int:
    return max(1, CHUNK_LOGITS // max(vocabulary, 1))


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """`log_softmax(z / T)[token]` per row of `(N, V)` logits, a chunk of rows at a time.

    Forward keeps only the per-row log-normalizer `(N,)`; backward recomputes each chunk's
    softmax from the logits: `d/dz = (onehot(token) - softmax(z / T)) / T`. So no
    `(N, V)` float32 tensor lives between forward and backward besides the logits and
    their gradient.
    """

    @staticmethod
    def forward(ctx, logits_NV, tokens_N, temperature):
        rows = _chunk_rows(logits_NV.shape[-1])
        logprobs_N = torch.empty(logits_NV.shape[0], dtype=torch.float32, device=logits_NV.device)
        normalizer_N = torch.empty_like(logprobs_N)
        for start in range(0, logits_NV.shape[0], rows):
            block_RV = _full_precision(logits_NV[start : start + rows])
            block_RV = block_RV if temperature == 1.0 else block_RV / temperature
            normalizer_N[start : start + rows] = torch.logsumexp(block_RV, dim=-1)
            picked_R = block_RV.gather(-1, tokens_N[start : start + rows, None]).squeeze(-1)
            logprobs_N[start : start + rows] = picked_R - normalizer_N[start : start + rows]
        ctx.save_for_backward(logits_NV, tokens_N, normalizer_N)
        ctx.temperature = temperature
        return logprobs_N

    @staticmethod
    def backward(ctx, grad_N):
        logits_NV, tokens_N, normalizer_N = ctx.saved_tensors
        temperature = ctx.temperature
        rows = _chunk_rows(logits_NV.shape[-1])
        grad_logits_NV = torch.empty_like(logits_NV)
        for start in range(0, logits_NV.shape[0], rows):
            block_RV = _full_precision(logits_NV[start : start + rows])
            block_RV = block_RV if temperature == 1.0 else block_RV / temperature
            grad_R1 = grad_N[start : start + rows, None].float()
            softmax_RV = (block_RV - normalizer_N[start : start + rows, None]).exp_()
            block_grad_RV = softmax_RV.mul_(-grad_R1).scatter_add_(-1, tokens_N[start : start + rows, None], grad_R1)
            if temperature != 1.0:
                block_grad_RV /= temperature
            grad_logits_NV[start : start + rows] = block_grad_RV
        return grad_logits_NV, None, None


def chunked_token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor,
                           temperature: float = 1.0) -> torch.Tensor:
    """`token_logprobs` without a full-vocabulary log-softmax: the same numbers (to float
    round-off) and the same gradient, computed a chunk of positions at a time.

    `token_logprobs` keeps a float32 `(B, T, V)` log-softmax alive for its backward (and
    with bf16 logits makes a float32 copy first); the sampled estimator, RL and SFT need
    only the `(B, T)` picked entries.

    Args:
        logits_BTV: (B, T, V) logits, any float dtype; position t scores `tokens_BT[:, t]`.
        tokens_BT: (B, T) integer token ids.
        temperature: softmax temperature (> 0).
    Returns:
        logps_BT: (B, T) float32, differentiable w.r.t. the logits.
    """
    if logits_BTV.dim() != 3 or logits_BTV.shape[:2] != tokens_BT.shape:
        raise ValueError(f"logits {tuple(logits_BTV.shape)} and tokens {tuple(tokens_BT.shape)} "
                         "must be (B, T, V) and (B, T)")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    batch, length, vocabulary = logits_BTV.shape
    logps_N = _ChunkedTokenLogprobs.apply(logits_BTV.reshape(batch * length, vocabulary),
                                          tokens_BT.reshape(-1).long(), float(temperature))
    return logps_N.view(batch, length)


@torch.no_grad()
def chunked_reverse_kl(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """`per_token_reverse_kl` a chunk of positions at a time, without gradients: for the
    logged KL, whose full-size temporaries (two log-softmaxes, exp, products) would
    otherwise all exist at once. Returns (B, T)."""
    _check_logits_pair(student_logits_BTV, teacher_logits_BTV)
    batch, length, vocabulary = student_logits_BTV.shape
    student_NV = student_logits_BTV.reshape(batch * length, vocabulary)
    teacher_NV = teacher_logits_BTV.reshape(batch * length, vocabulary)
    rows = _chunk_rows(vocabulary)
    if batch * length == 0:
        return student_logits_BTV.new_zeros((batch, length), dtype=torch.float32)
    kl_N = torch.cat([per_token_reverse_kl(student_NV[start : start + rows, None],
                                           teacher_NV[start : start + rows, None], temperature).squeeze(1)
                      for start in range(0, batch * length, rows)])
    return kl_N.view(batch, length)


def per_token_reverse_kl(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """Exact `KL(p_s || p_t)` at every position (no reduction, never negative).

    Args:
        student_logits_BTV, teacher_logits_BTV: (B, T, V) logits of the same tokens.
        temperature: both distributions are `softmax(logits / temperature)`; the
            logged `train/reverse_kl` and the per-token records use the rollouts'
            sampling temperature, so they describe the distributions that sampled.
    Returns:
        kl_BT: (B, T); differentiable through both arguments (detach what you don't train).
    """
    _check_logits_pair(student_logits_BTV, teacher_logits_BTV)
    return kl_from_logprobs(tempered_log_softmax(student_logits_BTV, temperature),
                            tempered_log_softmax(teacher_logits_BTV, temperature))


def per_token_forward_kl(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor) -> torch.Tensor:
    """Exact `KL(p_t || p_s)` at every position; same shapes as `per_token_reverse_kl`."""
    _check_logits_pair(student_logits_BTV, teacher_logits_BTV)
    student_BTV = F.log_softmax(_full_precision(student_logits_BTV), dim=-1)
    teacher_BTV = F.log_softmax(_full_precision(teacher_logits_BTV), dim=-1)
    return kl_from_logprobs(teacher_BTV, student_BTV)


def per_token_generalized_jsd(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor,
                              beta: float) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence at every position.

    `m = beta p_t + (1 - beta) p_s`, `JSD = beta KL(p_t || m) + (1 - beta) KL(p_s || m)`;
    beta = 0.5 is the ordinary JSD (at most log 2).

    Args:
        student_logits_BTV, teacher_logits_BTV: (B, T, V) logits.
        beta: mixture weight of the teacher, strictly between 0 and 1.
    Returns:
        jsd_BT: (B, T), non-negative.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be strictly between 0 and 1 (the JSD vanishes at the ends), got {beta}")
    _check_logits_pair(student_logits_BTV, teacher_logits_BTV)
    student_BTV = F.log_softmax(_full_precision(student_logits_BTV), dim=-1)
    teacher_BTV = F.log_softmax(_full_precision(teacher_logits_BTV), dim=-1)
    # log m = log(beta p_t + (1 - beta) p_s), computed in log space.
    mixture_BTV = torch.logaddexp(teacher_BTV + math.log(beta), student_BTV + math.log(1.0 - beta))
    return (beta * kl_from_logprobs(teacher_BTV, mixture_BTV)
            + (1.0 - beta) * kl_from_logprobs(student_BTV, mixture_BTV))


# --- losses ----------------------------------------------------------------------------

def divergence_loss(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, mask_BT: torch.Tensor,
                    divergence: str = "reverse_kl", beta: float = 0.5) -> tuple[torch.Tensor, dict]:
    """The `full` OPD estimator: the exact divergence, averaged over masked tokens.

    Gradients flow into the student only (the teacher's logits are detached here).

    Args:
        student_logits_BTV, teacher_logits_BTV: (B, T, V) logits for the completion tokens.
        mask_BT: (B, T) completion mask.
        divergence: "reverse_kl" (OPD), "forward_kl" or "jsd".
        beta: JSD mixture weight of the teacher (only for "jsd").
    Returns:
        (loss, metrics) with metrics `loss` and `reverse_kl` (mean per-token reverse KL).
    """
    teacher_logits_BTV = teacher_logits_BTV.detach()
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    with torch.set_grad_enabled(torch.is_grad_enabled() and divergence == "reverse_kl"):
        reverse_kl_BT = per_token_reverse_kl(student_logits_BTV, teacher_logits_BTV)  # graph only when it is the loss
    _check_same_shape("mask_BT", mask_BT, "the logits' (B, T)", reverse_kl_BT)
    if divergence == "reverse_kl":
        per_token_BT = reverse_kl_BT
    elif divergence == "forward_kl":
        per_token_BT = per_token_forward_kl(student_logits_BTV, teacher_logits_BTV)
    elif divergence == "jsd":
        per_token_BT = per_token_generalized_jsd(student_logits_BTV, teacher_logits_BTV, beta)
    else:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    loss = masked_mean(per_token_BT, mask_BT)
    return loss, {"loss": loss.item(), "reverse_kl": masked_mean(reverse_kl_BT.detach(), mask_BT).item()}


def opd_sampled_advantages(teacher_logps_BT: torch.Tensor, student_sampling_logps_BT: torch.Tensor,
                           mask_BT: torch.Tensor) -> torch.Tensor:
    """The `sampled` OPD signal: `log p_t(x_t) - log p_s(x_t)` per sampled token.

    This is the negative single-sample reverse KL at each position, used as a per-token
    advantage with discount 0 (each token answers only for itself).

    Args:
        teacher_logps_BT: (B, T) teacher log-probs of the sampled tokens.
        student_sampling_logps_BT: (B, T) student log-probs recorded at sampling time.
        mask_BT: (B, T) completion mask.
    Returns:
        advantages_BT: (B, T), detached, 0 where the mask is 0.
    """
    _check_same_shape("teacher_logps_BT", teacher_logps_BT, "student_sampling_logps_BT", student_sampling_logps_BT)
    _check_same_shape("teacher_logps_BT", teacher_logps_BT, "mask_BT", mask_BT)
    difference_BT = (teacher_logps_BT - student_sampling_logps_BT).detach()
    return torch.where(mask_BT != 0, difference_BT, torch.zeros_like(difference_BT))


def clipped_opd_advantages(teacher_logps_BT: torch.Tensor, student_sampling_logps_BT: torch.Tensor,
                           mask_BT: torch.Tensor, clip: float) -> torch.Tensor:
    """The `clipped` OPD signal: `opd_sampled_advantages` clamped to `[-clip, clip]`.

    The sampled log-ratio is unbounded below: a token the student sampled but a
    near-deterministic teacher gives 1e-8 gets an advantage near -18, and a handful of
    such tokens dominate the batch's gradient (PowerOPD, arXiv 2606.17199, traces the
    sampled estimator's high variance to this). Clipping bounds each token's weight; the
    price is a bias: the gradient is no longer that of the reverse KL wherever the clip
    binds.

    Args:
        teacher_logps_BT, student_sampling_logps_BT, mask_BT: as `opd_sampled_advantages`.
        clip: the bound (> 0).
    Returns:
        advantages_BT: (B, T), detached, in `[-clip, clip]`, 0 off the mask.

    Example:
        >>> clipped_opd_advantages(torch.tensor([[-20.0, -1.0]]), torch.tensor([[-0.1, -2.0]]), torch.ones(1, 2), 5.0)
        tensor([[-5.,  1.]])
    """
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    return opd_sampled_advantages(teacher_logps_BT, student_sampling_logps_BT, mask_BT).clamp(-clip, clip)


def topk_renormalized_reverse_kl(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor,
                                 k: int) -> torch.Tensor:
    """Reverse KL between the two distributions restricted to the student's top-k tokens and renormalized there.

    At each position S = the student's k most likely tokens (chosen without gradient);
    `q_s = softmax(student_logits[S])`, `q_t = softmax(teacher_logits[S])`, and the
    result is `KL(q_s || q_t) = sum_{v in S} q_s(v) (log q_s(v) - log q_t(v))`. It is
    exact, not sampled, over the tokens the student actually puts mass on, and bounded
    by the teacher's log-odds inside S rather than by the log-prob of one unlucky
    sample (tinker-cookbook PR #677 measured it ahead of the sampled estimator). With
    k = V it is the exact reverse KL. It ignores mass the student puts outside S and
    how the teacher splits mass between S and the rest.

    Args:
        student_logits_BTV, teacher_logits_BTV: (B, T, V) logits (divide by the
            temperature first to use another one).
        k: tokens kept per position (1 <= k; clamped to V).
    Returns:
        kl_BT: (B, T), non-negative, differentiable through the student's logits.

    Example:
        >>> logits = torch.randn(1, 2, 6)
        >>> bool(torch.allclose(topk_renormalized_reverse_kl(logits, logits + 1.0, 3), torch.zeros(1, 2), atol=1e-6))
        True
    """
    _check_logits_pair(student_logits_BTV, teacher_logits_BTV)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, student_logits_BTV.shape[-1])
    top_ids_BTK = student_logits_BTV.detach().topk(k, dim=-1).indices
    student_BTK = F.log_softmax(_full_precision(student_logits_BTV).gather(-1, top_ids_BTK), dim=-1)
    teacher_BTK = F.log_softmax(_full_precision(teacher_logits_BTV.detach()).gather(-1, top_ids_BTK), dim=-1)
    return kl_from_logprobs(student_BTK, teacher_BTK)


def exact_loss(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, mask_BT: torch.Tensor,
               estimator: str, divergence: str = "reverse_kl", beta: float = 0.5, top_k: int = 8,
               temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """An exact (not sampled) distillation loss on given prefixes, by `RunConfig.estimator`:
    `full` is `divergence_loss` (`divergence` over the whole vocabulary), `topk` the mean of
    `topk_renormalized_reverse_kl` over the student's `top_k` tokens. Both distributions are
    taken at `temperature`.

    The prefixes may be the student's (OPD) or the teacher's (`RunConfig.off_policy_loss`
    = exact: word-level distillation on teacher-written completions); the loss only sees
    logits of the same positions.

    Args:
        student_logits_BTV, teacher_logits_BTV: (B, T, V) logits of the completion positions.
        mask_BT: (B, T) completion mask.
        estimator: "full" or "topk".
    Returns:
        (loss, metrics) with `loss` (and `reverse_kl` for full, `topk_reverse_kl` for topk).

    Example:
        >>> logits = torch.randn(2, 3, 5)
        >>> exact_loss(logits, logits, torch.ones(2, 3), "full", "forward_kl")[1]["loss"] < 1e-6
        True
    """
    if temperature != 1.0:
        student_logits_BTV, teacher_logits_BTV = student_logits_BTV / temperature, teacher_logits_BTV / temperature
    if estimator == "full":
        return divergence_loss(student_logits_BTV, teacher_logits_BTV, mask_BT, divergence=divergence, beta=beta)
    if estimator == "topk":
        if divergence != "reverse_kl":
            raise ValueError(f"the topk estimator is reverse KL only, got divergence {divergence!r}")
        loss = masked_mean(topk_renormalized_reverse_kl(student_logits_BTV, teacher_logits_BTV, top_k), mask_BT)
        return loss, {"loss": loss.item(), "topk_reverse_kl": loss.item()}
    raise ValueError(f"an exact loss is estimator full or topk, got {estimator!r}")


def group_normalized_advantages(rewards_N: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO-style advantages: each reward standardized within its prompt's group.

    Args:
        rewards_N: (N,) rewards; entries `[k*group_size, (k+1)*group_size)` share a prompt.
        group_size: samples per prompt.
        eps: added to the group's (population) standard deviation.
    Returns:
        advantages_N: (N,) `(r - group mean) / (group std + eps)`; exactly 0 for a group
        whose rewards are all equal (nothing to learn from it).

    Example:
        >>> group_normalized_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
        tensor([ 1.0000, -1.0000,  0.0000,  0.0000])
    """
    if rewards_N.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards_N.shape)}")
    if group_size < 1 or rewards_N.numel() % group_size:
        raise ValueError(f"{rewards_N.numel()} rewards cannot be split into groups of {group_size}")
    rewards_GK = rewards_N.float().view(-1, group_size)
    centered_GK = rewards_GK - rewards_GK.mean(dim=1, keepdim=True)
    advantages_GK = centered_GK / (rewards_GK.std(dim=1, unbiased=False, keepdim=True) + eps)
    all_equal_G1 = (rewards_GK == rewards_GK[:, :1]).all(dim=1, keepdim=True)
    return torch.where(all_equal_G1, torch.zeros_like(advantages_GK), advantages_GK).view(-1)


def per_token_advantages(method: str, mask_BT: torch.Tensor, rewards_N: torch.Tensor,
                         teacher_logps_BT: torch.Tensor | None = None,
                         sampling_logps_BT: torch.Tensor | None = None, group_size: int = 1,
                         reward_coef: float = 0.0, advantage_clip: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The per-token advantage of on-policy samples: the one place OPD and RL differ.

    - OPD: `log p_t(x_t) - log p_s(x_t)` on each sampled token (`opd_sampled_advantages`,
      the negative single-sample reverse KL, discount 0), plus `reward_coef * reward`
      on every token of the sample;
    - RL: the sample's group-normalized reward (`group_normalized_advantages`), the
      same for every token.

    Both feed `policy_gradient_loss`.

    Args:
        method: "opd" or "rl".
        mask_BT: (B, T) completion mask; B samples, `group_size` consecutive ones per prompt.
        rewards_N: (B,) the task's reward of each sample.
        teacher_logps_BT, sampling_logps_BT: (B, T) teacher log-probs of the sampled tokens
            and student log-probs recorded at sampling time (OPD only).
        group_size: samples per prompt (RL only).
        reward_coef: weight of the reward in OPD's advantage.
        advantage_clip: > 0 clamps OPD's log-ratio to `[-clip, clip]` (`clipped_opd_advantages`).
    Returns:
        (advantages_BT, metrics): advantages detached, 0 off the mask; for RL the metric
        `zero_advantage_fraction`, the share of samples in groups whose rewards are all
        equal (they teach RL nothing).

    Example:
        >>> mask = torch.ones(4, 2)
        >>> advantages, metrics = per_token_advantages("rl", mask, torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2)
        >>> advantages[:, 0], metrics["zero_advantage_fraction"]
        (tensor([ 1.0000, -1.0000,  0.0000,  0.0000]), 0.5)
    """
    if method == "opd":
        if teacher_logps_BT is None or sampling_logps_BT is None:
            raise ValueError("OPD's advantage needs teacher_logps_BT and sampling_logps_BT")
        advantages_BT = (clipped_opd_advantages(teacher_logps_BT, sampling_logps_BT, mask_BT, advantage_clip)
                         if advantage_clip > 0 else opd_sampled_advantages(teacher_logps_BT, sampling_logps_BT, mask_BT))
        return advantages_BT + reward_coef * rewards_N[:, None] * mask_BT, {}
    if method == "rl":
        group_advantages_N = group_normalized_advantages(rewards_N, group_size)
        zero_fraction = float((group_advantages_N == 0).float().mean())
        return group_advantages_N[:, None] * mask_BT, {"zero_advantage_fraction": zero_fraction}
    raise ValueError(f"method must be opd or rl for a per-token advantage, got {method!r}")


def policy_gradient_loss(logps_BT: torch.Tensor, sampling_logps_BT: torch.Tensor, advantages_BT: torch.Tensor,
                         mask_BT: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Importance-sampled policy gradient, shared by RL and `sampled` OPD.

    `ratio = exp(logps - sampling_logps)` corrects for the (small) gap between the policy
    that sampled and the one being trained; its value is 1 on-policy, but its gradient is
    `grad log p`, so `-mean(ratio * A)` has the REINFORCE gradient `-mean(A grad log p)`.

    Args:
        logps_BT: (B, T) current student log-probs of the sampled tokens (with grad).
        sampling_logps_BT: (B, T) log-probs recorded at sampling time (treated as constants).
        advantages_BT: (B, T) per-token advantages (treated as constants).
        mask_BT: (B, T) completion mask.
    Returns:
        (loss, metrics) with `loss`, `ratio_mean`, `advantage_mean` and `logprob_diff`
        (mean |logps - sampling_logps|, the sampler/trainer mismatch).
    """
    _check_same_shape("logps_BT", logps_BT, "sampling_logps_BT", sampling_logps_BT)
    _check_same_shape("logps_BT", logps_BT, "advantages_BT", advantages_BT)
    _check_same_shape("logps_BT", logps_BT, "mask_BT", mask_BT)
    log_ratio_BT = logps_BT - sampling_logps_BT.detach()
    ratio_BT = torch.where(mask_BT != 0, log_ratio_BT, torch.zeros_like(log_ratio_BT)).exp()
    loss = -masked_mean(ratio_BT * advantages_BT.detach(), mask_BT)
    return loss, {"loss": loss.item(),
                  "ratio_mean": masked_mean(ratio_BT.detach(), mask_BT).item(),
                  "advantage_mean": masked_mean(advantages_BT.detach(), mask_BT).item(),
                  "logprob_diff": masked_mean(log_ratio_BT.detach().abs(), mask_BT).item()}


def cross_entropy_loss(logps_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """SFT: the negative log-likelihood of the given (teacher-written) tokens.

    Args:
        logps_BT: (B, T) student log-probs of the target tokens (`token_logprobs`).
        mask_BT: (B, T) completion mask.
    Returns:
        (loss, metrics) with metric `loss`.
    """
    _check_same_shape("logps_BT", logps_BT, "mask_BT", mask_BT)
    loss = -masked_mean(logps_BT, mask_BT)
    return loss, {"loss": loss.item()}


def topk_tail_reverse_kl(student_logps_BTV: torch.Tensor, teacher_top_ids_BTK: torch.Tensor,
                         teacher_top_logps_BTK: torch.Tensor) -> torch.Tensor:
    """Reverse KL from a teacher known only by its top-k: the `full` estimator's fallback
    for a remote teacher (`teacher_scoring.VllmTeacher`).

    Both distributions are folded onto K + 1 buckets: the teacher's k most likely tokens,
    and one tail bucket for every other token (teacher mass `1 - sum(top-k)`, student
    mass `1 - sum of its probabilities of those k tokens`); the KL is taken between the
    folded distributions.

    Bias: folding never increases a KL (the log-sum inequality), so this is a lower
    bound on the exact reverse KL, short by exactly
    `p_s(tail) * KL(p_s(. | tail) || p_t(. | tail))`: how differently the two models
    spread their mass *inside* the tail. It is exact when k covers the vocabulary and
    small when the student puts little mass outside the teacher's top-k; its gradient
    never pushes the student to reshape mass among tail tokens. tests/test_teacher_scoring.py
    checks the bound and the gap against the exact KL on the lab.

    Args:
        student_logps_BTV: (B, T, V) student log-probs (differentiable).
        teacher_top_ids_BTK: (B, T, K) the teacher's top-k token ids.
        teacher_top_logps_BTK: (B, T, K) their teacher log-probs (-inf for padding).
    Returns:
        kl_BT: (B, T), non-negative.

    Example:
        >>> logps = torch.log_softmax(torch.randn(1, 2, 6), dim=-1)
        >>> top = logps.topk(6, dim=-1)
        >>> float((topk_tail_reverse_kl(logps, top.indices, top.values)).abs().max()) < 1e-5
        True
    """
    _check_same_shape("teacher_top_ids_BTK", teacher_top_ids_BTK, "teacher_top_logps_BTK", teacher_top_logps_BTK)
    student_logps_BTV = _full_precision(student_logps_BTV)
    student_top_BTK = student_logps_BTV.gather(-1, teacher_top_ids_BTK.long())
    padded_BTK = torch.isneginf(teacher_top_logps_BTK)
    student_top_BTK = torch.where(padded_BTK, torch.full_like(student_top_BTK, float("-inf")), student_top_BTK)
    tiny = torch.finfo(torch.float32).tiny
    student_tail_BT1 = torch.log((1 - student_top_BTK.exp().sum(-1, keepdim=True)).clamp(min=tiny))
    teacher_tail_BT1 = torch.log((1 - teacher_top_logps_BTK.float().exp().sum(-1, keepdim=True)).clamp(min=tiny))
    return kl_from_logprobs(torch.cat([student_top_BTK, student_tail_BT1], dim=-1),
                            torch.cat([teacher_top_logps_BTK.float(), teacher_tail_BT1], dim=-1))


def topk_tail_loss(student_logps_BTV: torch.Tensor, teacher_top_ids_BTK: torch.Tensor,
                   teacher_top_logps_BTK: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The `full` OPD estimator with a teacher known by its top-k (a teacher server): the
    mean over masked tokens of `topk_tail_reverse_kl`, a lower bound of the exact reverse KL.

    Returns:
        (loss, metrics) with metrics `loss` and `reverse_kl_topk` (the same number: the
        bound, never called `reverse_kl`, which is the exact KL everywhere else).

    Example:
        >>> logps = torch.log_softmax(torch.randn(1, 3, 6), dim=-1)
        >>> top = logps.topk(2, dim=-1)
        >>> topk_tail_loss(logps, top.indices, top.values, torch.ones(1, 3))[1]["reverse_kl_topk"] < 1e-6
        True
    """
    kl_BT = topk_tail_reverse_kl(student_logps_BTV, teacher_top_ids_BTK, teacher_top_logps_BTK)
    _check_same_shape("mask_BT", mask_BT, "the log-probs' (B, T)", kl_BT)
    loss = masked_mean(kl_BT, mask_BT)
    return loss, {"loss": loss.item(), "reverse_kl_topk": loss.item()}
