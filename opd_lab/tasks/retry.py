"""Addition with a retract token: slips the writer can see and undo.

The completion is `AdditionTask`'s column-by-column solution, except that a step may be
followed by `!`, meaning "the step I just wrote is wrong; I redo it", and its redo:

    prompt:     "347+285="
    completion: "7+5+0=12;4+8+1=14!4+8+1=13;3+2+1=06;632"

Only the final answer is verified, so a slip that is retracted costs nothing. This is
the regime where on-policy learning should beat behaviour cloning (DAgger's gain grows
with how well the expert recovers from a deviation; Ross, Gordon & Bagnell 2011): the
teacher knows how to recover, but its own samples almost never need to, so SFT on
them shows few recoveries while OPD puts the student in its own slip states and lets
the teacher score them.

The teacher's training data (`retry_solution`) precede some steps with a corrupted
copy and `!`; the corrupted copy is masked out of the loss, so the teacher learns to
retract and redo a wrong step, never to write one. `analyze` reads a completion step
by step (each step judged locally: the column's digits, the carry the last kept step
implies, their sum), for slip rates, recovery rates and the precision of `!`.

Example:
    >>> analyze(Problem("347+285=", "632"), "7+5+0=12;4+8+1=14!4+8+1=13;3+2+1=06;632")
    StepCounts(steps=4, wrong=1, retracted=1, retracted_wrong=1, kept_wrong=0, correct=True)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from opd_lab.tasks.addition import AdditionTask, worked_solution
from opd_lab.tasks.base import Problem

RETRACT = "!"
STEP = re.compile(r"(\d)\+(\d)\+(\d)=(\d\d)")
# A redo step is written at most this many times per column in the training data.
MAX_RETRIES = 1


def column_digits(problem: Problem, digits: int) -> list[tuple[int, int]]:
    """The (x, y) digit pairs of each column of `problem`, units first."""
    a, b = (int(x) for x in problem.prompt.rstrip("=").split("+"))
    return [((a // 10**c) % 10, (b // 10**c) % 10) for c in range(digits)]


def corrupt_step(x: int, y: int, carry: int, rng: random.Random) -> str:
    """A wrong version of the column step `x+y+carry=ss`: the sum off by one, the wrong
    carry-in (with its consistent sum), or the sum's two digits swapped."""
    total = x + y + carry
    kinds = ["off-by-one", "carry"] + (["swap"] if total % 10 != total // 10 else [])
    kind = rng.choice(kinds)
    if kind == "off-by-one":
        wrong = (total + rng.choice((-1, 1))) % 100
        return f"{x}+{y}+{carry}={wrong:02d}"
    if kind == "carry":
        return f"{x}+{y}+{1 - carry}={x + y + 1 - carry:02d}"
    return f"{x}+{y}+{carry}={total % 10}{total // 10}"


def retry_solution(a: int, b: int, digits: int, rng: random.Random, rate: float) -> tuple[str, list[int]]:
    """A worked solution in which each step is, with probability `rate`, first written wrong
    (`corrupt_step`) and retracted with `!`.

    Returns:
        (completion, trained): `trained[i]` is 0 on the characters of a corrupted step
        (the loss is masked there) and 1 elsewhere, the `!` and the redo included.

    Example:
        >>> text, trained = retry_solution(347, 285, 3, random.Random(3), rate=1.0)
        >>> kept = "".join(c for c, t in zip(text, trained) if t)
        >>> text.count("!"), kept.replace("!", "") == worked_solution(347, 285, 3)
        (3, True)
    """
    clean = worked_solution(a, b, digits).split(";")
    pieces: list[tuple[str, int]] = []
    carry = 0
    for column, step in enumerate(clean[:-1]):
        x, y = (a // 10**column) % 10, (b // 10**column) % 10
        if rng.random() < rate:
            pieces += [(corrupt_step(x, y, carry, rng), 0), (RETRACT, 1)]
        pieces += [(step, 1), (";", 1)]
        carry = (x + y + carry) // 10
    pieces.append((clean[-1], 1))
    text = "".join(piece for piece, _ in pieces)
    trained = [flag for piece, flag in pieces for _ in piece]
    return text, trained


@dataclass(frozen=True)
class StepCounts:
    """What a completion did, step by step (attempts: every written step, retracted or kept)."""

    steps: int  # step attempts written
    wrong: int  # attempts that were wrong (a slip)
    retracted: int  # attempts followed by `!`
    retracted_wrong: int  # wrong attempts followed by `!` (a caught slip)
    kept_wrong: int  # wrong attempts kept (an uncaught slip)
    correct: bool  # the final answer is right


def analyze(problem: Problem, completion: str, digits: int = 3) -> StepCounts:
    """Judge each step attempt of `completion` locally.

    An attempt is right when it has the column's digits, the carry the last kept step
    implies (0 for the units) and their two-digit sum; anything else (including text that
    is not a step) is wrong. The attempt before each `!` is retracted; the last attempt
    of a column is kept and sets the next carry. The final answer is checked against
    `problem.answer`.
    """
    segments = completion.strip().split(";")
    answer, columns = segments[-1], segments[:-1]
    pairs = column_digits(problem, digits)
    steps = wrong = retracted = retracted_wrong = kept_wrong = 0
    carry = 0
    for column, segment in enumerate(columns):
        attempts = segment.split(RETRACT)
        for index, attempt in enumerate(attempts):
            match = STEP.fullmatch(attempt)
            right = bool(match) and column < len(pairs) and (int(match[1]), int(match[2])) == pairs[column] \
                and int(match[3]) == carry and int(match[4]) == int(match[1]) + int(match[2]) + int(match[3])
            kept = index == len(attempts) - 1
            steps += 1
            wrong += not right
            retracted += not kept
            retracted_wrong += (not kept) and not right
            kept_wrong += kept and not right
            if kept:
                carry = int(match[4]) // 10 if match else carry
    correct = answer.strip().isdigit() and bool(columns) and int(answer) == int(problem.answer)
    return StepCounts(steps, wrong, retracted, retracted_wrong, kept_wrong, correct)


def retry_metrics(problems: list[Problem], completions: list[str], digits: int = 3) -> dict[str, float]:
    """Slip and recovery statistics of a set of completions (e.g. a model's samples).

    - `slip_rate`: wrong attempts per attempt;
    - `recovery_rate`: P(correct answer | at least one wrong attempt) (nan without slips);
    - `retract_precision`: share of `!` that follow a wrong attempt (nan without `!`);
    - `retract_recall`: share of wrong attempts followed by `!` (nan without slips);
    - `retract_rate`: `!` per attempt.
    """
    counts = [analyze(p, c, digits) for p, c in zip(problems, completions)]
    attempts = sum(c.steps for c in counts)
    wrong = sum(c.wrong for c in counts)
    retracted = sum(c.retracted for c in counts)
    slipped = [c for c in counts if c.wrong]
    nan = float("nan")
    return {"slip_rate": wrong / attempts if attempts else nan,
            "recovery_rate": sum(c.correct for c in slipped) / len(slipped) if slipped else nan,
            "retract_precision": sum(c.retracted_wrong for c in counts) / retracted if retracted else nan,
            "retract_recall": sum(c.retracted_wrong for c in counts) / wrong if wrong else nan,
            "retract_rate": retracted / attempts if attempts else nan}


class RetryAdditionTask(AdditionTask):
    """Addition with written carries and a retract token `!`; only the final answer is verified.

    Its problems' `reference` is the clean worked solution (the base student's and the
    evaluation's); `training_example` gives the teacher's data with retracted slips.
    """

    def __init__(self, digits: int = 3, retry_rate: float = 0.3):
        super().__init__(digits)
        self.name = "addition-retry" if digits == 3 else f"addition{digits}-retry"
        self.description = f"{digits}-digit addition with written carries and a retract token `!`"
        self.retry_rate = retry_rate
        # Room for MAX_RETRIES + 2 retracted steps (9 characters each) beyond a clean solution.
        self.max_new_tokens += 9 * (MAX_RETRIES + 2)

    def training_example(self, problem: Problem, rng: random.Random, rate: float | None = None
                         ) -> tuple[str, str, list[int]]:
        """(prompt, completion with retracted slips, per-character loss mask) for `problem`."""
        a, b = (int(x) for x in problem.prompt.rstrip("=").split("+"))
        text, trained = retry_solution(a, b, self.digits, rng, self.retry_rate if rate is None else rate)
        return problem.prompt, text, trained

    def sample_metrics(self, problems: list[Problem], completions: list[str]) -> dict[str, float]:
        """Evaluation metrics of sampled completions beyond accuracy (`retry_metrics`)."""
        return retry_metrics(problems, completions, self.digits)
