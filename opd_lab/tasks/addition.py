"""Multi-digit addition written out column by column, with carries.

The completion is a chain of thought the teacher knows and the student must learn:
one step per column from the right, `a+b+carry=ss` with the two-digit column sum
(its tens digit is the next carry), then the answer after the last `;`.

    prompt:     "347+285="
    completion: "7+5+0=12;4+8+1=13;3+2+1=06;632"

The reward is 1 for the right final answer and 0 otherwise; the steps are not graded.
"""

from __future__ import annotations

import random

from opd_lab.tasks.base import GeneratedTask, Problem, Verdict


def worked_solution(a: int, b: int, digits: int) -> str:
    """The reference chain of thought for `a + b`, both with at most `digits` digits."""
    steps, carry = [], 0
    for column in range(digits):
        x, y = (a // 10**column) % 10, (b // 10**column) % 10
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total:02d}")
        carry = total // 10
    return ";".join(steps + [str(a + b)])


class AdditionTask(GeneratedTask):
    """Add two `digits`-digit numbers (no leading zeros), showing each column's carry."""

    def __init__(self, digits: int = 3):
        if not 1 <= digits <= 9:
            raise ValueError(f"addition digits must be between 1 and 9, got {digits}")
        self.digits = digits
        self.name = "addition" if digits == 3 else f"addition{digits}"
        self.description = f"{digits}-digit addition with written carries"
        # Each column step is 8 characters plus a separator; the answer and EOS follow.
        self.max_new_tokens = 9 * digits + digits + 3

    def make_problem(self, rng: random.Random) -> Problem:
        low = 10 ** (self.digits - 1) if self.digits > 1 else 0
        a, b = rng.randint(low, 10**self.digits - 1), rng.randint(low, 10**self.digits - 1)
        return Problem(prompt=f"{a}+{b}=", answer=str(a + b), reference=worked_solution(a, b, self.digits))

    def problem_for(self, prompt: str) -> Problem | None:
        """`"a+b="` with `a` and `b` of at most `digits` digits: the problem, with `a + b` as its answer.

            >>> AdditionTask().problem_for("347+285=").answer
            '632'
            >>> AdditionTask().problem_for("what is 2+2?") is None
            True
        """
        if not isinstance(prompt, str) or not prompt.endswith("="):
            return None
        terms = prompt[:-1].split("+")
        if len(terms) != 2 or not all(t.isascii() and t.isdigit() and len(t) <= self.digits for t in terms):
            return None
        a, b = (int(t) for t in terms)
        return Problem(prompt=prompt, answer=str(a + b), reference=worked_solution(a, b, self.digits))

    def verify(self, problem: Problem, completion: str) -> Verdict:
        final = completion.strip().rsplit(";", 1)[-1].strip()
        if ";" not in completion or not final.isdigit():
            return Verdict(reward=0.0, correct=False, parsed=None)
        correct = int(final) == int(problem.answer)
        return Verdict(reward=float(correct), correct=correct, parsed=final)


def running_total_solution(a: int, b: int, digits: int) -> str:
    """A second strategy for `a + b`: add `b`'s place values to `a` one at a time, units first.

        >>> running_total_solution(347, 285, 3)
        '347+5=352;352+80=432;432+200=632;632'
    """
    steps, total = [], a
    for column in range(digits):
        digit = (b // 10**column) % 10
        part = digit * 10**column
        steps.append(f"{total}+{digit}{'0' * column}={total + part}")
        total += part
    return ";".join(steps + [str(a + b)])


class StrategiesAdditionTask(AdditionTask):
    """Addition whose worked solutions use one of two strategies, drawn at random per problem.

    The references alternate between the column method of `AdditionTask` and the running
    total of `running_total_solution`, so a teacher trained on them has two valid ways to
    answer and its samples are multi-modal: the setting in which forward KL (SFT on the
    teacher's samples) must cover both modes while reverse KL may keep to one. Only the
    final answer is verified, so either strategy scores.
    """

    STRATEGIES = {"columns": worked_solution, "running-total": running_total_solution}

    def __init__(self, digits: int = 3):
        super().__init__(digits)
        self.name = "addition-strategies" if digits == 3 else f"addition{digits}-strategies"
        self.description = f"{digits}-digit addition, worked by columns or by a running total"
        # A running-total step is at most (digits + 1) + 1 + digits + 1 + (digits + 1) + 1 characters.
        self.max_new_tokens = digits * (3 * digits + 5) + digits + 3

    def make_problem(self, rng: random.Random) -> Problem:
        problem = super().make_problem(rng)
        a, b = (int(x) for x in problem.prompt.rstrip("=").split("+"))
        solve = self.STRATEGIES[rng.choice(sorted(self.STRATEGIES))]
        return Problem(prompt=problem.prompt, answer=problem.answer, reference=solve(a, b, self.digits))


class CarelessAdditionTask(AdditionTask):
    """Addition whose worked solutions forget the carry into the last column: a weak teacher's data.

    A teacher trained on these references learns a systematic slip: it writes `+0` as the
    carry of the leftmost column, so it is wrong whenever the column before carries. The
    verifier still checks the true sum, so RL with the reward can learn what the teacher
    cannot teach (the seed's limitation: on-policy distillation needs a strong teacher).

        >>> CarelessAdditionTask().make_problem(random.Random(1)).reference  # 237 + 682: the last carry is lost
        '7+2+0=09;3+8+0=11;2+6+0=08;819'
    """

    def __init__(self, digits: int = 3):
        super().__init__(digits)
        self.name = "addition-careless" if digits == 3 else f"addition{digits}-careless"
        self.description = f"{digits}-digit addition; the references forget the last carry"

    def make_problem(self, rng: random.Random) -> Problem:
        problem = super().make_problem(rng)
        a, b = (int(x) for x in problem.prompt.rstrip("=").split("+"))
        top = 10 ** (self.digits - 1)
        wrong = careless_sum(a, b, self.digits)
        steps = worked_solution(a % top, b % top, self.digits - 1).split(";")[:-1]
        x, y = a // top, b // top
        steps.append(f"{x}+{y}+0={x + y:02d}")
        return Problem(prompt=problem.prompt, answer=problem.answer, reference=";".join(steps + [str(wrong)]))


def careless_sum(a: int, b: int, digits: int) -> int:
    """`a + b` with the carry into the leftmost column dropped."""
    top = 10 ** (digits - 1)
    return (a // top + b // top) * top + (a % top + b % top) % top
