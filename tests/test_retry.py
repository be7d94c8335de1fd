"""The retry task: the verifier, and slip / retract / recovery counts on hand-written completions."""

import math
import random

import pytest

from opd_lab.tasks import get_task
from opd_lab.tasks.addition import worked_solution
from opd_lab.tasks.base import Problem
from opd_lab.tasks.retry import analyze, corrupt_step, retry_metrics, retry_solution

PROBLEM = Problem("347+285=", "632")  # columns 7+5+0=12, 4+8+1=13, 3+2+1=06


def test_the_verifier_checks_only_the_final_answer():
    task = get_task("addition-retry")
    assert task.verify(PROBLEM, "7+5+0=12;4+8+1=13;3+2+1=06;632").correct
    assert task.verify(PROBLEM, "7+5+0=12;4+8+1=14!4+8+1=13;3+2+1=06;632").correct
    assert task.verify(PROBLEM, "7+5+0=99;nonsense;632").correct  # the steps are not graded
    assert not task.verify(PROBLEM, "7+5+0=12;4+8+1=13;3+2+1=06;631").correct
    assert not task.verify(PROBLEM, "7+5+0=12;4+8+1=13;3+2+1=06;631!632").correct  # an answer cannot be retracted
    assert not task.verify(PROBLEM, "632").correct


@pytest.mark.parametrize("completion, expected", [
    # clean: 3 right steps, nothing retracted
    ("7+5+0=12;4+8+1=13;3+2+1=06;632", (3, 0, 0, 0, 0, True)),
    # a caught slip: the wrong 14 is retracted and redone
    ("7+5+0=12;4+8+1=14!4+8+1=13;3+2+1=06;632", (4, 1, 1, 1, 0, True)),
    # an uncaught slip: 14 kept; the next step's carry 1 follows from the kept 14, so it is right locally
    ("7+5+0=12;4+8+1=14;3+2+1=06;642", (3, 1, 0, 0, 1, False)),
    # a false alarm: a right step retracted, then written again
    ("7+5+0=12!7+5+0=12;4+8+1=13;3+2+1=06;632", (4, 0, 1, 0, 0, True)),
    # a wrong carry-in retracted, then a wrong redo (digits swapped) kept; its tens digit 3 is the next carry,
    # so the next step (carry 1) is wrong too: one caught and two uncaught slips, the answer still right
    ("7+5+0=12;4+8+0=12!4+8+1=31;3+2+1=06;632", (4, 3, 1, 1, 2, True)),
    # a kept slip whose wrong carry propagates: 7+5+0=02 implies carry 0, so 4+8+0=12 is right locally
    ("7+5+0=02;4+8+0=12;3+2+1=06;622", (3, 1, 0, 0, 1, False)),
    # garbage is a wrong step
    ("7+5+0=12;abc;3+2+1=06;632", (3, 1, 0, 0, 1, True)),
])
def test_step_counts_on_hand_written_completions(completion, expected):
    counts = analyze(PROBLEM, completion)
    assert (counts.steps, counts.wrong, counts.retracted, counts.retracted_wrong, counts.kept_wrong,
            counts.correct) == expected


def test_retry_metrics_over_a_set():
    completions = ["7+5+0=12;4+8+1=13;3+2+1=06;632",  # clean
                   "7+5+0=12;4+8+1=14!4+8+1=13;3+2+1=06;632",  # slip, caught, right
                   "7+5+0=12;4+8+1=14;3+2+1=06;642",  # slip, kept, wrong
                   "7+5+0=12!7+5+0=12;4+8+1=13;3+2+1=06;632"]  # false alarm
    found = retry_metrics([PROBLEM] * 4, completions)
    assert found["slip_rate"] == pytest.approx(2 / 14)
    assert found["recovery_rate"] == pytest.approx(1 / 2)  # of the two completions with a slip, one is right
    assert found["retract_precision"] == pytest.approx(1 / 2)  # two `!`, one after a wrong step
    assert found["retract_recall"] == pytest.approx(1 / 2)  # two slips, one retracted
    assert found["retract_rate"] == pytest.approx(2 / 14)
    clean = retry_metrics([PROBLEM], ["7+5+0=12;4+8+1=13;3+2+1=06;632"])
    assert clean["slip_rate"] == 0 and math.isnan(clean["recovery_rate"]) and math.isnan(clean["retract_precision"])


def test_corrupted_steps_are_always_wrong_and_masked_out_of_the_training_text():
    rng = random.Random(0)
    for _ in range(300):
        x, y, carry = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 1)
        assert corrupt_step(x, y, carry, rng) != f"{x}+{y}+{carry}={x + y + carry:02d}"
    task = get_task("addition-retry")
    for problem in task.train_problems(50, random.Random(1)):
        a, b = (int(v) for v in problem.prompt.rstrip("=").split("+"))
        text, trained = retry_solution(a, b, 3, random.Random(a), rate=0.5)
        assert len(trained) == len(text) and task.verify(problem, text).correct
        counts = analyze(problem, text)
        assert counts.kept_wrong == 0 and counts.wrong == counts.retracted == counts.retracted_wrong
        kept = "".join(c for c, t in zip(text, trained) if t)
        assert kept.replace("!", "") == worked_solution(a, b, 3)  # only the corrupted steps are masked
        assert len(text) <= task.max_new_tokens


def test_retry_gates_on_a_tiny_lab_and_masked_training(tmp_path, monkeypatch):
    """The build measures and prints the four gates (a tiny teacher fails them: the numbers are still there)."""
    import torch

    from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab, format_summary, trained_token_mask
    from opd_lab.generation import rollouts_from_texts
    from opd_lab.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    rollouts = rollouts_from_texts(tokenizer, ["1+2=", "34+5="], ["ab!c", "xyz"])
    mask = trained_token_mask(rollouts, [[0, 0, 1, 1], None])
    start = rollouts.prompt_length - 1
    assert mask[0, start : start + 5].tolist() == [0, 0, 1, 1, 1]  # a, b off; !, c and EOS on
    assert torch.equal(mask[1], rollouts.target_mask_BT[1])

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path))
    summary = build_lab(LabRecipe(task="addition-retry", name="retry-tiny", student_retry_fraction=0.5,
                                  **TINY_RECIPE), progress_print=lambda *_: None)
    gates = summary["retry_gates"]
    assert set(gates) >= {"clean_accuracy", "p_retract_after_wrong", "p_retract_after_right", "sampled_retract_rate"}
    assert all(0 <= gates[name]["value"] <= 1 for name in ("clean_accuracy", "p_retract_after_wrong"))
    assert not gates["passed"]  # 30 steps of a 32-wide model cannot pass (a) clean accuracy >= 98%
    text = format_summary(summary)
    assert "(b) P(!) after a forced wrong step" in text and "FAILED" in text


def test_step_prefixes_put_a_wrong_or_right_step_last():
    from opd_lab.retry_gates import step_prefixes

    rng = random.Random(0)
    for _ in range(50):
        right, wrong = step_prefixes(PROBLEM, 3, rng)
        assert analyze(PROBLEM, right + ";0").wrong == 0
        last = analyze(PROBLEM, wrong + ";0")
        assert last.wrong == 1 and last.kept_wrong == 1
