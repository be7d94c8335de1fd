"""The decomposition diagnostic (issue 21 item 5): its arms, costs from metrics rows, the
split of SFT's lead, gradient noise over resamplings, the teacher-prefix exact loss, the runner."""

import json
import math

import pytest
import torch

from opd_lab import losses, run_folder
from opd_lab.studies import decomposition
from opd_lab.studies.arms import arm_overrides
from opd_lab.config import ConfigError, RunConfig
from opd_lab.studies.decomposition import CELLS, GradientVariance, attribution, gradient_variance, steps_to_gap
from opd_lab.run_folder import load_metrics, load_status
from opd_lab.train import run_training

SMALL = dict(steps=2, batch_size=4, eval_every=2, eval_count=8, sample_every=1, samples_to_log=2,
             checkpoint_every=2, max_new_tokens=12)


# --- the option: exact losses on teacher-written prefixes -------------------------------

def test_off_policy_loss_exact_is_validated():
    assert RunConfig(method="sft", off_policy_loss="exact", estimator="full", divergence="forward_kl")
    assert RunConfig(method="opd", on_policy_fraction=0.5, off_policy_loss="exact", estimator="topk")
    for bad, word in [(dict(method="sft", off_policy_loss="exact"), "full or topk"),
                      (dict(method="sft", off_policy_loss="exact", estimator="clipped"), "full or topk"),
                      (dict(method="rl", samples_per_prompt=2, off_policy_loss="exact", estimator="full"), "RL"),
                      (dict(method="sft", off_policy_loss="exact", estimator="topk", divergence="forward_kl"),
                       "divergence"),
                      (dict(method="sft", off_policy_loss="exact", estimator="full", sft_source="reference",
                            teacher_server="http://localhost:8000"), "teacher server"),
                      (dict(off_policy_loss="soft"), "off_policy_loss")]:
        with pytest.raises(ConfigError, match=word):
            RunConfig(**bad)


