"""The two-experts scenario on tiny models: every arm runs, sequential OPD switches tasks,
and the report holds each skill's accuracy over steps and FLOPs with a verdict."""

import pytest

from opd_lab.run_folder import load_config, load_metrics
from opd_lab.studies.two_experts import ARMS, TwoExpertsSettings, run_two_experts, verdict

QUICK = TwoExpertsSettings(steps=2, batch_size=8, eval_every=1, eval_count=8, sampled_eval_count=4,
                           student_examples=16, student_steps=3, quick=True)


@pytest.fixture()
def own_home(lab_home, tmp_path, monkeypatch):
    """A data dir of its own: the study's labs and runs stay out of the session's."""
    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path / "home"))


def test_the_quick_two_experts_study_runs_every_arm_and_reports_a_verdict(own_home):
    result = run_two_experts(QUICK, progress_print=lambda *_: None)
    assert set(result["curves"]) == set(ARMS)
    for arm, curve in result["curves"].items():
        assert [point["step"] for point in curve] == [0, 1, 2], arm
        assert all(0 <= point[task] <= 1 for point in curve for task in ("addition", "sorting"))
        assert curve[-1]["flops"] > curve[0]["flops"] >= 0
    first, second = result["runs"]["sequential-opd"]
    assert load_config(first)["task_weights"] == "addition=1,sorting=0"
    # Tiny teachers of its own: the standard labs (lab:addition, lab:sorting) are left alone.
    assert load_config(first)["teachers"] == "addition=lab:addition-quick,sorting=lab:sorting-quick"
    assert load_config(second)["student"].endswith("step_1") or "checkpoints" in load_config(second)["student"]
    # Stage one trains on addition only: the sorting teacher is never charged.
    assert load_metrics(first)[-1]["perf/flops_teacher/sorting"] == 0
    assert load_metrics(first)[-1]["perf/flops_teacher/addition"] > 0
    assert isinstance(result["verdict"]["holds"], bool) and "sequential OPD" in result["verdict"]["sentence"]
    assert set(result["verdict"]["sampled"]["rl-both"]) == {"addition", "sorting"}


def test_the_verdict_holds_only_when_sequential_training_forgot_and_opd_kept_both():
    def curve(points):
        return [{"step": step, "flops": step, "addition": add, "sorting": sort} for step, add, sort in points]

    kept = curve([(0, 0.3, 0.3), (2, 0.8, 0.7), (4, 0.9, 0.9)])
    forgot = curve([(0, 0.3, 0.3), (2, 0.9, 0.2), (4, 0.4, 0.9)])
    others = {"sft-mixture": kept, "rl-both": kept}
    assert verdict({"multi-teacher-opd": kept, "sequential-opd": forgot, **others}, {})["holds"]
    assert verdict({"multi-teacher-opd": kept, "sequential-opd": forgot, **others}, {})["forgetting"] == pytest.approx(0.5)
    no_forgetting = curve([(0, 0.3, 0.3), (2, 0.9, 0.2), (4, 0.88, 0.9)])
    assert not verdict({"multi-teacher-opd": kept, "sequential-opd": no_forgetting, **others}, {})["holds"]
    weak = curve([(0, 0.3, 0.3), (2, 0.3, 0.3), (4, 0.35, 0.3)])
    assert not verdict({"multi-teacher-opd": weak, "sequential-opd": forgot, **others}, {})["holds"]
    # Ending below its start on a skill is not keeping it, even when sequential OPD did worse.
    lost = curve([(0, 0.3, 0.5), (2, 0.2, 0.4), (4, 0.25, 0.45)])
    found = verdict({"multi-teacher-opd": lost, "sequential-opd": curve([(0, 0.3, 0.5), (2, 0.4, 0.2), (4, 0.0, 0.6)]),
                     **others}, {})
    assert not found["holds"] and not found["opd_kept_both"] and found["forgetting"] == pytest.approx(0.4)


def test_a_two_experts_report_becomes_its_claims_row():
    from opd_lab.studies.claims import claim_rows

    final = {arm: {"step": 4, "flops": 1e9, "addition": 0.9, "sorting": 0.8} for arm in ARMS}
    data = {"settings": {"eval_count": 100, "steps": 4},
            "verdict": {"final": final, "holds": False, "sentence": "sequential OPD kept addition"}}
    row = next(row for row in claim_rows({"two-experts": data}) if row["claim"] == "merging-experts")
    assert row["verdict"] == "does not hold" and row["scenario"] == "two-experts"
    assert "sequential OPD kept addition" in row["measured"] and "rl-both addition 90.0%" in row["measured"]
    untested = next(row for row in claim_rows({}) if row["claim"] == "merging-experts")
    assert untested["verdict"] == "not tested"
