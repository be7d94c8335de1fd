"""The continual-learning recipe (notebook 4, bench/continual_learning.py) end to end on the tiny lab."""

from __future__ import annotations

import json

import pytest

from opd_lab.continual import ContinualSettings, run_continual_learning, write_new_material
from opd_lab.paths import lab_dir


def test_new_material_mixes_in_the_asked_share_of_old_data(tmp_path):
    path, rows = write_new_material(ContinualSettings(new_material_rows=70, old_data_share=0.3), tmp_path / "m.jsonl")
    old = [row for row in rows if "+" in row["prompt"]]
    assert len(rows) == 100 and len(old) == 30
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    with pytest.raises(ValueError, match="old_data_share"):
        ContinualSettings(old_data_share=1.0)


def test_three_stages_are_measured(lab_home):
    settings = ContinualSettings(new_material_rows=40, learn_steps=2, recover_steps=2, eval_count=8)
    result = run_continual_learning(settings, original=str(lab_dir("addition") / "teacher"))
    assert list(result["stages"]) == ["original", "after_learning", "after_recovery"]
    assert all(set(skills) == {"old", "new"} for skills in result["stages"].values())
