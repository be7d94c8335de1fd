"""The task interface: prompts to answer, and a verifier that scores an answer.

A task is the only thing the engine knows about a problem domain. It hands out
training problems and a fixed held-out set, and it verifies a completion. The reward
used for RL training and the accuracy reported by evaluation both come from
`verify`, but they are kept apart: `Verdict.reward` is what RL optimizes (in [0, 1]),
`Verdict.correct` is what evaluation counts.

Example:
    >>> from opd_lab.tasks import get_task
    >>> task = get_task("addition")
    >>> problem = task.eval_problems(1)[0]
    >>> task.verify(problem, problem.reference).correct
    True
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One question. `reference` is a full worked solution when the task knows one;
    `checks` are verifiable instructions the answer must obey (`opd_lab.instructions`)."""

    prompt: str
    answer: str
    reference: str | None = None
    checks: tuple[dict, ...] = ()
    task: str = ""  # in a multi-task run, the run task it was drawn for (its teacher and verifier)


@dataclass(frozen=True)
class Verdict:
    """A scored completion: RL reward in [0, 1], exact correctness, the parsed answer."""

    reward: float
    correct: bool
    parsed: str | None


def is_held_out(key: str, fraction_denominator: int = 10) -> bool:
    """Deterministically assign a problem to the held-out split (1 in `fraction_denominator`).

    A hash of the problem's text decides, so training never sees an evaluation problem,
    whatever seed either side uses.
    """
    digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % fraction_denominator == 0


class Task(ABC):
    """A verifiable task. Subclasses set `name`, `description` and `max_new_tokens`."""

    name: str = "task"
    description: str = ""
    max_new_tokens: int = 64

    @abstractmethod
    def train_problems(self, count: int, rng: random.Random) -> list[Problem]:
        """`count` problems from the training split, drawn with `rng`."""

    @abstractmethod
    def eval_problems(self, count: int, seed: int = 0) -> list[Problem]:
        """The first `count` problems of the fixed held-out split (the same for the same seed)."""

    @abstractmethod
    def verify(self, problem: Problem, completion: str) -> Verdict:
        """Score `completion` (the model's text after the prompt, without special tokens)."""

    def problem_for(self, prompt: str) -> Problem | None:
        """The problem whose prompt is `prompt`, with its true answer, or None when the task
        cannot know it (a prompt typed by hand that is not one of the task's).

        Tools that judge an answer to a free prompt (the app's red pen) verify against
        this, never against a model's answer. This default knows no prompt.
        """
        return None


class GeneratedTask(Task):
    """A task whose problems come from a generator function of a `random.Random`."""

    @abstractmethod
    def make_problem(self, rng: random.Random) -> Problem:
        """One random problem, from either split."""

    def _draw(self, count: int, rng: random.Random, held_out: bool) -> list[Problem]:
        problems, seen = [], set()
        attempts = 0
        while len(problems) < count:
            attempts += 1
            if attempts > 1000 * max(count, 1):
                raise RuntimeError(f"task {self.name!r} cannot produce {count} distinct problems")
            problem = self.make_problem(rng)
            if is_held_out(problem.prompt) != held_out:
                continue
            if held_out:  # the evaluation set has no duplicates
                if problem.prompt in seen:
                    continue
                seen.add(problem.prompt)
            problems.append(problem)
        return problems

    def train_problems(self, count: int, rng: random.Random) -> list[Problem]:
        return self._draw(count, rng, held_out=False)

    def eval_problems(self, count: int, seed: int = 0) -> list[Problem]:
        return self._draw(count, random.Random(10_000 + seed), held_out=True)


class ListedTask(Task):
    """A task whose problems are fixed lists (`train_split`, `eval_split`): a prompt's true
    answer is the listed one."""

    train_split: list[Problem]
    eval_split: list[Problem]

    def problem_for(self, prompt: str) -> Problem | None:
        return next((problem for problem in self.eval_split + self.train_split if problem.prompt == prompt), None)


class StringTransformTask(GeneratedTask):
    """Rewrite a random string of `alphabet` symbols; the reward is the exact match.

    Subclasses set `prefix` (the prompt is `f"{prefix}{text}="`), `alphabet`, and
    `transform`, the answer for a given text. A completion with a symbol outside the
    alphabet is malformed (`parsed` is None).
    """

    prefix: str = ""
    alphabet: str = ""

    def __init__(self, min_length: int, max_length: int):
        if not 1 <= min_length <= max_length <= 20:
            raise ValueError(f"{self.name} needs 1 <= min_length <= max_length <= 20 "
                             f"(got {min_length}, {max_length})")
        self.min_length, self.max_length = min_length, max_length
        self.max_new_tokens = max_length + 2  # the answer, EOS, and a spare

    @abstractmethod
    def transform(self, text: str) -> str:
        """The right answer for `text`."""

    def make_problem(self, rng: random.Random) -> Problem:
        text = "".join(rng.choice(self.alphabet) for _ in range(rng.randint(self.min_length, self.max_length)))
        answer = self.transform(text)
        return Problem(prompt=f"{self.prefix}{text}=", answer=answer, reference=answer)

    def problem_for(self, prompt: str) -> Problem | None:
        """`prefix + text + "="` with `text` in the alphabet and within the lengths: its answer.

        Example:
            >>> from opd_lab.tasks import get_task
            >>> get_task("sorting").problem_for("sort:cab=").answer  # doctest: +SKIP
            'abc'
        """
        if not (isinstance(prompt, str) and prompt.startswith(self.prefix) and prompt.endswith("=")):
            return None
        text = prompt[len(self.prefix):-1]
        if not self.min_length <= len(text) <= self.max_length or any(s not in self.alphabet for s in text):
            return None
        answer = self.transform(text)
        return Problem(prompt=prompt, answer=answer, reference=answer)

    def verify(self, problem: Problem, completion: str) -> Verdict:
        text = completion.strip()
        if not text or any(symbol not in self.alphabet for symbol in text):
            return Verdict(reward=0.0, correct=False, parsed=None)
        correct = text == problem.answer
        return Verdict(reward=float(correct), correct=correct, parsed=text)
