"""Chat tasks: JSONL rows with instruction checks, the shipped instruction set, the company tasks."""

import json
import random

import pytest

from opd_lab.config import RunConfig
from opd_lab.instructions import validate_check
from opd_lab.tasks import INSTRUCTIONS_FILE, JsonlTask, get_task


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rows_with_checks_verify_by_share_of_checks(tmp_path):
    checks = [{"type": "lowercase"}, {"type": "max_words", "n": 4}]
    path = _write(tmp_path / "chat.jsonl", [{"prompt": f"Describe thing {i}.", "checks": checks} for i in range(30)])
    task = JsonlTask(path)
    problem = task.eval_problems(1)[0]
    assert problem.checks == tuple(checks) and problem.answer == ""
    both = task.verify(problem, "  a small red thing \n")
    assert (both.reward, both.correct, both.parsed) == (1.0, True, "a small red thing")
    half = task.verify(problem, "A small red thing")
    assert (half.reward, half.correct) == (0.5, False)
    assert task.verify(problem, "A Large, Very Red Thing Indeed").reward == 0.0


def test_answer_with_checks_counts_as_one_more_check(tmp_path):
    path = _write(tmp_path / "mixed.jsonl",
                  [{"prompt": f"What is {i}+1? Answer in lowercase.", "answer": str(i + 1),
                    "checks": [{"type": "lowercase"}]} for i in range(30)])
    task = JsonlTask(path, regex=r"(\d+)")
    problem = task.eval_problems(1)[0]
    assert task.verify(problem, f"it is {problem.answer}").correct
    wrong = task.verify(problem, "It is 999")
    assert (wrong.reward, wrong.correct) == (0.0, False)
    assert task.verify(problem, f"It is {problem.answer}").reward == 0.5


def test_prompts_without_verifier_train_but_are_not_evaluated(tmp_path):
    rows = [{"prompt": f"Tell me about river {i}."} for i in range(40)]
    rows += [{"prompt": f"Name lake {i}. Answer in lowercase.", "checks": [{"type": "lowercase"}]} for i in range(20)]
    task = JsonlTask(_write(tmp_path / "opd.jsonl", rows))
    assert task.eval_split and all(p.checks for p in task.eval_split)
    assert sum(not p.checks for p in task.train_split) == 40  # every unverifiable row trains
    plain = next(p for p in task.train_split if not p.checks)
    verdict = task.verify(plain, " Rivers flow. ")
    assert (verdict.reward, verdict.correct, verdict.parsed) == (0.0, False, "Rivers flow.")
    assert len(task.train_problems(8, random.Random(0))) == 8


def test_prompts_only_file_evaluates_on_its_rows(tmp_path):
    task = JsonlTask(_write(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about hill {i}."} for i in range(40)]))
    assert task.eval_split and not any(p.checks for p in task.eval_split)
    held_out = {p.prompt for p in task.eval_split}
    assert held_out.isdisjoint(p.prompt for p in task.train_split)


def test_bad_check_names_its_line(tmp_path):
    rows = [{"prompt": "a", "checks": [{"type": "lowercase"}]}, {"prompt": "b", "answer": "1"},
            {"prompt": "c", "checks": [{"type": "max_words", "n": -2}]}]
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: check 'max_words': n must be a positive integer"):
        JsonlTask(_write(tmp_path / "bad.jsonl", rows))
    with pytest.raises(ValueError, match=r"line 1: unknown check type 'rhyme'"):
        JsonlTask(_write(tmp_path / "bad.jsonl", [{"prompt": "a", "checks": [{"type": "rhyme"}]}]))
    with pytest.raises(ValueError, match=r'line 1: "checks" must be a non-empty list'):
        JsonlTask(_write(tmp_path / "bad.jsonl", [{"prompt": "a", "checks": []}]))
    with pytest.raises(ValueError, match=r"line 1: expected an object with a string \"prompt\""):
        JsonlTask(_write(tmp_path / "bad.jsonl", [{"question": "a", "answer": "1"}]))


def test_shipped_instruction_set():
    rows = [json.loads(line) for line in INSTRUCTIONS_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 200
    assert len({row["prompt"] for row in rows}) == len(rows)
    for row in rows:
        assert 1 <= len(row["checks"]) <= 2
        for check in row["checks"]:
            validate_check(check)
    task = get_task("instructions")
    assert task.name == "instructions" and task.max_new_tokens == 96
    assert len(task.train_split) + len(task.eval_split) == len(rows)
    assert len(task.eval_split) >= 40 and all(p.checks for p in task.eval_split)


def test_company_tasks_and_config():
    qa, docs = get_task("company-qa"), get_task("company-docs")
    assert [p.prompt for p in qa.eval_problems(40)] == [p.prompt for p in docs.eval_problems(40)]
    problem = qa.eval_problems(1)[0]
    assert qa.verify(problem, f"That would be {problem.answer.upper()}.").correct
    assert qa.verify(problem, "I do not know.").reward == 0.0
    train_prompts = {p.prompt for p in docs.train_split}
    assert not train_prompts & {p.prompt for p in docs.eval_split}
    assert any(p.prompt.startswith("Recite") and "internal memo" in p.reference for p in docs.train_split)
    assert not any(p.prompt.startswith("Recite") for p in qa.train_split)
    for name in ("instructions", "company-qa", "company-docs"):
        assert RunConfig(task=name).task == name
