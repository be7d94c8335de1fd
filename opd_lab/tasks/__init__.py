"""Built-in tasks and the task registry.

`get_task(spec)` accepts a built-in name (`addition`, `addition2`, `addition4`, `sorting`,
`reverse`; for real chat models `instructions`, `company-qa`, `company-docs`) or the path
of a `.jsonl` file (optionally `path.jsonl` with `regex=` given separately).
"""

from __future__ import annotations

from pathlib import Path

from opd_lab.tasks.addition import AdditionTask, CarelessAdditionTask, StrategiesAdditionTask
from opd_lab.tasks.base import Problem, Task, Verdict
from opd_lab.tasks.company import CompanyTask
from opd_lab.tasks.jsonl import JsonlTask
from opd_lab.tasks.retry import RetryAdditionTask
from opd_lab.tasks.reverse import ReverseTask
from opd_lab.tasks.sorting import SortingTask

INSTRUCTIONS_FILE = Path(__file__).resolve().parents[1] / "data" / "instructions.jsonl"  # verifiable instructions
DEFAULT_TASK = "addition"  # what the CLI, the config, the lab and the app use when no task is named
BUILTIN_TASKS = {
    "addition": lambda: AdditionTask(digits=3),
    "addition2": lambda: AdditionTask(digits=2),
    "addition4": lambda: AdditionTask(digits=4),
    "addition6": lambda: AdditionTask(digits=6),
    "addition-strategies": lambda: StrategiesAdditionTask(digits=3),
    "addition-careless": lambda: CarelessAdditionTask(digits=3),
    # Addition with a retract token `!` (opd_lab/tasks/retry.py): slips that can be undone.
    "addition-retry": lambda: RetryAdditionTask(digits=3),
    "addition4-retry": lambda: RetryAdditionTask(digits=4),
    "addition5-retry": lambda: RetryAdditionTask(digits=5),
    "sorting": lambda: SortingTask(),
    "reverse": lambda: ReverseTask(),
    # Real chat models (SmolLM2-135M-Instruct and the like): the prompt is the user message.
    "instructions": lambda: JsonlTask(INSTRUCTIONS_FILE, max_new_tokens=96, held_out_every=4),
    "company-qa": lambda: CompanyTask(documents=False),
    "company-docs": lambda: CompanyTask(documents=True),
}


def get_task(spec: str, regex: str | None = None) -> Task:
    """The task named by `spec`: a built-in name or a path to a JSONL file.

    Raises:
        ValueError: for an unknown name, naming the built-in tasks.
    """
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec]()
    if spec.endswith(".jsonl"):
        return JsonlTask(spec, regex=regex)
    known = ", ".join(sorted(BUILTIN_TASKS))
    raise ValueError(f"unknown task {spec!r}: use one of {known}, or the path of a .jsonl file")


__all__ = ["BUILTIN_TASKS", "DEFAULT_TASK", "INSTRUCTIONS_FILE", "AdditionTask", "CarelessAdditionTask", "CompanyTask",
           "JsonlTask", "Problem", "RetryAdditionTask",
           "ReverseTask", "SortingTask", "StrategiesAdditionTask", "Task", "Verdict",
           "get_task"]
