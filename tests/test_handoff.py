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


def test_the_claims_row_of_a_handoff_report_judges_its_ratio():
    from opd_lab.studies.claims import claim_rows, handoff_row

    stage1 = {64: _rows({0: 0.4, 10: 0.6}, 1.0, 0.0), 128: _rows({0: 0.4, 10: 0.7}, 1.0, 0.0),
              256: _rows({0: 0.4, 10: 0.705}, 1.0, 0.0)}
    # N* = 128 (0.7); target 0.8. OPD: step 10 at 200 FLOPs/step; SFT: step 40 at 100 training FLOPs/step.
    stage2 = {"sft": [_rows({0: 0.7, 40: 0.8}, 100.0, 60.0)], "opd": [_rows({0: 0.7, 10: 0.8}, 50.0, 150.0)],
              "rl": [_rows({0: 0.7, 30: 0.75}, 10.0, 10.0)]}
    data = {**handoff_report(stage1, stage2, 0.9), "scenario": "baseline", "quick": False}
    row = handoff_row(data)
    assert row["claim"] == "compute-vs-sft" and row["scenario"] == "baseline, hand-off"
    assert "2.00x with the SFT data free" in row["measured"] and "3.20x with its sampling charged" in row["measured"]
    assert "RL not reached (0/1 seeds; final accuracy 75.0%)" in row["measured"]
    assert row["verdict"] == "holds on the lab, but smaller than the seed's 9x (2.00x)"
    # OPD far cheaper: the claim holds; OPD never there: it does not.
    cheap = {**data, "ratios": {**data["ratios"], "flops_dataset_free": 12.0}}
    assert handoff_row(cheap)["verdict"] == "holds on the lab"
    slow = {**data, "arms": {**data["arms"], "opd": {**data["arms"]["opd"], "steps": None, "reached": 0}},
            "ratios": {**data["ratios"], "flops_dataset_free": None}}
    assert handoff_row(slow)["verdict"] == "does not hold"
    dearer = {**data, "ratios": {**data["ratios"], "flops_dataset_free": 0.5}}
    assert handoff_row(dearer)["verdict"] == "does not hold"
    # The claims table carries the hand-off row beside nothing else for that claim.
    rows = [r for r in claim_rows({"handoff-baseline": data}) if r["claim"] == "compute-vs-sft"]
    assert [r["scenario"] for r in rows] == ["baseline, hand-off"]


def test_a_report_folder_is_recomputed_from_its_runs(tmp_path):
    import json

    from opd_lab.studies.handoff import refresh_handoff

    runs = {"s64": ({"method": "sft", "prompt_pool": 64}, _rows({0: 0.4, 10: 0.6}, 1.0, 0.0)),
            "s128": ({"method": "sft", "prompt_pool": 128}, _rows({0: 0.4, 10: 0.7}, 1.0, 0.0)),
            "s256": ({"method": "sft", "prompt_pool": 256}, _rows({0: 0.4, 10: 0.705}, 1.0, 0.0)),
            "sft": ({"method": "sft", "prompt_pool": 0}, _rows({0: 0.7, 40: 0.8}, 100.0, 60.0)),
            "opd": ({"method": "opd", "prompt_pool": 128}, _rows({0: 0.7, 10: 0.75, 20: 0.72}, 50.0, 150.0))}
    for name, (config, rows) in runs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text(json.dumps(config))
        (tmp_path / "runs" / name / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "handoff.json").write_text(json.dumps({
        "scenario": "baseline", "teacher_accuracy": 0.9, "settings": {"min_gain": 0.01}, "lab": {"kept": True},
        "runs": {"stage1": ["s64", "s128", "s256"], "stage2": ["sft", "opd"]}}))
    data = refresh_handoff(tmp_path)
    assert data["n_star"] == 128 and data["target"] == pytest.approx(0.8) and data["lab"] == {"kept": True}
    assert data["arms"]["sft"]["steps"] == 40 and data["arms"]["opd"]["steps"] is None
    assert data["arms"]["opd"]["final_accuracy"] == 0.72 and data["protocol"] == "handoff"
    assert json.loads((tmp_path / "handoff.json").read_text())["n_star"] == 128
    assert "| opd | 0/1 |" in (tmp_path / "handoff.md").read_text()


def test_a_scenario_without_a_report_takes_the_rates_of_the_lab_it_shares(tmp_path, monkeypatch):
    import json

    from opd_lab.studies import handoff

    monkeypatch.setattr("opd_lab.paths.MEASURED_RESULTS_DIR", tmp_path)
    assert handoff._chosen_rates("noisy-teacher") == {arm: handoff.DEFAULT_RATE for arm in handoff.HANDOFF_ARMS}
    (tmp_path / "baseline.json").write_text(json.dumps({"learning_rates": {"sft": 1e-4, "opd": 3e-5, "rl": 1e-5}}))
    assert handoff._chosen_rates("noisy-teacher") == {"sft": 1e-4, "opd": 3e-5, "rl": 1e-5}  # shares baseline's lab
    (tmp_path / "noisy-teacher.json").write_text(json.dumps({"learning_rates": {"sft": 3e-4, "opd": 1e-4}}))
    assert handoff._chosen_rates("noisy-teacher") == {"sft": 3e-4, "opd": 1e-4, "rl": handoff.DEFAULT_RATE}
