"""Bring your own task: a JSON-lines file of prompts, each with an answer, checks, or neither.

    {"prompt": "Capital of France?", "answer": "Paris"}
    {"prompt": "Name three fruits. Answer in lowercase.", "checks": [{"type": "lowercase"}]}
    {"prompt": "Tell me about otters."}

The file must be UTF-8; every error names the file and the line. A row is verified by:

- its `answer`: exact match by default (after stripping whitespace), or a regular
  expression whose first group (or the whole match, when it has no group) is taken from
  the completion and compared with the answer;
- its `checks`: verifiable instructions (`opd_lab.instructions`, e.g.
  `{"type": "max_words", "n": 20}`), validated when the file is read. The reward is the
  share of checks passed, correct means all passed, and `parsed` is the stripped
  completion. With an answer too, the answer counts as one more check;
- neither: a prompt for on-policy distillation, which needs no verifier; it verifies as
  reward 0, not correct.

One row in `held_out_every` (ten by default) goes to the held-out split, chosen by a hash
of the prompt, among the verifiable rows (all rows when none is verifiable). Every other
row is a training row.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from opd_lab.instructions import score, validate_check
from opd_lab.tasks.base import ListedTask, Problem, Verdict, is_held_out


class JsonlTask(ListedTask):
    """Problems read from a JSONL file, verified by exact match, a regex, or instruction checks."""

    def __init__(self, path: str | Path, regex: str | None = None, max_new_tokens: int = 128,
                 held_out_every: int = 10):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"task file not found: {self.path}")
        self.name = self.path.stem
        self.description = f"prompts and answers from {self.path.name}"
        self.max_new_tokens = max_new_tokens
        try:
            self.pattern = re.compile(regex) if regex else None
        except re.error as error:
            raise ValueError(f"invalid verifier regex {regex!r}: {error}") from None
        problems, self.line_of, self.unanswered, self.keys_seen = self._read(self.path)
        verifiable = [bool(p.checks) or p.prompt not in self.unanswered for p in problems]
        if not any(verifiable):  # a prompts-only file: hold out among all rows
            verifiable = [True] * len(problems)
        held_out = [v and is_held_out(p.prompt, held_out_every) for p, v in zip(problems, verifiable)]
        self.eval_split = [p for p, h in zip(problems, held_out) if h]
        self.train_split = [p for p, h in zip(problems, held_out) if not h]
        if not self.train_split:
            raise ValueError(f"{self.path}: no training rows (need more than a handful of lines)")
        if not self.eval_split:  # tiny files: evaluate on the verifiable training rows rather than on nothing
            self.eval_split = [p for p, v in zip(problems, verifiable) if v]

    @staticmethod
    def _read(path: Path) -> tuple[list[Problem], dict[str, int], set[str], set[str]]:
        """The file's problems, the line each prompt first appears on, the prompts given no
        answer, and every key the rows use (a misspelled "answer" shows there)."""
        problems, line_of, unanswered, keys = [], {}, set(), set()
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                where = f"{path}, line {number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ValueError(f"{where}: not valid UTF-8 (byte {error.start + 1} of the line); "
                                     "save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                    raise ValueError(f'{where}: expected an object with a string "prompt" and an "answer" or "checks"')
                checks = row.get("checks")
                if checks is not None:
                    if not isinstance(checks, list) or not checks:
                        raise ValueError(f'{where}: "checks" must be a non-empty list of checks')
                    for check in checks:
                        try:
                            validate_check(check)
                        except ValueError as error:
                            raise ValueError(f"{where}: {error}") from None
                keys.update(row)
                if row.get("answer") is None:
                    unanswered.add(row["prompt"])
                reference = row.get("reference")
                problems.append(Problem(prompt=row["prompt"],
                                        answer=str(row["answer"]) if row.get("answer") is not None else "",
                                        reference=str(reference) if reference is not None else None,
                                        checks=tuple(checks or ())))
                line_of.setdefault(row["prompt"], number)
        if not problems:
            raise ValueError(f"{path}: the file has no rows")
        return problems, line_of, unanswered, keys

    def train_problems(self, count: int, rng: random.Random) -> list[Problem]:
        return [rng.choice(self.train_split) for _ in range(count)]

    def eval_problems(self, count: int, seed: int = 0) -> list[Problem]:
        return self.eval_split[:count]

    def problem_for(self, prompt: str) -> Problem | None:
        """The file's row of `prompt`, or None when it has neither an answer nor checks (nothing to verify)."""
        problem = super().problem_for(prompt)
        if problem is None or (problem.prompt in self.unanswered and not problem.checks):
            return None
        return problem

    def _answer_verdict(self, problem: Problem, completion: str) -> Verdict:
        if self.pattern is None:
            parsed = completion.strip()
        else:
            match = self.pattern.search(completion)
            if match is None:
                return Verdict(reward=0.0, correct=False, parsed=None)
            parsed = (match.group(1) if self.pattern.groups else match.group(0)).strip()
        correct = parsed == problem.answer.strip()
        return Verdict(reward=float(correct), correct=correct, parsed=parsed)

    def verify(self, problem: Problem, completion: str) -> Verdict:
        has_answer = problem.prompt not in self.unanswered
        if not problem.checks:
            if has_answer:
                return self._answer_verdict(problem, completion)
            return Verdict(reward=0.0, correct=False, parsed=completion.strip())
        outcomes = list(score(completion, list(problem.checks)).passed.values())
        if has_answer:
            outcomes.append(self._answer_verdict(problem, completion).correct)
        return Verdict(reward=sum(outcomes) / len(outcomes), correct=all(outcomes), parsed=completion.strip())
