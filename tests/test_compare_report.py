"""opd-lab compare: numbers and verdicts computed from the runs' own metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import median

import pytest

from opd_lab import report
from opd_lab.run_folder import load_metrics
from opd_lab.studies.comparison import CompareSettings, build_report, pick_learning_rates, run_compare
from opd_lab.studies.comparison_report import load_report, target_rows, write_report
from opd_lab.studies.scenarios import SCENARIOS, get_scenario
from synthetic_runs import make_run

BASE, TEACHER = 0.5, 0.9  # targets: 50% of the gap 0.7, 80% 0.82, 95% 0.88


def _synthetic_report(tmp_path, curves: dict[str, list[dict[int, float]]], flops_per_step: dict[str, float]):
    """A report folder over synthetic runs: `curves[arm][seed]` maps evaluated steps to accuracy."""
    runs = {}
    for arm, seeds in curves.items():
        runs[arm] = []
        for seed, accuracy in enumerate(seeds):
            run_id = f"cmp-{arm}-s{seed}"
            make_run(tmp_path / "runs", run_id, method=arm.split("-")[0], steps=max(accuracy),
                     eval_accuracy=accuracy, flops_per_step=flops_per_step[arm])
            runs[arm].append({"seed": seed, "run": run_id, "learning_rate": 1e-3})
    settings = CompareSettings(scenario="baseline", seeds=len(next(iter(curves.values()))))
    data = build_report(settings, get_scenario("baseline"), {}, TEACHER, BASE, sweep=[],
                        chosen={arm: 1e-3 for arm in curves}, runs_by_arm=runs, out=tmp_path, seconds=1.0)
    write_report(tmp_path, data)
    return data


def _rising(reach_step: int, steps: int = 40) -> dict[int, float]:
    """Accuracy 0.5 at step 0 that reaches 0.9 at `reach_step` (evaluated every 5 steps)."""
    return {s: min(TEACHER, BASE + (TEACHER - BASE) * s / reach_step) for s in range(0, steps + 1, 5)}


def test_gap_targets_and_first_evaluation_reaching_them():
    assert report.gap_target(0.5, 0.9, 0.5) == pytest.approx(0.7)
    rows = [{"step": 0, "eval/accuracy": 0.5, "perf/flops": 0.0},
            {"step": 5, "train/loss": 1.0},
            {"step": 10, "eval/accuracy": 0.8, "perf/flops": 10.0, "progress/samples": 80},
            {"step": 20, "eval/accuracy": 0.95, "perf/flops": 20.0}]
    assert report.cost_to_reach(rows, 0.8)["steps"] == 10
    assert report.cost_to_reach(rows, 0.8)["samples"] == 80
    assert report.cost_to_reach(rows, 0.9)["flops"] == 20.0
    assert report.cost_to_reach(rows, 0.99) is None
    assert report.final_accuracy(rows) == 0.95


def test_a_seed_that_never_reaches_counts_as_infinitely_expensive():
    fast = [{"step": 0, "eval/accuracy": 0.5}, {"step": 10, "eval/accuracy": 0.9}]
    slow = [{"step": 0, "eval/accuracy": 0.5}, {"step": 30, "eval/accuracy": 0.9}]
    never = [{"step": 0, "eval/accuracy": 0.5}, {"step": 50, "eval/accuracy": 0.6}]
    two_of_three = report.summarize_arm([fast, slow, never], BASE, TEACHER)["targets"][-1]
    assert two_of_three["reached"] == 2
    assert two_of_three["steps"]["median"] == 30  # the middle of 10, 30, inf
    one_of_three = report.summarize_arm([fast, never, never], BASE, TEACHER)["targets"][-1]
    assert one_of_three["steps"]["median"] is None
    assert one_of_three["steps"]["lower_bound"] == 50  # the budget's end bounds "more than"


def test_verdict_names_sft_when_sft_wins(tmp_path):
    data = _synthetic_report(tmp_path, {
        "rl": [_rising(40, 40)] * 3, "sft": [_rising(10), _rising(15), _rising(10)], "opd": [_rising(20)] * 3},
        flops_per_step={"rl": 1e9, "sft": 1e9, "opd": 1.2e9})
    verdict = data["verdict"]
    assert verdict["winner"] == "sft" and verdict["level"] == 0.95
    assert verdict["sentence"].startswith("SFT closed 95% of the gap")
    # OPD: 20 steps x 1.2e9 = 2.4e10; SFT: 10 steps x 1e9 -> 2.4x; RL 40 steps -> 4.0x
    assert "2.4x less than OPD" in verdict["sentence"] and "4.0x less than RL" in verdict["sentence"]
    assert "OPD needed 2.0x fewer gradient steps than RL" in verdict["sentence"]


def test_verdict_names_opd_and_bounds_a_method_that_never_got_there(tmp_path):
    flat = {s: 0.6 for s in range(0, 41, 5)}
    data = _synthetic_report(tmp_path, {"rl": [flat] * 3, "sft": [_rising(40)] * 3, "opd": [_rising(5)] * 3},
                             flops_per_step={"rl": 1e9, "sft": 1e9, "opd": 2e9})
    sentence = data["verdict"]["sentence"]
    assert data["verdict"]["winner"] == "opd" and data["verdict"]["steps_winner"] == "opd"
    assert sentence.startswith("OPD closed 95% of the gap") and "4.0x less than SFT" in sentence
    assert "more than 4.0x less than RL" in sentence  # RL's whole budget, 40 x 1e9, against OPD's 5 x 2e9
    assert "OPD needed more than 8.0x fewer gradient steps than RL" in sentence


def test_no_gap_means_no_winner():
    summaries = {"opd": report.summarize_arm([[{"step": 0, "eval/accuracy": 0.0}]], 0.0, 0.0)}
    assert report.verdict(summaries, 0.0, 0.0)["winner"] is None


def test_report_table_matches_the_runs(tmp_path):
    data = _synthetic_report(tmp_path, {"rl": [_rising(40)] * 3, "sft": [_rising(10)] * 3,
                                        "opd": [_rising(20), _rising(25), _rising(20)]},
                             flops_per_step={"rl": 1e9, "sft": 1e9, "opd": 1e9})
    rows = {(r["method"], r["gap closed"]): r for r in target_rows(data)}
    assert rows[("OPD", "95%")]["steps"].startswith("20 ")  # median of 20, 25, 20 with its range
    assert rows[("OPD", "95%")]["steps"].endswith("(20-25)")
    assert rows[("RL", "95%")]["steps vs OPD"] == "2.0x"
    markdown = (tmp_path / "report.md").read_text()
    assert data["verdict"]["sentence"] in markdown
    assert load_report(tmp_path)["verdict"] == data["verdict"]
    assert (tmp_path / "curves.html").stat().st_size > 1000


def _recomputed_steps(rows: list[dict], target: float) -> float:
    for row in rows:
        if "eval/accuracy" in row and row["eval/accuracy"] >= target - 1e-9:
            return row["step"]
    return math.inf


@pytest.mark.slow
def test_quick_compare_end_to_end(lab_home, tmp_path):
    """`opd-lab compare --quick`: the report's numbers follow from the runs in its folder."""
    folder = run_compare(CompareSettings(scenario="baseline", quick=True, seeds=3, workers=2), out=tmp_path / "r",
                         progress_print=lambda *_: None)
    data = json.loads((folder / "report.json").read_text())
    assert set(data["runs"]) == {"rl", "sft", "opd"}
    assert all(len(runs) == 3 for runs in data["runs"].values())
    assert len(data["sweep"]) == 3 * len(data["settings"]["learning_rates"])
    for arm, runs in data["runs"].items():
        chosen = data["learning_rates"][arm]
        assert pick_learning_rates(data["sweep"])[arm] == chosen
        metrics = [load_metrics(report.run_path(folder, run)) for run in runs]
        assert all(m[0]["eval/accuracy"] == data["base_accuracy"] for m in metrics)  # the same base student
        for target in data["summaries"][arm]["targets"]:
            steps = median(_recomputed_steps(m, target["accuracy"]) for m in metrics)
            assert target["steps"]["median"] == (None if math.isinf(steps) else steps)
        finals = [[r["eval/accuracy"] for r in m if "eval/accuracy" in r][-1] for m in metrics]
        assert data["summaries"][arm]["final_accuracy"]["median"] == median(finals)
    assert data["verdict"]["sentence"] in (folder / "report.md").read_text()