def test_exact_loss_is_the_divergence_or_the_topk_kl_and_trains_the_student_only():
    torch.manual_seed(0)
    student = torch.randn(2, 4, 7, requires_grad=True)
    teacher = torch.randn(2, 4, 7, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    for divergence in ("reverse_kl", "forward_kl"):
        loss, metrics = losses.exact_loss(student, teacher, mask, "full", divergence)
        expected, _ = losses.divergence_loss(student, teacher, mask, divergence)
        assert torch.allclose(loss, expected) and metrics["loss"] == pytest.approx(expected.item())
    loss, metrics = losses.exact_loss(student, teacher, mask, "topk", top_k=3, temperature=0.5)
    expected = losses.masked_mean(losses.topk_renormalized_reverse_kl(student / 0.5, teacher / 0.5, 3), mask)
    assert torch.allclose(loss, expected) and metrics["topk_reverse_kl"] == pytest.approx(expected.item())
    assert loss.item() > 0
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    with pytest.raises(ValueError, match="full or topk"):
        losses.exact_loss(student, teacher, mask, "sampled")


@pytest.mark.parametrize("fields", [dict(estimator="full", divergence="forward_kl"), dict(estimator="topk")],
                         ids=["forward-exact", "reverse-topk"])
def test_sft_with_an_exact_loss_trains_and_charges_the_teachers_scoring(lab_home, fields):
    run_dir = run_folder.create_run(RunConfig(**SMALL, method="sft", off_policy_loss="exact", **fields))
    assert run_training(run_dir, progress=False) == "finished", load_status(run_dir)
    rows = load_metrics(run_dir)
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert math.isfinite(rows[2]["train/loss"]) and rows[2]["train/loss"] >= 0  # a KL, never a negative log-prob sum
    assert rows[2]["perf/flops_teacher"] > 0  # plain SFT's is 0: its teacher only samples


# --- the arms ---------------------------------------------------------------------------

def test_arm_configs_give_one_valid_config_per_cell_with_one_learning_rate():
    base = RunConfig(learning_rate=1e-4, steps=7, eval_count=50)
    configs = decomposition.arm_configs(base, 32)
    assert list(configs) == list(CELLS) and len(CELLS) == 9
    assert {c.learning_rate for c in configs.values()} == {1e-4} and {c.steps for c in configs.values()} == {7}
    sft, opd = configs["teacher-forward-sampled"], configs["student-reverse-sampled"]
    for key, value in arm_overrides("sft", 32).items():
        assert getattr(sft, key) == value
    assert sft.off_policy_loss == "cross_entropy" and opd.method == "opd" and opd.estimator == "sampled"
    for name, config in configs.items():
        cell = CELLS[name]
        assert config.method == ("sft" if cell.prefix == "teacher" else "opd")
        exact = cell.estimator in ("exact", "topk")
        assert (config.off_policy_loss == "exact") == (cell.prefix == "teacher" and exact)
        if cell.estimator == "exact":
            assert config.estimator == "full" and config.divergence == f"{cell.divergence}_kl"
    for factor, start, end in decomposition.PATH:  # each step of the walk changes exactly one factor
        differing = [f for f in ("prefix", "divergence", "estimator")
                     if getattr(CELLS[start], f) != getattr(CELLS[end], f)]
        assert differing == [factor]


# --- numbers from metrics rows ----------------------------------------------------------

def _rows(accuracies, every=10, sampled=None):
    return [{"step": every * i, "eval/accuracy": a, **({"eval/sampled_accuracy": sampled[i]} if sampled else {})}
            for i, a in enumerate(accuracies)]


def test_steps_to_gap_follow_from_the_metrics():
    # base 0.6, teacher 1.0: 50% -> 0.8, 80% -> 0.92. A lucky 0.85 at step 10 falls back: not confirmed.
    rows = _rows([0.6, 0.85, 0.7, 0.81, 0.9, 0.93, 0.95])
    assert steps_to_gap(rows, 0.6, 1.0) == {0.5: 30, 0.8: 50}
    assert steps_to_gap(_rows([0.6, 0.7, 0.75]), 0.6, 1.0) == {0.5: None, 0.8: None}
    rows = _rows([0.6, 0.6, 0.6], sampled=[0.2, 0.5, 0.7])
    assert steps_to_gap(rows, 0.2, 0.8, metric="eval/sampled_accuracy") == {0.5: 10, 0.8: 20}
    assert decomposition.curve_accuracy(_rows([0.1, 0.5, 0.7])) == pytest.approx(0.6)


SCORES = {"student-reverse-sampled": 0.60, "student-reverse-exact": 0.72, "teacher-reverse-exact": 0.80,
          "teacher-forward-exact": 0.78, "teacher-forward-sampled": 0.90, "student-forward-exact": 0.70}


def test_attribution_splits_the_lead_along_the_path_and_the_sentence_uses_its_numbers():
    found = attribution(SCORES)
    assert found["lead"] == pytest.approx(0.30)
    assert found["shares"]["estimator"] == pytest.approx(0.12 + 0.12)
    assert found["shares"]["prefix"] == pytest.approx(0.08)
    assert found["shares"]["divergence"] == pytest.approx(-0.02)
    assert sum(found["shares"].values()) == pytest.approx(found["lead"])
    assert found["prefix_under_forward"] == pytest.approx(0.08)
    sentence = decomposition.attribution_sentence(found, "greedy accuracy", noise=0.03)
    assert "by 30.0 points" in sentence and "+24.0 points (80% of the lead" in sentence
    assert "+8.0 points (27%" in sentence and "-2.0 points (-7%" in sentence
    assert "within noise: divergence (teacher-reverse-exact to teacher-forward-exact, -2.0 points)." in sentence
    assert attribution({**SCORES, "teacher-reverse-exact": None})["lead"] is None
    behind = attribution({**SCORES, "teacher-forward-sampled": 0.55})
    assert "did not lead" in decomposition.attribution_sentence(behind, "greedy accuracy")


def test_the_report_is_computed_from_the_runs():
    runs = {name: _rows([0.5, score, score], sampled=[0.3, score - 0.2, score - 0.2]) for name, score in SCORES.items()}
    variance = GradientVariance(8, 30.0, 2e-6, 6e-5, 1e-6, 2.0).to_dict()
    data = decomposition.decomposition_report(runs, {"student-reverse-sampled": variance},
                                              {"teacher": 1.0, "student": 0.5, "teacher_sampled": 0.9,
                                               "student_sampled": 0.3}, eval_count=500)
    sft = data["arms"]["teacher-forward-sampled"]
    assert sft["eval/accuracy"]["steps_to_gap"] == {"0.5": 10, "0.8": 10}  # 0.9 >= 0.5 + 0.8 * 0.5
    assert data["arms"]["student-reverse-sampled"]["eval/accuracy"]["steps_to_gap"] == {"0.5": None, "0.8": None}
    assert data["attribution"]["eval/accuracy"]["lead"] == pytest.approx(0.30)
    assert data["attribution"]["eval/sampled_accuracy"]["lead"] == pytest.approx(0.30)
    markdown = decomposition.decomposition_markdown(data)
    assert "| OPD (sampled estimator) | student | reverse | sampled | 60.0% | 60.0% | not reached" in markdown
    assert "6e-05 | 2 |" in markdown and "not measured" in markdown
    assert data["sentences"]["eval/accuracy"] in markdown


# --- gradient noise ---------------------------------------------------------------------

def test_gradient_variance_is_zero_for_a_deterministic_loss_and_positive_for_a_sampled_one():
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(5))
    inputs = torch.randn(5)

    def exact(_):
        return (torch.softmax(logits, -1) * inputs).sum(), 1

    def sampled(resampling):
        generator = torch.Generator().manual_seed(resampling)
        tokens = torch.multinomial(torch.softmax(logits.detach(), -1), 4, replacement=True, generator=generator)
        logps = torch.log_softmax(logits, -1)[tokens]
        return -(logps * inputs[tokens]).mean(), 4

    still = gradient_variance(exact, [logits])
    assert still.variance == 0.0 and still.per_token_variance == 0.0 and still.noise_to_signal == 0.0
    noisy = gradient_variance(sampled, [logits])
    assert noisy.variance > 0 and noisy.per_token_variance == pytest.approx(4 * noisy.variance)
    assert noisy.resamplings == 8 and noisy.mean_tokens == 4 and logits.grad is None
    with pytest.raises(ValueError, match="at least 2"):
        gradient_variance(exact, [logits], resamplings=1)


