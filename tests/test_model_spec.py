"""The grammar of model names (`opd_lab.model_spec`) and the callers that read it."""

from __future__ import annotations

import pytest

from opd_lab import model_spec
from opd_lab.model_spec import SpecError, parse


def test_each_form_of_the_grammar_has_its_kind_and_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path / "home"))
    model = tmp_path / "my-model"
    model.mkdir()
    run = tmp_path / "home" / "runs" / "opd-addition-1203"
    run.mkdir(parents=True)
    cases = {
        "lab": ("lab", "", "", ""), "lab:no-foundation": ("lab", "no-foundation", "", ""),
        "smollm2": ("smollm2", "", "", ""),
        "run:opd-1": ("checkpoint", "", "opd-1", ""), "run:opd-1/step_000050": ("checkpoint", "", "opd-1", "step_000050"),
        str(tmp_path / "weights.Q4.gguf"): ("gguf", "", "", ""),
        str(model): ("folder", "", "", ""), str(run): ("run_folder", "", "opd-addition-1203", ""),
        "HuggingFaceTB/SmolLM2-135M-Instruct": ("hub", "", "", ""),
        str(tmp_path / "not-there"): ("folder", "", "", ""),  # a missing path is still a path, not a hub id
        "models/x/model.safetensors": ("folder", "", "", ""), "org-only": ("hub", "", "", ""),
    }
    for spec, (kind, lab, run_id, checkpoint) in cases.items():
        parsed = parse(spec)
        assert (parsed.kind, parsed.lab, parsed.run_id, parsed.checkpoint) == (kind, lab, run_id, checkpoint), spec
    assert [s for s in cases if parse(s).is_local] == [str(tmp_path / "weights.Q4.gguf"), str(model), str(run),
                                                       str(tmp_path / "not-there"), "models/x/model.safetensors"]


def test_lab_names_and_specs_round_trip():
    assert parse("lab").lab_name("sorting") == "sorting"
    assert parse("lab:baseline-quick").lab_name("sorting") == "baseline-quick"
    assert parse("smollm2").lab_name("addition") is None
    assert parse(model_spec.lab_spec("weak-teacher")).lab == "weak-teacher"
    assert parse(model_spec.checkpoint_spec("r1", "step_000002")).checkpoint == "step_000002"
    assert model_spec.checkpoint_spec("r1") == "run:r1"


@pytest.mark.parametrize("spec", ["", "  ", "run:", "run:/step_1", "run:r1/latest", "run:r1/../../etc"])
def test_broken_specs_say_how_to_write_them(spec):
    with pytest.raises(SpecError):
        parse(spec)


def test_callers_read_the_same_grammar(tmp_path, monkeypatch):
    from opd_lab.config import RunConfig
    from opd_lab.models import ModelLoadError, resolve_spec
    from opd_lab.pair_check import task_of_specs

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local-model").mkdir()
    config = RunConfig(teacher="local-model", student="lab:baseline").with_absolute_paths()
    assert config.teacher == str(tmp_path / "local-model") and config.student == "lab:baseline"
    assert RunConfig(teacher="smollm2", student="lab").with_absolute_paths().teacher == "smollm2"
    with pytest.raises(ModelLoadError, match="--scenario baseline"):
        resolve_spec("lab:baseline", "teacher", "addition")
    with pytest.raises(ModelLoadError, match="--task sorting"):
        resolve_spec("lab", "teacher", "sorting")
    with pytest.raises(ModelLoadError, match="checkpoints.load_student"):
        resolve_spec("run:r1/step_000001", "student", "addition")
    assert resolve_spec("org/model", "student", "addition") == "org/model"
    assert task_of_specs("lab:never-built", "lab") == "addition"  # the default task
