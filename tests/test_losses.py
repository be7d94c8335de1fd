"""The losses on random logits, with no model: zeros, hand-computed values, estimator and gradient identities."""

from __future__ import annotations

import math

import pytest
import torch

from opd_lab import losses

PER_TOKEN_DIVERGENCES = {
    "reverse_kl": losses.per_token_reverse_kl,
    "forward_kl": losses.per_token_forward_kl,
    "jsd": lambda s, t: losses.per_token_generalized_jsd(s, t, beta=0.3),
}


def _logits(*shape, seed=0, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def _two_token_logits(p_first: float) -> torch.Tensor:
    """(1, 1, 2) logits whose softmax is [p_first, 1 - p_first]."""
    return torch.tensor([[[math.log(p_first), math.log(1 - p_first)]]], dtype=torch.float64)


# --- divergences ---------------------------------------------------------------------

@pytest.mark.parametrize("name", PER_TOKEN_DIVERGENCES)
def test_divergence_is_zero_for_identical_inputs(name):
    logits = _logits(3, 4, 11)
    assert PER_TOKEN_DIVERGENCES[name](logits, logits.clone()).abs().max() < 1e-6
    # a constant shift of the logits is the same distribution
    assert PER_TOKEN_DIVERGENCES[name](logits, logits + 7.0).abs().max() < 1e-6


@pytest.mark.parametrize("name", PER_TOKEN_DIVERGENCES)
def test_divergence_is_positive_on_random_inputs(name):
    values = PER_TOKEN_DIVERGENCES[name](_logits(4, 5, 13, seed=1), _logits(4, 5, 13, seed=2))
    assert values.shape == (4, 5)
    assert (values > 0).all()


def test_known_values_on_a_two_token_vocabulary():
    student, teacher = _two_token_logits(0.9), _two_token_logits(0.5)
    reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    forward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert losses.per_token_reverse_kl(student, teacher).item() == pytest.approx(reverse, abs=1e-9)
    assert losses.per_token_forward_kl(student, teacher).item() == pytest.approx(forward, abs=1e-9)
    # beta = 0.5: m = [0.7, 0.3]
    jsd = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)) \
        + 0.5 * (0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3))
    assert losses.per_token_generalized_jsd(student, teacher, 0.5).item() == pytest.approx(jsd, abs=1e-9)
    # beta = 0.25: m = 0.25 * teacher + 0.75 * student = [0.8, 0.2]
    jsd = 0.25 * (0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)) \
        + 0.75 * (0.9 * math.log(0.9 / 0.8) + 0.1 * math.log(0.1 / 0.2))
    assert losses.per_token_generalized_jsd(student, teacher, 0.25).item() == pytest.approx(jsd, abs=1e-9)


def test_reverse_kl_is_mode_seeking():
    """A student on one teacher mode pays little reverse KL; one smeared between modes pays more."""
    teacher = torch.tensor([[[0.0, 0.0, -30.0]]])  # two modes, a near-impossible third token
    on_one_mode = torch.tensor([[[5.0, -5.0, -5.0]]])
    smeared = torch.tensor([[[0.0, 0.0, 0.0]]])
    assert losses.per_token_reverse_kl(on_one_mode, teacher) < losses.per_token_reverse_kl(smeared, teacher)
    assert losses.per_token_forward_kl(on_one_mode, teacher) > losses.per_token_forward_kl(smeared, teacher)


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1, 1.5])
def test_jsd_rejects_beta_outside_the_open_interval(beta):
    with pytest.raises(ValueError, match="beta"):
        losses.per_token_generalized_jsd(_logits(1, 2, 3), _logits(1, 2, 3, seed=1), beta)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_divergence_loss_reduces_over_the_mask_and_trains_only_the_student(divergence):
    student = _logits(2, 3, 7, seed=3).requires_grad_()
    teacher = _logits(2, 3, 7, seed=4).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss, metrics = losses.divergence_loss(student, teacher, mask, divergence=divergence, beta=0.4)
    per_token = {"reverse_kl": losses.per_token_reverse_kl, "forward_kl": losses.per_token_forward_kl,
                 "jsd": lambda s, t: losses.per_token_generalized_jsd(s, t, 0.4)}[divergence](student, teacher)
    assert loss.item() == pytest.approx(per_token[mask].mean().item())
    assert metrics["loss"] == pytest.approx(loss.item())
    assert metrics["reverse_kl"] == pytest.approx(losses.per_token_reverse_kl(student, teacher)[mask].mean().item())
    loss.backward()
    assert teacher.grad is None
    assert student.grad[~mask].abs().max() == 0 and student.grad[mask].abs().max() > 0


