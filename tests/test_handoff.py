"""The hand-off protocol's numbers, from synthetic runs' metrics."""

import math

import pytest

from opd_lab.studies.handoff import (fit_log_linear, handoff_markdown, handoff_report, plateau_size)


def _rows(curve: dict[int, float], flops_training: float, flops_other: float, batch: int = 64) -> list[dict]:
    """Metric rows evaluated at `curve`'s steps; FLOPs grow linearly with the step."""
    return [{"step": step, "eval/accuracy": accuracy, "progress/samples": step * batch,
             "perf/flops_training": step * flops_training, "perf/flops": step * (flops_training + flops_other)}
            for step, accuracy in sorted(curve.items())]


def test_the_fit_recovers_a_known_line_and_its_interval_covers_it():
    sizes = [64, 128, 256, 512, 1024, 2048, 4096]
    exact = [0.2 + 0.05 * math.log2(n) for n in sizes]
    fit = fit_log_linear(sizes, exact)
    assert fit.slope == pytest.approx(0.05) and fit.intercept == pytest.approx(0.2)
    assert fit.slope_ci[0] == pytest.approx(0.05) and fit.slope_ci[1] == pytest.approx(0.05)
    noisy = [a + d for a, d in zip(exact, [0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01])]
    fit = fit_log_linear(sizes, noisy)
    low, high = fit.slope_ci
    assert low < 0.05 < high and low < fit.slope < high
    # The interval by hand: t(5) = 2.571 times the slope's standard error.
    xs = [math.log2(n) for n in sizes]
    mean_x = sum(xs) / 7
    residuals = [y - fit.intercept - fit.slope * x for x, y in zip(xs, noisy)]
    se = math.sqrt(sum(r * r for r in residuals) / 5 / sum((x - mean_x) ** 2 for x in xs))
    assert high - fit.slope == pytest.approx(2.571 * se)
    assert fit.size_for(fit.accuracy_at(300)) == pytest.approx(300)


def test_plateau_is_the_first_size_whose_doubling_gains_too_little():
    assert plateau_size([64, 128, 256, 512], [0.5, 0.6, 0.65, 0.655]) == 256
    assert plateau_size([64, 128, 256], [0.5, 0.6, 0.7]) == 256  # never flat: the largest
    assert plateau_size([64, 128, 256], [0.5, 0.45, 0.7]) == 64  # a drop is no gain


def test_handoff_ratios_follow_from_the_runs_metrics():
    teacher = 0.9
    # Stage 1: best evaluations 0.5, 0.6, 0.7, 0.705 (N = 64 .. 512); early stopping takes the best, not the last.
    stage1 = {64: _rows({0: 0.4, 10: 0.5, 20: 0.45}, 1.0, 0.0), 128: _rows({0: 0.4, 10: 0.6}, 1.0, 0.0),
              256: _rows({0: 0.4, 10: 0.65, 20: 0.7, 30: 0.69}, 1.0, 0.0), 512: _rows({0: 0.4, 40: 0.705}, 1.0, 0.0)}
    # N* = 256 (the next doubling gains 0.005); start 0.7, target 0.7 + 0.5 * 0.2 = 0.8.
    # SFT reaches 0.8 at step 40 (training 100 FLOPs/step, teacher sampling 60/step);
    # OPD at step 10 (all FLOPs 50 + 150 per step); RL at step 30 and never (two seeds: median inf).
    stage2 = {"sft": [_rows({0: 0.7, 20: 0.75, 40: 0.8}, 100.0, 60.0)],
              "opd": [_rows({0: 0.7, 10: 0.81}, 50.0, 150.0)],
              "rl": [_rows({0: 0.7, 30: 0.8}, 10.0, 10.0), _rows({0: 0.7, 30: 0.75}, 10.0, 10.0)]}
    data = handoff_report(stage1, stage2, teacher)
    assert data["n_star"] == 256 and data["start_accuracy"] == 0.7 and data["target"] == pytest.approx(0.8)
    assert data["stage1"]["64"] == {"accuracy": 0.5, "step": 10, "flops_training": 10.0, "flops": 10.0}
    assert data["arms"]["sft"]["steps"] == 40 and data["arms"]["opd"]["steps"] == 10
    assert data["arms"]["sft"]["flops_training"] == 4000.0 and data["arms"]["sft"]["flops"] == 6400.0
    assert data["arms"]["opd"]["flops"] == 2000.0
    assert data["ratios"]["flops_dataset_free"] == pytest.approx(4000 / 2000)
    assert data["ratios"]["flops_sampling_charged"] == pytest.approx(6400 / 2000)
    assert data["ratios"]["steps"] == pytest.approx(4.0)
    assert data["ratios"]["sequences"] == pytest.approx(40 * 64 / (10 * 64))
    assert data["arms"]["rl"]["reached"] == 1 and data["arms"]["rl"]["steps"] is None  # median of 30 and inf
    assert data["ratios"]["rl_steps"] is None
    fit = fit_log_linear([64, 128, 256, 512], [0.5, 0.6, 0.7, 0.705])
    assert data["fit"]["slope"] == pytest.approx(fit.slope)
    prediction = data["fit_prediction"]
    assert prediction["samples"] == pytest.approx(2 ** ((0.8 - fit.intercept) / fit.slope))
    assert prediction["samples_low"] <= prediction["samples"] <= prediction["samples_high"]
    text = handoff_markdown(data, "baseline")
    assert "FLOPs, the SFT dataset free (the seed's 9x): 2.00x" in text
    assert "FLOPs, the teacher's sampling charged (the ~30x): 3.20x" in text
    assert "N* = 256" in text and "not reached" in text


def test_handoff_settings_and_cli_flag():
    from opd_lab.cli import build_parser
    from opd_lab.studies.handoff import HandoffSettings

    with pytest.raises(ValueError):
        HandoffSettings(scenario="baseline", sizes=(64,))
    args = build_parser().parse_args(["compare", "--protocol", "handoff", "--scenario", "retry"])
    assert args.protocol == "handoff" and args.scenario == "retry"