def test_an_arms_gradient_noise_on_the_tiny_lab(lab_home, tmp_path):
    small = dict(batch_size=4, max_new_tokens=12)
    fixed = RunConfig(**small, method="sft", sft_source="reference", off_policy_loss="exact", estimator="full")
    assert decomposition.arm_gradient_variance(fixed, tmp_path, prompts=3, resamplings=3).variance == 0.0
    sampled = decomposition.arm_gradient_variance(RunConfig(**small, method="opd"), tmp_path, prompts=3,
                                                  resamplings=3)
    assert sampled.variance > 0 and sampled.mean_tokens > 0


# --- the runner -------------------------------------------------------------------------

def test_the_quick_runner_writes_a_report(home, tmp_path):
    from bench.decomposition import main

    cells = "teacher-forward-sampled,teacher-reverse-exact,student-reverse-sampled"
    out = main(["--quick", "--cells", cells, "--resamplings", "2", "--out", str(tmp_path / "report")])
    data = json.loads((out / "decomposition.json").read_text())
    assert set(data["arms"]) == set(cells.split(","))
    for arm in data["arms"].values():
        assert arm["gradient"]["resamplings"] == 2 and arm["steps"] == 4
    assert {path.split("/")[-1].rsplit("-", 2)[0] for path in data["runs"].values()} == {
        f"decomposition-baseline-quick-{cell}" for cell in cells.split(",")}
    assert all(path.startswith(str(out)) for path in data["runs"].values())  # the runs live in the report folder
    assert "How much of SFT's lead is what" in (out / "decomposition.md").read_text()
    (out / "decomposition.json").unlink()
    again = main(["--quick", "--cells", cells, "--report-only", "--out", str(out)])  # from the finished runs
    assert json.loads((again / "decomposition.json").read_text())["arms"] == data["arms"]