def test_divergence_loss_rejects_unknown_divergence():
    with pytest.raises(ValueError, match="divergence"):
        losses.divergence_loss(_logits(1, 2, 3), _logits(1, 2, 3), torch.ones(1, 2), divergence="tv")


# --- the sampled estimator -------------------------------------------------------------

def test_sampled_estimator_is_unbiased_for_the_reverse_kl():
    student, teacher = _logits(1, 1, 6, seed=5), _logits(1, 1, 6, seed=6)
    student_logps, teacher_logps = student.log_softmax(-1)[0, 0], teacher.log_softmax(-1)[0, 0]
    exact = losses.per_token_reverse_kl(student, teacher).item()
    # Enumerate: E_{x ~ p_s}[log p_s(x) - log p_t(x)], the negative OPD advantage.
    vocab = torch.arange(6)
    advantages = losses.opd_sampled_advantages(teacher_logps[vocab][None], student_logps[vocab][None],
                                               torch.ones(1, 6))[0]
    assert (student_logps.exp() * -advantages).sum().item() == pytest.approx(exact, abs=1e-12)
    # Monte Carlo
    samples = torch.multinomial(student_logps.exp(), 200_000, replacement=True,
                                generator=torch.Generator().manual_seed(0))
    estimate = (student_logps[samples] - teacher_logps[samples]).mean().item()
    assert estimate == pytest.approx(exact, abs=0.02)


def test_policy_gradient_on_opd_advantages_matches_the_reverse_kl_gradient():
    """sum_x p_s(x) grad policy_gradient_loss(x, A(x)) == grad KL(p_s || p_t), exactly."""
    vocab = 5
    student = _logits(1, 1, vocab, seed=7).requires_grad_()
    teacher = _logits(1, 1, vocab, seed=8)
    losses.per_token_reverse_kl(student, teacher).sum().backward()
    exact_gradient = student.grad.clone()

    student.grad = None
    mask = torch.ones(1, 1)
    expected_loss = 0.0
    for token in range(vocab):
        tokens = torch.tensor([[token]])
        logps = losses.token_logprobs(student, tokens)
        advantages = losses.opd_sampled_advantages(losses.token_logprobs(teacher, tokens), logps.detach(), mask)
        loss, _ = losses.policy_gradient_loss(logps, logps.detach(), advantages, mask)
        expected_loss = expected_loss + logps.exp().detach().squeeze() * loss
    expected_loss.backward()
    torch.testing.assert_close(student.grad, exact_gradient, atol=1e-5, rtol=0)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    logits = _logits(1, 1, 6, seed=9).requires_grad_()
    loss, metrics = losses.cross_entropy_loss(losses.token_logprobs(logits, torch.tensor([[2]])), torch.ones(1, 1))
    loss.backward()
    expected = logits.detach().softmax(-1) - torch.nn.functional.one_hot(torch.tensor(2), 6)
    torch.testing.assert_close(logits.grad, expected, atol=1e-10, rtol=0)
    assert metrics["loss"] == pytest.approx(-logits.detach().log_softmax(-1)[0, 0, 2].item())


def test_token_logprobs_applies_the_temperature():
    logits = _logits(2, 3, 4, seed=10)
    tokens = torch.tensor([[0, 1, 2], [3, 2, 1]])
    expected = (logits / 0.5).log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(losses.token_logprobs(logits, tokens, temperature=0.5), expected)
    with pytest.raises(ValueError, match="temperature"):
        losses.token_logprobs(logits, tokens, temperature=0.0)


# --- policy gradient and advantages -----------------------------------------------------

