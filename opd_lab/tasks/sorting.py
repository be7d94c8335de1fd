"""Sort the letters of a short word: a short, chain-of-thought-free task.

    prompt:     "sort:qbxa="
    completion: "abqx"

Unlike addition there is no worked reasoning: the whole answer is the output, so the
teacher's per-token feedback lands directly on answer tokens. The reward is the
exact match (1 or 0).
"""

from __future__ import annotations

import random
import string

from opd_lab.tasks.base import GeneratedTask, Problem, Verdict


class SortingTask(GeneratedTask):
    """Sort `min_length`..`max_length` random lowercase letters alphabetically."""

    name = "sorting"
    description = "sort the letters of a random word"

    def __init__(self, min_length: int = 4, max_length: int = 7):
        if not 1 <= min_length <= max_length <= 20:
            raise ValueError("sorting needs 1 <= min_length <= max_length <= 20")
        self.min_length, self.max_length = min_length, max_length
        self.max_new_tokens = max_length + 2

    def make_problem(self, rng: random.Random) -> Problem:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(self.min_length, self.max_length)))
        answer = "".join(sorted(word))
        return Problem(prompt=f"sort:{word}=", answer=answer, reference=answer)

    def verify(self, problem: Problem, completion: str) -> Verdict:
        text = completion.strip()
        if not text or not text.isalpha():
            return Verdict(reward=0.0, correct=False, parsed=None)
        correct = text == problem.answer
        return Verdict(reward=float(correct), correct=correct, parsed=text)
