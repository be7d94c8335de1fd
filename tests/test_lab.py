"""The built-in lab: cached, reproducible, loadable as real transformers models."""

import pytest
import torch

from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab, format_summary
from opd_lab.models import load_model
from opd_lab.paths import lab_dir


def test_lab_is_cached_and_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path))
    recipe = LabRecipe(task="sorting", **TINY_RECIPE)
    first = build_lab(recipe, progress_print=lambda *_: None)
    weights = {k: v.clone() for k, v in load_model("lab", "student", "sorting")[0].state_dict().items()}
    messages = []
    again = build_lab(recipe, progress_print=messages.append)
    assert again == first and "Reusing" in messages[0]
    rebuilt = build_lab(recipe, force=True, progress_print=lambda *_: None)
    assert rebuilt["teacher"]["accuracy"] == first["teacher"]["accuracy"]
    assert rebuilt["student"]["accuracy"] == first["student"]["accuracy"]
    for name, value in load_model("lab", "student", "sorting")[0].state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0)
    assert not list(lab_dir("sorting").parent.glob(".building-*"))  # no staging folder left behind
    table = format_summary(first)
    assert "teacher" in table and "base student" in table and "accuracy" in table


def test_lab_models_are_transformers_llamas(lab_home):
    teacher, tokenizer = load_model("lab", "teacher", "addition")
    student, _ = load_model("lab", "student", "addition")
    assert type(teacher).__name__ == type(student).__name__ == "LlamaForCausalLM"
    assert teacher.config.vocab_size == len(tokenizer)


def test_bad_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        LabRecipe(task="chess")
    with pytest.raises(ValueError, match="teacher_steps"):
        LabRecipe(teacher_steps=0)
