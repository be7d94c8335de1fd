"""opd_lab.studies: one study shape (a folder, named stages, resume by stage) and its registry."""

from __future__ import annotations

import json
import shutil

import pytest

from opd_lab.config import ConfigError
from opd_lab.studies import STUDIES, compare_study, study
from opd_lab.studies.stages import STATE_FILE, StudyState


def quiet(*_):
    pass


def test_a_study_folder_skips_finished_stages_and_records_parts(tmp_path):
    state = StudyState.open(tmp_path / "s", study="comparison", setting="baseline", settings={"seeds": 3})
    calls = []
    first = state.run_stage("lab", lambda: calls.append("lab") or {"teacher": 0.9}, progress_print=quiet)
    assert first["teacher"] == 0.9 and "seconds" in first
    state.record_part("sweep", "sweep-rl-lr0.001", "/runs/sweep-rl")
    again = StudyState.open(tmp_path / "s", study="comparison", setting="baseline", settings={"seeds": 3})
    assert again.run_stage("lab", lambda: calls.append("again") or {"teacher": 0.1}, progress_print=quiet) == first
    assert calls == ["lab"]
    assert again.parts("sweep") == {"sweep-rl-lr0.001": "/runs/sweep-rl"} and again.done("sweep") is None
    saved = json.loads((tmp_path / "s" / STATE_FILE).read_text())
    (tmp_path / "s" / STATE_FILE).write_text(json.dumps({**saved, "seconds": 100.0}))  # an earlier pass's time
    third = StudyState.open(tmp_path / "s", study="comparison", setting="baseline", settings={"seeds": 3})
    assert 100.0 <= third.elapsed() < 160 and json.loads((tmp_path / "s" / STATE_FILE).read_text())["seconds"] >= 100
    saved = json.loads((tmp_path / "s" / STATE_FILE).read_text())
    assert saved["study"] == "comparison" and saved["stages"]["lab"]["teacher"] == 0.9 and "finished" not in saved
    again.finish("# done\n", progress_print=quiet)
    assert (tmp_path / "s" / "study.md").read_text() == "# done\n"
    assert json.loads((tmp_path / "s" / STATE_FILE).read_text())["finished"]
    with pytest.raises(ConfigError, match="pick another folder"):
        StudyState.open(tmp_path / "s", study="comparison", setting="noisy-teacher")
    with pytest.raises(ConfigError, match="pick another folder"):
        StudyState.open(tmp_path / "s", study="handoff", setting="baseline")


def test_the_registry_names_every_study_and_its_entry_loads():
    assert set(STUDIES) == {"compare", "handoff", "two-experts", "continual-learning", "prune-distill"}
    from opd_lab.studies.comparison import run_compare
    from opd_lab.studies.continual import run_recipe_stages

    assert study("compare").load() is run_compare
    assert study("continual-learning").load() is run_recipe_stages
    assert all(callable(entry.load()) for entry in STUDIES.values())
    from opd_lab.studies.comparison import CompareSettings

    assert study("compare").settings_class() is CompareSettings
    with pytest.raises(TypeError, match="recipe file"):
        study("prune-distill").settings_class()
    assert compare_study("two-experts").name == "two-experts"
    assert compare_study("baseline", "handoff").name == "handoff"
    assert compare_study("baseline").name == "compare"
    with pytest.raises(KeyError, match="no study"):
        study("nope")


def test_a_comparison_refuses_a_folder_made_with_other_settings(tmp_path):
    from opd_lab.studies.comparison import CompareSettings, open_comparison

    open_comparison(tmp_path / "r", CompareSettings(scenario="baseline", quick=True, seeds=2, workers=2))
    open_comparison(tmp_path / "r", CompareSettings(scenario="baseline", quick=True, seeds=2, workers=1))  # workers: fine
    with pytest.raises(ConfigError, match="other settings"):
        open_comparison(tmp_path / "r", CompareSettings(scenario="baseline", quick=True, seeds=3))


@pytest.mark.slow
def test_a_killed_comparison_resumes_by_stage(home, tmp_path):
    """A quick comparison; then its folder is put back as a kill after the sweep and one
    reported run would leave it. The rerun with the same --out trains only the two
    missing runs, and its report reads every run from the runs folder."""
    from opd_lab import report, run_folder
    from opd_lab.studies.comparison import CompareSettings, run_compare
    from opd_lab.studies.comparison_report import STOPPED_FILE

    settings = CompareSettings(scenario="baseline", quick=True, seeds=1, workers=2)
    out = run_compare(settings, out=tmp_path / "r", progress_print=quiet)
    first = json.loads((out / "report.json").read_text())
    state = json.loads((out / STATE_FILE).read_text())
    assert set(state["stages"]) == {"lab", "sweep", "runs"} and state["finished"]
    assert len(state["parts"]["sweep"]) == 3 * len(first["settings"]["learning_rates"])
    reported = {run["run"]: run["path"] for runs in first["runs"].values() for run in runs}
    assert len(reported) == 3 and all(run_folder.run_path(name).is_dir() for name in reported)
    assert all(str(report.run_path(out, {"run": name, "path": path})) == path for name, path in reported.items())

    # the kill: after the sweep and the first reported run, before the report
    kept_name, kept_path = sorted(state["parts"]["runs"].items())[0]
    for name, path in state["parts"]["runs"].items():
        if name != kept_name:
            shutil.rmtree(path)
    state["parts"]["runs"] = {kept_name: kept_path}
    del state["stages"]["runs"], state["finished"]
    (out / STATE_FILE).write_text(json.dumps(state))
    for name in ("report.json", "report.md", "curves.html"):
        (out / name).unlink()
    before = {folder.name for folder in run_folder.run_folders()}

    lines = []
    run_compare(settings, out=out, progress_print=lines.append)
    trained = {folder.name for folder in run_folder.run_folders()} - before
    assert len(trained) == 2 and all(name.startswith("cmp-") for name in trained)  # no sweep run, not the kept run
    assert any("stage lab: already done" in line for line in lines)
    assert any("stage sweep: already done" in line for line in lines)
    assert any("1 of 3 runs already finished" in line for line in lines)
    second = json.loads((out / "report.json").read_text())
    assert second["sweep"] == first["sweep"] and second["learning_rates"] == first["learning_rates"]
    paths = {run["path"] for runs in second["runs"].values() for run in runs}
    assert kept_path in paths and {str(run_folder.run_path(name)) for name in trained} <= paths
    assert second["verdict"]["sentence"] in (out / "report.md").read_text()
    assert not (out / STOPPED_FILE).exists() and json.loads((out / STATE_FILE).read_text())["finished"]
