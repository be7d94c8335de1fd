"""Compare says what the numbers say: the two misleading verdicts of the workshop, and ties.

Synthetic runs (accuracy curves and FLOPs made up, no model) go through the same code
as `opd-lab compare` and the Compare tab: `report.summarize_arm` and `report.verdict`,
or `report.compare_runs` over run folders.
"""

from __future__ import annotations

import re

from opd_lab import report
from opd_lab.report import compare_runs, run_labels
from synthetic_runs import make_run

BASE, TEACHER = 0.5, 0.9  # 50% of the gap: 0.7; 80%: 0.82; 95%: 0.88


def _rows(curve: dict[int, float], flops_per_step: float, last_step: int | None = None) -> list[dict]:
    """Metric rows of one run: an evaluation at each step of `curve`, FLOPs growing with the steps."""
    last = last_step if last_step is not None else max(curve)
    return [{"step": step, "perf/flops": step * flops_per_step, "progress/samples": step * 64,
             **({"eval/accuracy": curve[step]} if step in curve else {})} for step in range(last + 1)]


def _verdict(curves: dict, flops: dict, eval_count: int | None = 200) -> dict:
    summaries = {arm: report.summarize_arm([_rows(curve, flops[arm])], BASE, TEACHER) for arm, curve in curves.items()}
    return report.verdict(summaries, BASE, TEACHER, eval_count=eval_count)


def _ratios(sentence: str) -> list[float]:
    return [float(value) for value in re.findall(r"(\d+(?:\.\d+)?)x", sentence)]


def test_no_crown_and_no_x_less_when_the_loser_had_a_smaller_budget():
    """The workshop's first case: SFT got there at a cost RL's whole budget never reached, and the
    verdict said SFT used "more than 0.9x less" compute than RL."""
    curves = {"rl": {0: 0.5, 10: 0.55, 20: 0.6},  # 20 steps x 1e12: a budget of 2e13
              "sft": {0: 0.5, 10: 0.6, 20: 0.75, 30: 0.76},  # reaches 0.7 at step 20 (4.4e13)
              "opd": {0: 0.5, 10: 0.6, 20: 0.65, 30: 0.68}}
    found = _verdict(curves, {"rl": 1e12, "sft": 2.2e12, "opd": 3e12})
    sentence = found["sentence"]
    assert found["winner"] is None and found["level"] == 0.5
    assert "SFT closed 50% of the gap" in sentence and "least compute" not in sentence.split(";")[1]
    assert "RL stopped on a smaller budget than that without getting there, so no method is named the cheapest" in sentence
    assert "0.9x" not in sentence and all(x > 1 for x in _ratios(sentence.split("; OPD")[0].split("; RL")[0]))


def test_one_lucky_evaluation_does_not_reach_a_target_nor_win():
    """The workshop's second case: RL crossed the target once (75.5% at step 25 on 200 problems)
    and was crowned, though it ended last at 61.5%."""
    curves = {"rl": {0: 0.5, 5: 0.55, 15: 0.6, 25: 0.755, 35: 0.63, 45: 0.615},
              "sft": {0: 0.5, 15: 0.6, 25: 0.66, 35: 0.69, 45: 0.69},
              "opd": {0: 0.5, 15: 0.62, 25: 0.68, 35: 0.72, 45: 0.74}}
    flops = {"rl": 1e12, "sft": 1e12, "opd": 1e12}
    assert report.cost_to_reach(_rows(curves["rl"], 1e12), 0.7) is None  # not held at step 35
    assert report.cost_to_reach(_rows(curves["opd"], 1e12), 0.7)["steps"] == 35
    found = _verdict(curves, flops)
    assert found["winner"] == "opd" and found["level"] == 0.5
    assert found["sentence"].startswith("OPD closed 50% of the gap to the teacher with the least compute")
    assert "more than 1.3x less than RL" in found["sentence"]  # RL's whole budget (45 steps) against OPD's 35


