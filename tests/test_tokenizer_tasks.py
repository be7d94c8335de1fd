import random

import pytest

from opd_lab.tasks import AdditionTask, JsonlTask, SortingTask, get_task
from opd_lab.tasks.addition import worked_solution
from opd_lab.tasks.base import Problem
from opd_lab.tokenizer import build_char_tokenizer


def test_tokenizer_round_trip_and_save(tmp_path):
    tokenizer = build_char_tokenizer()
    text = "347+285=7+5+0=12;4+8+1=13\nsort: zyx ~!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == text
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.padding_side == "left"
    assert tokenizer("é")["input_ids"] == [tokenizer.unk_token_id]


def test_addition_reference_is_correct_and_verified():
    task = AdditionTask(digits=3)
    assert worked_solution(347, 285, 3) == "7+5+0=12;4+8+1=13;3+2+1=06;632"
    for problem in task.eval_problems(50):
        a, b = map(int, problem.prompt.rstrip("=").split("+"))
        assert problem.answer == str(a + b)
        verdict = task.verify(problem, problem.reference)
        assert verdict.correct and verdict.reward == 1.0


@pytest.mark.parametrize("completion, correct, parsed", [
    ("7+5+0=12;4+8+1=13;3+2+1=06;632", True, "632"),
    ("7+5+0=12;4+8+1=13;3+2+1=06;633", False, "633"),
    ("632", False, None),                 # no worked steps
    ("7+5+0=12;4+8+1=13;3+2+1=06;", False, None),
    ("garbage;6x2", False, None),
    ("", False, None),
])
def test_addition_verifier(completion, correct, parsed):
    verdict = AdditionTask().verify(Problem("347+285=", "632"), completion)
    assert verdict.correct is correct
    assert verdict.reward == float(correct)
    assert verdict.parsed == parsed


def test_sorting_verifier():
    task = SortingTask()
    problem = task.train_problems(1, random.Random(1))[0]
    assert task.verify(problem, problem.answer).correct
    assert not task.verify(problem, problem.answer[::-1] + "z").correct
    assert task.verify(problem, "12!").parsed is None
    assert task.verify(problem, "").reward == 0.0


def test_reverse_verifier():
    task = get_task("reverse")
    problem = Problem("reverse:09305=", "50390")
    assert task.verify(problem, "50390").correct and task.verify(problem, " 50390 ").reward == 1.0
    assert not task.verify(problem, "09305").correct  # the digits forwards
    assert not task.verify(problem, "5039").correct  # one digit short
    assert task.verify(problem, "5o39o").parsed is None and task.verify(problem, "").reward == 0.0
    drawn = task.train_problems(50, random.Random(0))
    assert all(p.reference == p.answer == p.prompt[len("reverse:"):-1][::-1] for p in drawn)
    assert all(3 <= len(p.answer) <= 6 for p in drawn)


def test_held_out_split_is_disjoint_from_training():
    task = get_task("addition")
    held_out = {p.prompt for p in task.eval_problems(300)}
    training = {p.prompt for p in task.train_problems(3000, random.Random(0))}
    assert len(held_out) == 300
    assert not held_out & training
    assert [p.prompt for p in task.eval_problems(20)] == [p.prompt for p in task.eval_problems(20)]


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'multiplication'.*addition"):
        get_task("multiplication")


def test_jsonl_task_exact_and_regex(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(f'{{"prompt": "q{i}?", "answer": "{i}"}}' for i in range(40)) + "\n")
    task = get_task(str(path))
    problem = task.eval_problems(1)[0]
    assert task.verify(problem, f" {problem.answer} ").correct
    assert not task.verify(problem, "nope").correct
    regex_task = JsonlTask(path, regex=r"answer: (\d+)")
    assert regex_task.verify(problem, f"thinking... answer: {problem.answer}.").correct
    verdict = regex_task.verify(problem, "no answer here")
    assert verdict.parsed is None and not verdict.correct
    assert len(task.train_problems(5, random.Random(0))) == 5


def test_jsonl_malformed_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n')
    with pytest.raises(ValueError, match="line 2"):
        get_task(str(path))
    path.write_text('{"prompt": "a", "answer": "1"}\n["not", "an", "object"]\n')
    with pytest.raises(ValueError, match="line 2"):
        get_task(str(path))


def test_jsonl_missing_file_and_bad_regex(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        get_task(str(tmp_path / "missing.jsonl"))
    path = tmp_path / "ok.jsonl"
    path.write_text("\n".join(f'{{"prompt": "q{i}", "answer": "{i}"}}' for i in range(20)))
    with pytest.raises(ValueError, match="invalid verifier regex"):
        JsonlTask(path, regex="(unclosed")
