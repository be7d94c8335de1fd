"""Bring your own task: a JSON-lines file of `{"prompt": ..., "answer": ...}` rows.

The file must be UTF-8; every error names the file and the line. The verifier is exact match by default (after stripping whitespace), or a regular
expression: its first group (or the whole match, when it has no group) is taken from
the completion and compared with the answer. One row in ten goes to the held-out
split, chosen by a hash of the prompt.

    {"prompt": "Capital of France?", "answer": "Paris"}
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from opd_lab.tasks.base import Problem, Task, Verdict, is_held_out


class JsonlTask(Task):
    """Problems read from a JSONL file, verified by exact match or a regex."""

    def __init__(self, path: str | Path, regex: str | None = None, max_new_tokens: int = 128):
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
        problems, self.line_of = self._read(self.path)
        self.eval_split = [p for p in problems if is_held_out(p.prompt)]
        self.train_split = [p for p in problems if not is_held_out(p.prompt)]
        if not self.train_split:
            raise ValueError(f"{self.path}: no training rows (need more than a handful of lines)")
        if not self.eval_split:  # tiny files: evaluate on the training rows rather than on nothing
            self.eval_split = list(self.train_split)

    @staticmethod
    def _read(path: Path) -> tuple[list[Problem], dict[str, int]]:
        """The file's problems, and the line each prompt first appears on."""
        problems, line_of = [], {}
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid UTF-8 (byte {error.start + 1} of the line); "
                                     "save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or "answer" not in row:
                    raise ValueError(
                        f'{path}, line {number}: expected an object with a string "prompt" and an "answer"'
                    )
                reference = row.get("reference")
                problems.append(Problem(prompt=row["prompt"], answer=str(row["answer"]),
                                        reference=str(reference) if reference is not None else None))
                line_of.setdefault(row["prompt"], number)
        if not problems:
            raise ValueError(f"{path}: the file has no rows")
        return problems, line_of

    def train_problems(self, count: int, rng: random.Random) -> list[Problem]:
        return [rng.choice(self.train_split) for _ in range(count)]

    def eval_problems(self, count: int, seed: int = 0) -> list[Problem]:
        return self.eval_split[:count]

    def verify(self, problem: Problem, completion: str) -> Verdict:
        if self.pattern is None:
            parsed = completion.strip()
        else:
            match = self.pattern.search(completion)
            if match is None:
                return Verdict(reward=0.0, correct=False, parsed=None)
            parsed = (match.group(1) if self.pattern.groups else match.group(0)).strip()
        correct = parsed == problem.answer.strip()
        return Verdict(reward=float(correct), correct=correct, parsed=parsed)
