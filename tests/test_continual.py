"""The continual-learning study's lab setting (notebook 4, bench/continual_learning.py) end to end on the tiny lab."""

from __future__ import annotations

import json

import pytest

from opd_lab.config import ConfigError
from opd_lab.paths import lab_dir
from opd_lab.studies.continual import ContinualSettings, lab_skills, run_continual, write_new_material


def test_new_material_mixes_in_the_asked_share_of_old_data(tmp_path):
    path, rows = write_new_material(ContinualSettings(new_material_rows=70, old_data_share=0.3), tmp_path / "m.jsonl")
    old = [row for row in rows if "+" in row["prompt"]]
    assert len(rows) == 100 and len(old) == 30
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    with pytest.raises(ValueError, match="old_data_share"):
        ContinualSettings(old_data_share=1.0)


def test_three_stages_are_measured_and_a_rerun_skips_them(lab_home, tmp_path):
    from opd_lab.run_folder import load_config, run_folders

    settings = ContinualSettings(new_material_rows=40, learn_steps=2, recover_steps=2, eval_count=8)
    original = str(lab_dir("addition") / "teacher")
    study = run_continual(settings, out=tmp_path / "cl", original=original, progress_print=lambda *_: None)
    skills = lab_skills(study)
    assert list(skills) == ["before", "finetune", "recover"] and study["finished"]
    assert all(set(scores) == {"old", "new"} and all(0 <= v <= 1 for v in scores.values()) for scores in skills.values())
    recover = load_config(study["stages"]["recover"]["run_dir"])
    assert (recover["method"], recover["teacher"], recover["student"]) == ("opd", original,
                                                                          study["stages"]["finetune"]["model"])
    assert "| original model |" in (tmp_path / "cl" / "study.md").read_text()
    runs_before = len(run_folders())
    again = run_continual(settings, out=tmp_path / "cl", original=original, progress_print=lambda *_: None)
    assert len(run_folders()) == runs_before and lab_skills(again) == skills  # every stage was done: none reruns
    with pytest.raises(ConfigError, match="pick another folder"):
        run_continual("quick", out=tmp_path / "cl")  # the folder holds the lab setting, not SmolLM2's
