"""Reading and writing the files of a run folder (see docs/run-folder.md).

Only plain files: JSON for config and status, JSON lines for metrics and samples.
Writes are atomic (write to a temporary file, then rename) or append-only, so a run
killed at any instant leaves readable files behind.

Example:
    >>> rows = load_metrics("~/.cache/opd-lab/runs/opd-addition-0001")  # doctest: +SKIP
    >>> [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
LOG_FILE = "log.txt"
STOP_FILE = "STOP"
SFT_DATASET_FILE = "sft_dataset.jsonl"
CHECKPOINTS_DIR = "checkpoints"


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as JSON to `path` so that readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file; `default` if it does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    with path.open() as handle:
        return json.load(handle)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to a JSON-lines file and flush them to disk."""
    with Path(path).open("a") as handle:
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
    with path.open() as handle:
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        for row in kept:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_config(run_dir: str | os.PathLike) -> dict:
    """The run's config as a plain dict."""
    return read_json(Path(run_dir).expanduser() / CONFIG_FILE, default={})


def load_status(run_dir: str | os.PathLike) -> dict:
    """The run's status dict (see docs/run-folder.md)."""
    return read_json(Path(run_dir).expanduser() / STATUS_FILE, default={})


def load_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All metric rows of a run, in step order."""
    rows = read_jsonl(Path(run_dir).expanduser() / METRICS_FILE)
    return sorted(rows, key=lambda row: row.get("step", 0))


def load_samples(run_dir: str | os.PathLike, step: int | None = None) -> list[dict]:
    """Logged rollouts with per-token records; only those of `step` if given."""
    rows = read_jsonl(Path(run_dir).expanduser() / SAMPLES_FILE)
    if step is not None:
        rows = [row for row in rows if row.get("step") == step]
    return rows


def sample_steps(run_dir: str | os.PathLike) -> list[int]:
    """The steps at which samples were logged, ascending."""
    return sorted({row["step"] for row in load_samples(run_dir) if "step" in row})


def summarize_run(run_dir: str | os.PathLike) -> dict:
    """A run's headline numbers, read from its folder: accuracy at the start, end and
    best evaluation, and what the run spent.

    Returns:
        A dict with ``run``, ``method``, ``steps``, ``accuracy_start``, ``accuracy_end``,
        ``accuracy_best`` (None without evaluations), ``samples``, ``flops`` and
        ``wall_s``; the notebooks show a list of them as a table.
    """
    rows = load_metrics(run_dir)
    accuracies = [row["eval/accuracy"] for row in rows if isinstance(row.get("eval/accuracy"), (int, float))]
    last = rows[-1] if rows else {}
    return {"run": Path(run_dir).name, "method": load_config(run_dir).get("method"), "steps": last.get("step", 0),
            "accuracy_start": accuracies[0] if accuracies else None,
            "accuracy_end": accuracies[-1] if accuracies else None,
            "accuracy_best": max(accuracies) if accuracies else None,
            "samples": last.get("progress/samples"), "flops": last.get("perf/flops"), "wall_s": last.get("perf/wall_s")}
