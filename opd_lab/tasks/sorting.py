"""Sort the letters of a short word: a short, chain-of-thought-free task.

    prompt:     "sort:qbxa="
    completion: "abqx"

Unlike addition there is no worked reasoning: the whole answer is the output, so the
teacher's per-token feedback lands directly on answer tokens. The reward is the
exact match (1 or 0).
"""

from __future__ import annotations

import string

from opd_lab.tasks.base import StringTransformTask


class SortingTask(StringTransformTask):
    """Sort `min_length`..`max_length` random lowercase letters alphabetically."""

    name = "sorting"
    description = "sort the letters of a random word"
    prefix = "sort:"
    alphabet = string.ascii_lowercase

    def __init__(self, min_length: int = 4, max_length: int = 7):
        super().__init__(min_length, max_length)

    def transform(self, text: str) -> str:
        return "".join(sorted(text))
