"""What the app's tabs share: validated lookups of runs and checkpoints, small
formatters, and a small cache of loaded models.

The browser only ever names things: a run id (checked by `opd_lab.run_folder.run_path`, which
refuses anything that could leave the runs folder), a checkpoint name (checked against
`opd_lab.checkpoints.checkpoint_dirs` of that run) or a built lab task (checked against
the lab folders). No filesystem path typed in a browser is ever opened.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from opd_lab import run_folder, runs
from opd_lab.checkpoints import checkpoint_dirs


def run_dir_of(run_id: str) -> Path:
    """The folder of a run named by the browser.

    Raises:
        runs.RunError: for an empty, malformed (e.g. "../../etc") or unknown run id.
    """
    if not run_id:
        raise runs.RunError("choose a run first")
    return run_folder.run_path(run_id)


def run_ids() -> list[str]:
    """Every run id, newest first."""
    return [row["id"] for row in runs.list_runs()]


def checkpoint_of(run_id: str, name: str) -> Path:
    """The checkpoint folder `name` (e.g. "step_000050") of a run, validated."""
    run_dir = run_dir_of(run_id)
    for checkpoint in checkpoint_dirs(run_dir):
        if checkpoint.name == name:
            return checkpoint
    raise runs.RunError(f"run {run_id} has no checkpoint named {name!r}")


def format_duration(seconds) -> str:
    """"1h 02m", "3m 05s", "42s"; "-" when unknown."""
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


def format_accuracy(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def error_text(error: Exception) -> str:
    """An error as a Markdown line the user can read."""
    return f"**Error:** {error}"


class ModelCache:
    """A small least-recently-used cache of loaded models, shared by the app's users.

    Loading a model takes seconds (a real one, minutes); the Playground scores many
    prompts with the same pair, so the last few loads are kept.

    Example:
        >>> cache = ModelCache(capacity=2)
        >>> cache.get(("lab", "addition"), lambda: "model")
        'model'
    """

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, load: Callable):
        with self._lock:  # one load at a time: two users asking for one model load it once
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return value

    def __len__(self) -> int:
        return len(self._items)