def test_every_scenario_has_a_valid_recipe_and_known_claims():
    for scenario in SCENARIOS.values():
        assert scenario.recipe().lab_name == (scenario.lab or scenario.name)
        assert scenario.recipe(quick=True).lab_name == (scenario.lab or scenario.name) + "-quick"
        assert set(scenario.claims) <= set(report_claims())


def report_claims():
    from opd_lab.studies.scenarios import CLAIMS

    return CLAIMS


def test_the_app_shows_a_report_by_name_only(lab_home):
    from opd_lab_app import report_panel
    from opd_lab.studies.comparison_report import reports_dir

    folder = reports_dir() / "synthetic-report"
    folder.mkdir(exist_ok=True)
    data = _synthetic_report(folder, {"rl": [_rising(40)] * 3, "sft": [_rising(10)] * 3, "opd": [_rising(20)] * 3},
                             flops_per_step={"rl": 1e9, "sft": 1e9, "opd": 1e9})
    assert "synthetic-report" in report_panel.report_names()
    text, figure, table = report_panel.show_report("synthetic-report")
    assert data["verdict"]["sentence"] in text and figure is not None and len(table) == 9
    text, figure, _ = report_panel.show_report("../synthetic-report")
    assert text.startswith("**Cannot show") and figure is None


def _claims_data(curves: dict, flops: dict, claims: tuple, pool: int = 0) -> dict:
    """A report's data as the claims table reads it, from synthetic accuracy curves."""
    summaries = {}
    for arm, seeds in curves.items():
        runs = [[{"step": s, "eval/accuracy": a, "perf/flops": s * flops[arm], "progress/samples": s * 64}
                 for s, a in sorted(c.items())] for c in seeds]
        summaries[arm] = report.summarize_arm(runs, BASE, TEACHER)
    return {"scenario": "baseline", "label": "baseline" + (f"-pool{pool}" if pool else ""), "claims": list(claims),
            "seeds": 3, "settings": {"prompt_pool": pool, "steps": 40}, "summaries": summaries,
            "teacher_accuracy": TEACHER, "base_accuracy": BASE,
            "verdict": report.verdict(summaries, BASE, TEACHER)}