def test_group_normalized_advantages_known_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3])
    advantages = losses.group_normalized_advantages(rewards, group_size=4)
    # group 1: mean 0.25, population std sqrt(3)/4
    std = math.sqrt(3) / 4
    expected = [0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(advantages, torch.tensor(expected), atol=1e-4, rtol=0)
    assert (advantages[4:] == 0).all()
    assert (losses.group_normalized_advantages(torch.ones(3), group_size=1) == 0).all()


@pytest.mark.parametrize("group_size", [0, 3])
def test_group_normalized_advantages_rejects_bad_group_sizes(group_size):
    with pytest.raises(ValueError):
        losses.group_normalized_advantages(torch.zeros(4), group_size)


def test_policy_gradient_loss_values_and_metrics():
    logps = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    sampling = torch.log(torch.tensor([[0.25, 0.2, 0.1]]))
    advantages = torch.tensor([[1.0, -3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, metrics = losses.policy_gradient_loss(logps, sampling, advantages, mask)
    assert loss.item() == pytest.approx(-(2.0 * 1.0 + 1.0 * -3.0) / 2)
    assert metrics["ratio_mean"] == pytest.approx(1.5)
    assert metrics["advantage_mean"] == pytest.approx(-1.0)
    assert metrics["logprob_diff"] == pytest.approx(math.log(2) / 2)


def test_masked_positions_never_change_a_loss():
    generator = torch.Generator().manual_seed(11)
    logps, sampling, advantages = (torch.randn(2, 4, generator=generator) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    changed = [torch.where(mask, x, torch.full_like(x, float("-inf"))) for x in (logps, sampling, advantages)]
    assert losses.policy_gradient_loss(*changed, mask)[0] == losses.policy_gradient_loss(logps, sampling,
                                                                                         advantages, mask)[0]
    assert losses.cross_entropy_loss(changed[0], mask)[0] == losses.cross_entropy_loss(logps, mask)[0]
    assert (losses.opd_sampled_advantages(changed[0], sampling, mask)[~mask] == 0).all()

    student, teacher = _logits(2, 4, 5, seed=12), _logits(2, 4, 5, seed=13)
    student_changed = student.clone()
    student_changed[~mask] = _logits(4, 5, seed=14) * 10
    assert losses.divergence_loss(student_changed, teacher, mask)[0] == losses.divergence_loss(student, teacher,
                                                                                               mask)[0]


def test_an_empty_mask_gives_zero_not_nan():
    loss, _ = losses.cross_entropy_loss(torch.randn(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0


def test_shape_mismatches_raise():
    with pytest.raises(ValueError, match="shape"):
        losses.per_token_reverse_kl(_logits(2, 3, 5), _logits(2, 3, 6))
    with pytest.raises(ValueError, match="shape"):
        losses.divergence_loss(_logits(2, 3, 5), _logits(2, 3, 5), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        losses.per_token_forward_kl(_logits(3, 5), _logits(3, 5))
    with pytest.raises(ValueError):
        losses.token_logprobs(_logits(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        losses.policy_gradient_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="shape"):
        losses.opd_sampled_advantages(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="1-D"):
        losses.group_normalized_advantages(torch.zeros(2, 2), 2)


def test_zero_probability_tokens_follow_the_0_log_0_convention():
    teacher = torch.tensor([0.5, 0.5, 0.0]).log()[None, None]  # (1, 1, 3)
    student = torch.tensor([1.0, 0.0, 0.0]).log()[None, None].requires_grad_()
    reverse = losses.per_token_reverse_kl(student, teacher)
    assert reverse.item() == pytest.approx(math.log(2))  # the student ignores a mode: log 2, not NaN
    reverse.sum().backward()
    assert torch.isfinite(student.grad).all()
    assert losses.per_token_forward_kl(student.detach(), teacher).item() == math.inf  # it misses teacher mass


def test_per_token_advantages_defines_both_signals():
    generator = torch.Generator().manual_seed(3)
    teacher_BT, sampling_BT = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    mask_BT = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.float32)
    rewards_N = torch.tensor([1.0, 0.0, 1.0, 1.0])
    opd, metrics = losses.per_token_advantages("opd", mask_BT, rewards_N, teacher_BT, sampling_BT, reward_coef=0.5)
    expected = (teacher_BT - sampling_BT + 0.5 * rewards_N[:, None]) * mask_BT
    assert torch.allclose(opd, expected) and metrics == {}
    rl, metrics = losses.per_token_advantages("rl", mask_BT, rewards_N, group_size=2)
    assert torch.allclose(rl, torch.tensor([1.0, -1.0, 0.0, 0.0])[:, None] * mask_BT, atol=1e-5)
    assert metrics == {"zero_advantage_fraction": 0.5}
    with pytest.raises(ValueError, match="teacher_logps_BT"):
        losses.per_token_advantages("opd", mask_BT, rewards_N)
    with pytest.raises(ValueError, match="opd or rl"):
        losses.per_token_advantages("sft", mask_BT, rewards_N)


def test_reverse_kl_at_a_temperature_is_the_kl_of_the_tempered_distributions():
    student, teacher = _logits(2, 3, 7, seed=4), _logits(2, 3, 7, seed=5)
    tempered = losses.per_token_reverse_kl(student, teacher, temperature=0.7)
    assert torch.allclose(tempered, losses.per_token_reverse_kl(student / 0.7, teacher / 0.7))
    assert not torch.allclose(tempered, losses.per_token_reverse_kl(student, teacher))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_token_logprobs_equal_the_full_log_softmax_with_gradients(monkeypatch, temperature, dtype):
    """Chunks of 3 positions (V=11) over B*T=10 positions, the last chunk partial."""
    monkeypatch.setattr(losses, "CHUNK_LOGITS", 33)
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11)).to(dtype)
    tokens = torch.randint(0, 11, (2, 5))
    weights = torch.randn(2, 5)  # a non-uniform upstream gradient
    full_input = logits.clone().requires_grad_()
    chunked_input = logits.clone().requires_grad_()
    full = losses.token_logprobs(full_input, tokens, temperature)
    chunked = losses.chunked_token_logprobs(chunked_input, tokens, temperature)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    (full * weights).sum().backward()
    (chunked * weights).sum().backward()
    assert chunked_input.grad.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(chunked_input.grad, full_input.grad, atol=tolerance, rtol=tolerance)


def test_chunked_reverse_kl_equals_the_full_one(monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_LOGITS", 40)  # 4 positions per chunk of V=10
    student, teacher = torch.randn(3, 7, 10), torch.randn(3, 7, 10)
    torch.testing.assert_close(losses.chunked_reverse_kl(student, teacher, 0.8),
                               losses.per_token_reverse_kl(student, teacher, 0.8))
    assert losses.chunked_reverse_kl(student[:, :0], teacher[:, :0]).shape == (3, 0)


def test_clipped_advantages_equal_the_sampled_ones_inside_the_bound_and_clamp_outside():
    teacher = torch.tensor([[-0.5, -20.0, -3.0, -0.1]])
    student = torch.tensor([[-1.0, -0.2, -0.5, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    sampled = losses.opd_sampled_advantages(teacher, student, mask)
    clipped = losses.clipped_opd_advantages(teacher, student, mask, clip=5.0)
    assert clipped.tolist() == [[0.5, -5.0, -2.5, 0.0]]
    inside = sampled.abs() <= 5
    assert torch.equal(clipped[inside], sampled[inside])
    advantages, _ = losses.per_token_advantages("opd", mask, torch.zeros(1), teacher_logps_BT=teacher,
                                                sampling_logps_BT=student, advantage_clip=5.0)
    assert torch.equal(advantages, clipped)
    with pytest.raises(ValueError, match="clip"):
        losses.clipped_opd_advantages(teacher, student, mask, clip=0.0)


def test_topk_renormalized_reverse_kl_is_exact_at_full_k_and_matches_a_hand_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    torch.testing.assert_close(losses.topk_renormalized_reverse_kl(student, teacher, 7),
                               losses.per_token_reverse_kl(student, teacher), rtol=1e-5, atol=1e-6)
    assert torch.all(losses.topk_renormalized_reverse_kl(student, student, 3).abs() < 1e-6)
    # By hand at one position: the student's top 2 are tokens 0 and 1.
    s = torch.tensor([[[2.0, 1.0, -5.0]]])
    t = torch.tensor([[[0.0, 1.0, 3.0]]])
    q_s = torch.softmax(torch.tensor([2.0, 1.0]), 0)
    q_t = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    expected = float((q_s * (q_s.log() - q_t.log())).sum())
    assert float(losses.topk_renormalized_reverse_kl(s, t, 2)) == pytest.approx(expected, rel=1e-6)


def test_topk_renormalized_reverse_kl_trains_the_student_only():
    student = torch.randn(1, 2, 5, requires_grad=True)
    teacher = torch.randn(1, 2, 5, requires_grad=True)
    losses.topk_renormalized_reverse_kl(student, teacher, 3).sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None
