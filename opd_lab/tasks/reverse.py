"""Write a number's digits backwards: a quick second skill for continual-learning lessons.

    prompt:     "reverse:09305="
    completion: "50390"

It uses only digits, which an addition model already knows how to read and write, so
a lab model picks it up in a few hundred SFT steps; and fine-tuning on it alone makes
the model forget addition, which notebook 4 then recovers with on-policy distillation.
The reward is the exact match (1 or 0).
"""

from __future__ import annotations

import random
import string

from opd_lab.tasks.base import GeneratedTask, Problem, Verdict


class ReverseTask(GeneratedTask):
    """Reverse a string of `min_length`..`max_length` random digits."""

    name = "reverse"
    description = "write a number's digits backwards"

    def __init__(self, min_length: int = 3, max_length: int = 6):
        if not 1 <= min_length <= max_length <= 20:
            raise ValueError("reverse needs 1 <= min_length <= max_length <= 20")
        self.min_length, self.max_length = min_length, max_length
        self.max_new_tokens = max_length + 2

    def make_problem(self, rng: random.Random) -> Problem:
        digits = "".join(rng.choice(string.digits) for _ in range(rng.randint(self.min_length, self.max_length)))
        return Problem(prompt=f"reverse:{digits}=", answer=digits[::-1], reference=digits[::-1])

    def verify(self, problem: Problem, completion: str) -> Verdict:
        text = completion.strip()
        if not text or not text.isdigit():
            return Verdict(reward=0.0, correct=False, parsed=None)
        correct = text == problem.answer
        return Verdict(reward=float(correct), correct=correct, parsed=text)