def test_the_claims_table_judges_from_the_numbers():
    from opd_lab.studies.claims import claim_rows

    sft_wins = _claims_data({"rl": [_rising(40)] * 3, "sft": [_rising(10)] * 3, "opd": [_rising(20)] * 3},
                            {"rl": 1e9, "sft": 1e9, "opd": 1e9}, ("steps-vs-rl", "compute-vs-sft"))
    rows = {row["claim"]: row for row in claim_rows({"baseline": sft_wins})}
    assert rows["steps-vs-rl"]["verdict"].startswith("holds")  # 40 vs 20 steps: 2x, below the seed's 7x
    assert "smaller than the seed's 7x" in rows["steps-vs-rl"]["verdict"]
    assert rows["compute-vs-sft"]["verdict"] == "does not hold"
    assert "OPD needed 2.0x more FLOPs than SFT" in rows["compute-vs-sft"]["measured"]
    assert rows["foundation"]["verdict"] == "not tested"
    opd_wins = _claims_data({"rl": [_rising(40, 200)] * 3, "sft": [_rising(200, 200)] * 3, "opd": [_rising(5, 200)] * 3},
                            {"rl": 1e9, "sft": 1e9, "opd": 1e9}, ("steps-vs-rl", "compute-vs-sft"))
    rows = {row["claim"]: row for row in claim_rows({"baseline": opd_wins})}
    assert rows["steps-vs-rl"]["verdict"] == "holds on the lab"  # 40 vs 5 steps: 8x
    assert rows["compute-vs-sft"]["verdict"] == "holds on the lab"  # 200 vs 5: 40x


