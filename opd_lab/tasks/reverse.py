"""Write a number's digits backwards: a quick second skill for continual-learning lessons.

    prompt:     "reverse:09305="
    completion: "50390"

It uses only digits, which an addition model already knows how to read and write, so
a lab model picks it up in a few hundred SFT steps; and fine-tuning on it makes the
model forget addition, which notebook 4 then recovers with on-policy distillation.
The reward is the exact match (1 or 0).
"""

from __future__ import annotations

import string

from opd_lab.tasks.base import StringTransformTask


class ReverseTask(StringTransformTask):
    """Reverse a string of `min_length`..`max_length` random digits."""

    name = "reverse"
    description = "write a number's digits backwards"
    prefix = "reverse:"
    alphabet = string.digits

    def __init__(self, min_length: int = 3, max_length: int = 6):
        super().__init__(min_length, max_length)

    def transform(self, text: str) -> str:
        return text[::-1]