def test_a_cheaper_winner_that_ended_clearly_below_another_arm_is_said_to_have():
    curves = {"rl": {0: 0.5, 10: 0.72, 20: 0.72, 30: 0.71},  # got there first, then stalled
              "opd": {0: 0.5, 10: 0.6, 20: 0.75, 30: 0.81}}  # below 80% of the gap (0.82)
    found = _verdict(curves, {"rl": 1e12, "opd": 1e12})
    assert found["level"] == 0.5 and found["winner"] == "rl"
    assert "but it ended below OPD (71.0% against 81.0% final accuracy)" in found["sentence"]
    # Within two standard errors (200 problems: about 4.5 points here) the endings are a tie: nothing said.
    curves["opd"][30] = 0.74
    assert "ended below" not in _verdict(curves, {"rl": 1e12, "opd": 1e12})["sentence"]


def test_final_accuracies_within_two_standard_errors_are_a_tie():
    curves = {"rl": {0: 0.5, 20: 0.66}, "opd": {0: 0.5, 20: 0.65}}  # no one closes half of the gap
    sentence = _verdict(curves, {"rl": 1e12, "opd": 1e12})["sentence"]
    assert "the final accuracies of RL and OPD (66.0%, 65.0%) are within two standard errors: a tie" in sentence
    far = _verdict({"rl": {0: 0.5, 20: 0.69}, "opd": {0: 0.5, 20: 0.52}}, {"rl": 1e12, "opd": 1e12})["sentence"]
    assert "the best final accuracy was RL's 69.0%" in far and "tie" not in far
    assert report.is_tie(0.755, 0.70, 200) and not report.is_tie(0.755, 0.615, 200)
    assert not report.is_tie(0.66, 0.65, None)  # without the number of problems, nothing is called a tie


def test_equal_costs_are_about_the_same_never_one_x_less():
    curves = {"rl": {0: 0.5, 10: 0.8, 20: 0.8}, "opd": {0: 0.5, 10: 0.8, 20: 0.8}}
    sentence = _verdict(curves, {"rl": 1.02e12, "opd": 1e12})["sentence"]
    assert "about as much compute as RL" in sentence and "OPD and RL needed about as many gradient steps" in sentence
    assert "1.0x" not in sentence


def test_labels_compare_values_so_the_form_and_the_cli_agree():
    """The Launch form stores 1 where the CLI stores 1.0; only settings that really differ are named."""
    form = {"method": "opd", "temperature": 1, "learning_rate": 0.001, "seed": 0}
    cli = {"method": "opd", "temperature": 1.0, "learning_rate": 0.001, "seed": 1}
    assert run_labels([form, cli]) == ["OPD · seed=0", "OPD · seed=1"]
    assert run_labels([{"method": "rl", "fsdp": True}, {"method": "rl", "fsdp": 1}]) == [
        "RL · fsdp=True", "RL · fsdp=1"]  # a boolean is not a number


def test_the_compare_tab_verdict_uses_held_targets_and_the_runs_eval_count(tmp_path):
    runs = tmp_path / "runs"
    rl = make_run(runs, "rl-lucky", method="rl", steps=45, eval_accuracy={0: 0.5, 25: 0.755, 35: 0.63, 45: 0.615})
    opd = make_run(runs, "opd-steady", method="opd", steps=45, eval_accuracy={0: 0.5, 25: 0.68, 35: 0.72, 45: 0.74})
    for run_dir in (rl, opd):
        config = run_dir / "config.json"
        config.write_text(config.read_text().replace('"task"', '"eval_count": 200, "task"'))
    found = compare_runs([rl, opd], BASE, TEACHER)
    assert found["verdict"]["winner"] == "OPD"
    assert found["verdict"]["sentence"].startswith("OPD closed 50% of the gap")
    row = next(row for row in found["rows"] if row[1] == "rl-lucky")
    assert row[4].startswith("not reached")  # 75.5% once is not 50% of the gap reached