def test_the_app_lists_the_measured_reports_without_runs(lab_home):
    from opd_lab_app import report_panel
    from opd_lab.studies.comparison_report import MEASURED_PREFIX, committed_reports

    measured = committed_reports()
    assert "baseline" in measured  # opd_lab/data/results/baseline.json, behind the claims table
    name = MEASURED_PREFIX + "baseline"
    assert name in report_panel.report_names()
    text, figure, table = report_panel.show_report(name)
    assert json.loads(measured["baseline"].read_text())["verdict"]["sentence"] in text
    assert figure is None and len(table) == 9
    assert report_panel.show_report(MEASURED_PREFIX + "../baseline")[0].startswith("**Cannot show")


def test_the_app_shows_a_handoff_report_and_marks_a_pilot(lab_home):
    from opd_lab_app import report_panel
    from opd_lab.studies.comparison_report import MEASURED_PREFIX, committed_reports, reports_dir

    measured = committed_reports()
    # The seed's protocol, measured on the baseline: stage 1's points are the table.
    handoff = json.loads(measured["handoff-baseline"].read_text())
    text, figure, table = report_panel.show_report(MEASURED_PREFIX + "handoff-baseline")
    assert text.startswith("### The hand-off from SFT's plateau") and f"N* = {handoff['n_star']}" in text and figure is None
    assert list(table["N (teacher samples)"]) == sorted(int(n) for n in handoff["stage1"])
    # A hand-off folder of this data dir is listed and shown the same way.
    folder = reports_dir() / "handoff-synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handoff.json").write_text(json.dumps({**handoff, "scenario": "noisy-teacher"}))
    assert "handoff-synthetic" in report_panel.report_names()
    assert "scenario `noisy-teacher`" in report_panel.show_report("handoff-synthetic")[0]
    # A pilot (no sweep of its own; the measured one of docs/results/pilots) says so instead of claiming a sweep.
    pilot = json.loads((Path(__file__).resolve().parents[1] / "docs/results/pilots/noisy-teacher-pilot-3seeds.json")
                       .read_text())
    (reports_dir() / "pilot-synthetic").mkdir(parents=True, exist_ok=True)
    (reports_dir() / "pilot-synthetic" / "report.json").write_text(json.dumps(pilot))
    text = report_panel.show_report("pilot-synthetic")[0]
    assert ("a pilot, not a claim: " + pilot["pilot"]) in text and "from the same sweep" not in text
    full = report_panel.show_report(MEASURED_PREFIX + "noisy-teacher")[0]  # the full comparison: no pilot line
    assert "a pilot, not a claim" not in full and "noisy-teacher" in full


def test_the_sweep_picks_the_best_score_and_breaks_ties_by_the_kl_to_the_teacher():
    sweep = [{"arm": "sft", "learning_rate": 1e-4, "score": 0.7, "final_kl": 0.5},
             {"arm": "sft", "learning_rate": 3e-4, "score": 0.8, "final_kl": 0.9},
             {"arm": "opd", "learning_rate": 1e-4, "score": 0.0, "final_kl": 2.0},
             {"arm": "opd", "learning_rate": 3e-3, "score": 0.0, "final_kl": 0.4}]  # nothing right yet: nearer the teacher wins
    assert pick_learning_rates(sweep) == {"sft": 3e-4, "opd": 3e-3}


def test_the_foundation_claim_needs_sft_to_learn_where_opd_does_not():
    from opd_lab.studies.claims import claim_rows

    flat, slow = {s: BASE for s in range(0, 41, 5)}, {s: BASE + 0.1 * s / 40 for s in range(0, 41, 5)}
    learned = _claims_data({"rl": [flat] * 3, "sft": [slow] * 3, "opd": [flat] * 3},
                           {"rl": 1e9, "sft": 1e9, "opd": 1e9}, ("foundation",))
    row = next(r for r in claim_rows({"no-foundation": learned}) if r["claim"] == "foundation")
    assert row["verdict"].startswith("holds on the lab")
    nothing = _claims_data({"rl": [flat] * 3, "sft": [flat] * 3, "opd": [flat] * 3},
                           {"rl": 1e9, "sft": 1e9, "opd": 1e9}, ("foundation",))
    row = next(r for r in claim_rows({"no-foundation": nothing}) if r["claim"] == "foundation")
    assert row["verdict"].startswith("not shown")


