"""Where opd-lab keeps its data: the lab's models and the run folders.

`$OPD_LAB_HOME` if set, else `~/.cache/opd-lab` (under `$XDG_CACHE_HOME` when that is
set). The CLI's `--data-dir` flag sets `OPD_LAB_HOME` for the process and its children.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "OPD_LAB_HOME"


def data_dir() -> Path:
    """The root data directory (created if missing)."""
    if os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR]).expanduser()
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
        root = cache / "opd-lab"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def lab_dir(task: str) -> Path:
    """The folder of the built-in lab of `task` (teacher/, student/, summary.json)."""
    return data_dir() / "lab" / task


def runs_dir() -> Path:
    """The folder holding one sub-folder per run."""
    path = data_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path
