"""The on-policy objectives and the one logged KL, on random logits (no model), and the
Trainer's size: it stays one step (issue 22: `Trainer` <= 280 lines, `step()` <= 50)."""

import inspect

import pytest
import torch

from opd_lab import losses
from opd_lab.config import RunConfig
from opd_lab.distributed import World
from opd_lab.objectives import (OnPolicyBatch, TokenKL, full_divergence, objective_for, policy_gradient,
                                topk_renormalized, topk_tail)
from opd_lab.teacher_scoring import TeacherScores
from opd_lab.trainer import Trainer

B, L, V, K = 3, 5, 11, 4


def _batch(seed: int = 0, same_teacher: bool = False, top_k_only: bool = False) -> OnPolicyBatch:
    generator = torch.Generator().manual_seed(seed)
    student_BLV = torch.randn(B, L, V, generator=generator, requires_grad=True)
    teacher_BLV = student_BLV.detach().clone() if same_teacher else torch.randn(B, L, V, generator=generator)
    targets_BL = torch.randint(0, V, (B, L), generator=generator)
    mask_BL = torch.ones(B, L)
    mask_BL[0, 3:] = 0  # a shorter completion: padding must not count
    sampling_logps_BL = losses.token_logprobs(student_BLV.detach(), targets_BL) * mask_BL  # on-policy
    teacher_logps_BLV = torch.log_softmax(teacher_BLV, dim=-1)
    top = teacher_logps_BLV.topk(K, dim=-1)
    scores = TeacherScores(losses.gather_tokens(teacher_logps_BLV, targets_BL) * mask_BL,
                           top_ids_BLK=top.indices, top_logprobs_BLK=top.values,
                           logits_BLV=None if top_k_only else teacher_BLV)
    return OnPolicyBatch(student_BLV, targets_BL, sampling_logps_BL, mask_BL, torch.tensor([1.0, 0.0, 1.0]), scores)


@pytest.mark.parametrize("settings, top_k_only, expected", [
    (dict(method="opd", estimator="sampled"), False, policy_gradient),
    (dict(method="opd", estimator="clipped"), False, policy_gradient),
    (dict(method="rl", samples_per_prompt=2), False, policy_gradient),
    (dict(method="opd", estimator="full"), False, full_divergence),
    (dict(method="opd", estimator="full"), True, topk_tail),
    (dict(method="opd", estimator="topk"), False, topk_renormalized),
])
def test_each_run_gets_its_objective(settings, top_k_only, expected):
    assert objective_for(RunConfig(**settings), _batch(top_k_only=top_k_only).scores) is expected


def test_the_logged_kl_is_the_exact_reverse_kl_and_the_full_objectives_loss():
    batch = _batch()
    kl = TokenKL.of(batch.student_logits_BLV, batch.scores, temperature=1.0)
    exact_BL = losses.per_token_reverse_kl(batch.student_logits_BLV.detach(), batch.scores.logits_BLV)
    assert kl.name == "reverse_kl" and not kl.per_token_BL.requires_grad
    torch.testing.assert_close(kl.per_token_BL, exact_BL, atol=1e-5, rtol=1e-5)
    expected = float(losses.masked_mean(exact_BL, batch.mask_BL))
    assert kl.metrics(batch.mask_BL) == {"train/reverse_kl": pytest.approx(expected, abs=1e-5)}
    objective = full_divergence(batch, RunConfig(method="opd", estimator="full"))
    assert objective.loss.item() == pytest.approx(expected, abs=1e-5)  # the loss is the metric it logs
    assert objective.metrics == {"logprob_diff": pytest.approx(0.0, abs=1e-5)}  # its KL is TokenKL's, not its own


def test_a_teacher_known_by_its_top_k_gives_the_bound_never_called_reverse_kl():
    batch = _batch(top_k_only=True)
    kl = TokenKL.of(batch.student_logits_BLV, batch.scores, temperature=1.0)
    assert kl.name == "reverse_kl_topk"
    exact_BL = losses.per_token_reverse_kl(batch.student_logits_BLV.detach(), _batch().scores.logits_BLV)
    assert bool((kl.per_token_BL <= exact_BL + 1e-5).all())  # a lower bound
    objective = topk_tail(batch, RunConfig(method="opd", estimator="full"))
    assert objective.loss.item() == pytest.approx(kl.metrics(batch.mask_BL)["train/reverse_kl_topk"], abs=1e-6)
    assert "reverse_kl_topk" not in objective.metrics  # logged once, by TokenKL


def test_an_unscored_part_logs_no_kl():
    kl = TokenKL.of(torch.randn(B, L, V), None, temperature=1.0)
    assert kl.name == "" and kl.metrics(torch.ones(B, L)) == {}


def test_the_objectives_vanish_when_the_student_is_the_teacher():
    config = dict(method="opd", estimator="full")
    batch = _batch(same_teacher=True)
    assert full_divergence(batch, RunConfig(**config)).loss.item() == pytest.approx(0.0, abs=1e-6)
    assert topk_renormalized(batch, RunConfig(method="opd", estimator="topk")).loss.item() == pytest.approx(0.0, abs=1e-6)
    sampled = policy_gradient(batch, RunConfig(method="opd", estimator="sampled"))
    # On-policy the importance ratio is 1, so the loss is minus the mean advantage: 0 here.
    assert sampled.loss.item() == pytest.approx(0.0, abs=1e-5)
    assert sampled.metrics["logprob_diff"] == pytest.approx(0.0, abs=1e-5)


def test_the_sampled_objective_is_minus_the_mean_advantage_on_policy():
    batch = _batch()
    objective = policy_gradient(batch, RunConfig(method="opd", estimator="sampled"))
    advantage_BL = (batch.scores.logprobs_BL - batch.sampling_logps_BL) * batch.mask_BL
    assert objective.loss.item() == pytest.approx(-float(losses.masked_mean(advantage_BL, batch.mask_BL)), abs=1e-5)
    objective.loss.backward()
    assert batch.student_logits_BLV.grad is not None and batch.student_logits_BLV.grad.abs().sum() > 0
    assert {"ratio_mean", "advantage_mean", "logprob_diff"} <= set(objective.metrics)
    assert "loss" not in objective.metrics  # the step logs the batch's loss once


def test_one_process_averages_over_its_tokens_and_keeps_its_counts():
    loss, value = World().token_mean(torch.tensor(6.0), torch.tensor(3.0))
    assert loss.item() == value.item() == 2.0
    assert World().token_mean(torch.tensor(0.0), torch.tensor(0.0))[1].item() == 0.0  # no tokens: no division by 0
    assert World().sum_since({"samples": 4.0}, {"samples": 9.0}) == {"samples": 9.0}


def test_the_trainer_stays_one_step():
    """Issue 22's target: the class holds a run's state and one step, the rest lives in
    the modules it calls (objectives, teacher_routing, teacher_dataset, models, distributed)."""
    class_lines = len(inspect.getsource(Trainer).splitlines())
    step_lines = len(inspect.getsource(Trainer.step).splitlines())
    assert class_lines <= 280, f"Trainer is {class_lines} lines"
    assert step_lines <= 50, f"Trainer.step is {step_lines} lines"