def test_sampled_verdict_is_judged_on_sampled_accuracy_and_says_so(tmp_path):
    """Greedy and sampled accuracy can disagree: each verdict names the accuracy it judged."""
    runs = {}
    # Greedy: SFT reaches the teacher by step 10, OPD by step 40. Sampled (teacher 0.7, base 0.3):
    # OPD reaches it by step 10, SFT never gets past 0.4.
    greedy = {"sft": _rising(10), "opd": _rising(40)}
    sampled = {"sft": {s: min(0.4, 0.3 + 0.01 * s) for s in range(0, 41, 5)},
               "opd": {s: min(0.7, 0.3 + 0.04 * s) for s in range(0, 41, 5)}}
    for arm in ("sft", "opd"):
        make_run(tmp_path / "runs", f"cmp-{arm}", method=arm, steps=40, eval_accuracy=greedy[arm],
                 eval_metrics={report.SAMPLED_ACCURACY: sampled[arm]})
        runs[arm] = [{"seed": 0, "run": f"cmp-{arm}", "learning_rate": 1e-3}]
    data = build_report(CompareSettings(scenario="baseline", seeds=1), get_scenario("baseline"), {}, TEACHER, BASE,
                        sweep=[], chosen={"sft": 1e-3, "opd": 1e-3}, runs_by_arm=runs, out=tmp_path, seconds=1.0,
                        sampled_reference={"teacher": 0.7, "base": 0.3})
    assert data["verdict"]["winner"] == "sft" and data["verdict"]["accuracy"] == "greedy accuracy"
    assert data["sampled"]["verdict"]["winner"] == "opd"
    assert data["sampled"]["verdict"]["accuracy"].startswith("sampled accuracy")
    assert data["sampled"]["summaries"]["sft"]["final_accuracy"]["median"] == pytest.approx(0.4)
    write_report(tmp_path, data)
    markdown = (tmp_path / "report.md").read_text()
    assert "**Verdict (greedy accuracy).** " + data["verdict"]["sentence"] in markdown
    assert "**Verdict (sampled accuracy, temperature 1, mean of 4 samples per problem).** " in markdown
    assert data["sampled"]["verdict"]["sentence"] in markdown
    # Runs without sampled accuracy (older reports) get no sampled verdict.
    old = build_report(CompareSettings(scenario="baseline", seeds=1), get_scenario("baseline"), {}, TEACHER, BASE,
                       sweep=[], chosen={}, runs_by_arm={"sft": runs["sft"]}, out=tmp_path, seconds=1.0,
                       sampled_reference=None)
    assert "sampled" not in old


def test_compare_reports_use_at_least_500_problems():
    assert all(scenario.eval_count >= 500 for scenario in SCENARIOS.values())


def test_noisy_teacher_scenario_runs_every_arm_against_the_noisy_teacher():
    from opd_lab.studies.comparison import _config

    settings = CompareSettings(scenario="noisy-teacher", seeds=1)
    assert settings.arms == ("rl", "sft", "opd", "sft-greedy")
    scenario = settings.budget()
    configs = {arm: _config(scenario, "baseline", arm, 0, 1e-4, 10, f"x-{arm}") for arm in settings.arms}
    assert all(c.teacher_noise == 0.03 for c in configs.values())
    assert configs["sft-greedy"].method == "sft" and configs["sft-greedy"].sft_source == "teacher_greedy"
    assert configs["sft"].sft_source == "teacher"
    from opd_lab.studies.arms import arm_of

    assert {arm: arm_of(c) for arm, c in configs.items()} == {arm: arm for arm in settings.arms}


