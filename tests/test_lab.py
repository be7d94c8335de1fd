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


def test_make_student_without_steps_is_the_untrained_model_and_with_steps_learns(lab_pair):
    import random

    from opd_lab.lab import make_student
    from opd_lab.models import LabModelSize, build_lab_model
    from opd_lab.tasks import get_task

    teacher, _, tokenizer = lab_pair
    task = get_task("addition")
    problems = task.train_problems(16, random.Random(0))
    size = LabModelSize(hidden_size=32, layers=1, heads=2, intermediate_size=64)
    untrained = make_student(teacher, tokenizer, task, problems, size, steps=0, seed=3)
    fresh = build_lab_model(size, tokenizer, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(untrained.state_dict().values(), fresh.state_dict().values()))
    trained = make_student(teacher, tokenizer, task, problems, size, steps=3, seed=3)
    assert not all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh.state_dict().values()))
    assert not trained.training


def test_recipe_for_task_applies_the_task_adjustments_then_the_changes():
    assert LabRecipe.for_task("addition") == LabRecipe()
    assert LabRecipe.for_task("sorting").teacher_steps == 4000  # sorting's teacher needs longer
    assert LabRecipe.for_task("sorting", teacher_steps=30).teacher_steps == 30
    with pytest.raises(ValueError, match="unknown task"):
        LabRecipe.for_task("multiplication")


def test_one_naming_rule_for_labs():
    from opd_lab.lab import is_lab_name
    from opd_lab.studies.scenarios import SCENARIOS

    for scenario in SCENARIOS.values():  # every name the CLI can make is a lab name
        assert is_lab_name(scenario.recipe().lab_name) and is_lab_name(scenario.recipe(quick=True).lab_name)
    for bad in ("", "../etc", ".hidden", "a/b", "x" * 65, None, "lab name"):
        assert not is_lab_name(bad)
    with pytest.raises(ValueError, match="cannot name a lab"):
        LabRecipe(name="../up")


def test_dashed_and_broken_labs_are_listed_never_raised(tmp_path, monkeypatch):
    from opd_lab.lab import SUMMARY_FILE, built_lab_names, built_labs, lab_of_run, lab_summary

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path))
    build_lab(LabRecipe(name="baseline-quick", **TINY_RECIPE), progress_print=lambda *_: None)
    (tmp_path / "lab" / "half-built").mkdir()  # no summary: an interrupted copy
    (tmp_path / "lab" / "corrupt").mkdir()
    (tmp_path / "lab" / "corrupt" / SUMMARY_FILE).write_text("{not json")
    (tmp_path / "lab" / "odd").mkdir()
    (tmp_path / "lab" / "odd" / SUMMARY_FILE).write_text('{"task": "addition"}')
    (tmp_path / "lab" / ".building-x-1").mkdir()  # a build in progress is not a lab
    labs = {lab.name: lab for lab in built_labs()}
    assert sorted(labs) == ["baseline-quick", "corrupt", "half-built", "odd"]
    assert built_lab_names() == ["baseline-quick"]
    assert labs["baseline-quick"].task == "addition" and lab_summary("baseline-quick")["task"] == "addition"
    assert labs["baseline-quick"].describe().startswith("baseline-quick (addition): teacher ")
    for name in ("corrupt", "half-built", "odd"):
        line = labs[name].describe()
        assert line.startswith(f"{name}: cannot be used (") and "\n" not in line and lab_summary(name) is None
    assert "not valid JSON" in labs["corrupt"].problem
    assert lab_of_run({"task": "addition", "teacher": "lab:baseline-quick"}) == "baseline-quick"
    assert lab_of_run({"task": "addition", "teacher": "lab"}) == "addition"
    from opd_lab.config import RunConfig
    from opd_lab.preflight import check_run_inputs

    checked = check_run_inputs(RunConfig(teacher="lab:baseline-quick", student="lab:baseline-quick"))
    assert checked.teacher == "lab:baseline-quick"  # preflight takes a dashed lab as it is


