"""Durable files: written so that a process killed at any instant leaves readable files.

Every file the library writes that must survive a crash goes through here: the run
folder (`opd_lab.run_folder`), the lab's summary, recipe and report folders, the
checkpoints' `latest` pointer. Two ways to write:

- **replace**: write a temporary file beside the target, fsync it, rename it over the
  target, fsync the directory (`write_text_atomic`, `write_json_atomic`): readers, even
  after a power loss, see the old file or the new one, never half of one;
- **append**: add JSON lines and fsync (`append_jsonl`); a torn last line (a process
  killed mid-write) is skipped by `read_jsonl`.

A JSON file that exists but cannot be read (edited by hand, a full disk) raises
`UnreadableFile` naming it, so a caller can report that one file and go on.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "numbers.json"
    >>> write_json_atomic(path, {"pi": 3.14})
    >>> read_json(path)["pi"]
    3.14
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


class UnreadableFile(ValueError):
    """A JSON file exists but cannot be read or parsed; the message names it."""


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or a new file inside `path` survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers, even after a crash, see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as JSON to `path` so that readers never see a half-written file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file; `default` if it does not exist.

    Raises:
        UnreadableFile: the file exists but cannot be read or is not valid JSON.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except (OSError, UnicodeDecodeError) as error:
        raise UnreadableFile(f"{path}: cannot be read ({error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UnreadableFile(f"{path}: not valid JSON ({error}); fix or delete the file") from None


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to a JSON-lines file and flush them to disk."""
    with Path(path).open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file. A torn last line (a process killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> None:
    """Keep only rows with `step <= max_step` (used when a run resumes from a checkpoint)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [row for row in read_jsonl(path) if row.get("step", 0) <= max_step]
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
