"""Where opd-lab keeps its data: the lab's models and the run folders; and where the package keeps the
results measured for the repository's claims table (`MEASURED_RESULTS_DIR`, shipped as package data).

`$OPD_LAB_HOME` if set, else `~/.cache/opd-lab` (under `$XDG_CACHE_HOME` when that is
set). The CLI's `--data-dir` flag sets `OPD_LAB_HOME` for the process and its children.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

ENV_VAR = "OPD_LAB_HOME"
# The compare reports and recipe results measured for docs/claims.md, inside the package so
# that an installed wheel's Compare tab lists them too (pyproject.toml's package data).
MEASURED_RESULTS_DIR = Path(__file__).resolve().parent / "data" / "results"


class DataDirError(ValueError):
    """The data directory cannot be created or written; the message names it and what to do."""


def _unusable(root: Path, error: OSError) -> DataDirError:
    reason = "a file is in the way" if root.is_file() else (error.strerror or type(error).__name__)
    return DataDirError(f"data dir {root}: {reason}; choose another with --data-dir or ${ENV_VAR}")


def data_dir() -> Path:
    """The root data directory (created if missing).

    Raises:
        DataDirError: it cannot be created (a file in the way, no permission, /sys...).
    """
    if os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR]).expanduser()
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
        root = cache / "opd-lab"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unusable(root, error) from None
    return root.resolve()


def check_writable(folder: Path) -> None:
    """Raise `DataDirError` unless a file can be created in `folder`."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise _unusable(folder, error) from None


def lab_dir(task: str) -> Path:
    """The folder of the built-in lab of `task` (teacher/, student/, summary.json)."""
    return data_dir() / "lab" / task


def runs_dir() -> Path:
    """The folder holding one sub-folder per run."""
    path = data_dir() / "runs"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unusable(path, error) from None
    return path


def child_environment() -> dict[str, str]:
    """The environment of a process this one starts (a background run, a recipe): the
    same data dir, and this very package first on PYTHONPATH, so the child imports it
    even when it runs from a source checkout."""
    package_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, ENV_VAR: str(data_dir()), "PYTHONPATH": python_path}


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` says a file could not be written for lack of space: ENOSPC or
    EDQUOT, or torch's own wording for a failed write (`torch.save` raises a RuntimeError)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, RuntimeError) and "file write failed" in str(error)


def disk_full_line(error: BaseException | None = None) -> str:
    """The one line that names the data dir when its disk is full.

    Example:
        >>> "no space left" in disk_full_line(OSError(28, "No space left on device"))
        True
    """
    where = f" (writing {error.filename})" if isinstance(error, OSError) and error.filename else ""
    root = Path(os.environ[ENV_VAR]).expanduser() if os.environ.get(ENV_VAR) else None
    try:
        root = root or data_dir()
    except DataDirError:
        pass
    return (f"no space left in the data dir {root}{where}: free some space there (delete old runs) "
            f"or choose another with --data-dir or ${ENV_VAR}")