def test_extend_to_gate_trains_rounds_until_the_gate_or_the_cap(monkeypatch):
    """The gate logic alone: validation accuracies are scripted, training only counts steps."""
    import opd_lab.lab as lab

    trained = []
    monkeypatch.setattr(lab, "sft_train", lambda model, tok, examples, steps, *rest: trained.append((steps, examples)))
    scripted = iter([0.50, 0.90, 0.985, 0.2])
    monkeypatch.setattr(lab, "validation_accuracy", lambda *args: next(scripted))
    found = lab.extend_to_gate(None, None, None, gate=0.98, steps_done=1200, max_steps=4000, round_steps=400,
                               more_examples=lambda r: f"round {r}", validation=[], batch_size=32,
                               learning_rate=3e-3, seed=0, description="teacher", progress_print=lambda *_: None)
    assert found["passed"] and found["steps"] == 2000 and found["validation_accuracy"] == 0.985
    assert found["checks"] == [[1200, 0.50], [1600, 0.90], [2000, 0.985]]
    assert trained == [(400, "round 1"), (400, "round 2")]

    trained.clear()
    scripted = iter([0.1, 0.2, 0.3])
    capped = lab.extend_to_gate(None, None, None, gate=0.98, steps_done=1200, max_steps=1700, round_steps=400,
                                more_examples=lambda r: r, validation=[], batch_size=32, learning_rate=3e-3, seed=0,
                                description="teacher", progress_print=lambda *_: None)
    assert not capped["passed"] and capped["steps"] == 1700 and [s for s, _ in trained] == [400, 100]

    trained.clear()
    off = lab.extend_to_gate(None, None, None, gate=0.0, steps_done=30, max_steps=30, round_steps=400,
                             more_examples=lambda r: r, validation=[], batch_size=32, learning_rate=3e-3, seed=0,
                             description="teacher")
    assert off == {"gate": 0.0, "passed": True, "steps": 30, "validation_accuracy": None, "checks": []}
    assert trained == []


def test_tiny_build_that_misses_its_gate_trains_to_the_cap_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path))
    recipe = LabRecipe(task="addition", name="gated", **{**TINY_RECIPE, "teacher_gate": 1.0, "teacher_max_steps": 40,
                                                         "gate_round_steps": 5, "gate_eval_count": 8})
    summary = build_lab(recipe, progress_print=lambda *_: None)
    gate = summary["teacher"]["gate"]
    assert summary["teacher"]["steps"] == 40 and not gate["passed"]
    assert [steps for steps, _ in gate["checks"]] == [30, 35, 40]
    assert summary["torch_threads"] == 1  # BUILD_THREADS, whatever this process runs on
    table = format_summary(summary)
    assert "teacher gate (>= 100% on 8 validation problems): FAILED" in table
    assert "on 1 torch thread\n" in table + "\n"
    assert summary["student"]["gate"]["validation_accuracy"] is None  # the tiny recipe's student gate is off


def test_a_build_runs_on_its_thread_count_records_it_and_restores_the_callers(tmp_path, monkeypatch, capsys):
    """Builds train on `BUILD_THREADS` (1) torch threads whatever the machine, so the round-off,
    and so the lab, is the same on every core count; `opd-lab lab build --threads N --force`
    reproduces a lab built on N. The caller's own thread count is untouched."""
    from opd_lab.cli import main
    from opd_lab.lab import BUILD_THREADS

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path))
    caller = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's count, which a build must leave as it found it
    try:
        assert BUILD_THREADS == 1
        assert build_lab(LabRecipe(**TINY_RECIPE), progress_print=lambda *_: None)["torch_threads"] == 1
        assert torch.get_num_threads() == 2
        rebuilt = build_lab(LabRecipe(**TINY_RECIPE), force=True, threads=3, progress_print=lambda *_: None)
        assert rebuilt["torch_threads"] == 3 and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="at least 1 torch thread"):
            build_lab(LabRecipe(**TINY_RECIPE), threads=0)
        assert main(["lab", "build", "--threads", "0"]) == 2  # one line, before anything is built
        assert "at least 1 torch thread" in capsys.readouterr().err
    finally:
        torch.set_num_threads(caller)


def test_a_weak_teacher_on_purpose_has_no_teacher_gate_and_the_strong_ones_keep_theirs():
    """The weak-teacher scenario's teacher is right about half the time by design: a >= 98% gate
    would train it to its cap and print FAILED. Its student keeps its gate."""
    from opd_lab.studies.scenarios import get_scenario

    for recipe in (get_scenario("weak-teacher").recipe(), LabRecipe.for_task("addition-careless")):
        assert recipe.teacher_gate == 0.0 and recipe.student_gate == 0.35
    for name in ("baseline", "no-foundation", "retry"):
        assert get_scenario(name).recipe().teacher_gate == 0.98