def test_noisy_teacher_claim_is_judged_on_sampled_accuracy():
    from opd_lab.studies.claims import noisy_teacher_row

    def summary(final):
        return {"seeds": 3, "final_accuracy": {"median": final, "min": final, "max": final}, "targets": []}

    data = {"scenario": "noisy-teacher", "seeds": 3,
            "sampled": {"samples_per_problem": 4, "teacher_accuracy": 0.98, "base_accuracy": 0.3,
                        "noisy_teacher": {"noise": 0.03, "sampled": 0.40, "greedy": 0.99},
                        "summaries": {"sft": summary(0.45), "opd": summary(0.60), "rl": summary(0.35)}}}
    row = noisy_teacher_row(data)
    assert row["verdict"] == "holds on the lab" and "OPD 60.0%" in row["measured"] and "40.0% sampled" in row["measured"]
    data["sampled"]["summaries"]["opd"] = summary(0.42)  # above the noisy teacher, below SFT
    assert noisy_teacher_row(data)["verdict"] == "does not hold"
    # The controls qualify a win: SFT on the greedy answers above OPD, RL within 3 points of it.
    data["sampled"]["summaries"].update(opd=summary(0.50), rl=summary(0.48), **{"sft-greedy": summary(0.61)})
    verdict = noisy_teacher_row(data)["verdict"]
    assert verdict.startswith("holds on the lab, but SFT on the teacher's greedy answers did better (61.0%)")
    assert verdict.endswith("RL, which never sees the teacher, came within 3 points (48.0%)")
    data["pilot"] = "3 seeds (0, 1, 2), each run as its own pilot; no sweep (...), 150 steps, evaluations every 25"
    assert noisy_teacher_row(data)["measured"].startswith("a pilot (3 seeds, no sweep of its own")


def test_recovery_claim_reads_the_runs_final_slip_statistics(tmp_path):
    from opd_lab.studies.claims import recovery_row
    from opd_lab.studies.comparison import final_statistics

    rows = [[{"step": 0, "eval/sampled_recovery_rate": 0.1}, {"step": 10, "eval/sampled_recovery_rate": 0.6,
                                                               "eval/sampled_slip_rate": 0.02}],
            [{"step": 10, "eval/sampled_recovery_rate": 0.4}], [{"step": 10}]]
    assert final_statistics(rows) == {"recovery_rate": 0.5, "slip_rate": 0.02}

    def summary(final):
        return {"seeds": 3, "final_accuracy": {"median": final, "min": final, "max": final}, "targets": []}

    data = {"scenario": "retry", "seeds": 3,
            "sampled": {"summaries": {"sft": summary(0.7), "opd": summary(0.8)},
                        "statistics": {"sft": {"recovery_rate": 0.05}, "opd": {"recovery_rate": 0.6}}}}
    row = recovery_row(data)
    assert row["verdict"] == "holds on the lab" and "recovery 60.0%" in row["measured"]
    data["sampled"]["statistics"]["opd"]["recovery_rate"] = 0.01
    assert recovery_row(data)["verdict"] == "does not hold"


def test_a_report_without_a_sweep_names_its_rates_and_no_grid():
    from opd_lab.studies.comparison_report import grid_edges, report_markdown

    pilot = Path(__file__).resolve().parents[1] / "docs/results/pilots/noisy-teacher-pilot-3seeds.json"
    data = json.loads(pilot.read_text())
    assert data["sweep"] == [] and grid_edges(data) == {}
    text = report_markdown(data)
    assert "At the edge of the grid" not in text and "## Learning-rate sweep" not in text
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("No sweep of its own: ")
    assert set(last[len("No sweep of its own: "):-1].split(", ")) == {
        "RL 1e-05", "SFT 0.0001", "OPD 3e-05", "SFT (teacher's greedy answers) 0.0001"}
    baseline = json.loads((Path(__file__).resolve().parents[1] / "opd_lab/data/results/baseline.json").read_text())
    assert "## Learning-rate sweep" in report_markdown(baseline)  # a swept report keeps its sweep table
