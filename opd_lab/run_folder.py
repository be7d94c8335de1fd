"""The run folder: every file of a run, created, written, read and listed here only.

A run folder (docs/run-folder.md) holds the config, the status, metrics and samples
as JSON lines, the log and the checkpoints (`opd_lab.checkpoints`). Only plain files:
writes are atomic (write to a temporary file, then rename) or append-only, so a run
killed at any instant leaves readable files behind. Processes (launch, stop, resume,
the run limit) are `opd_lab.runs`; this module never starts one.

Example:
    >>> run_dir = create_run(RunConfig(method="opd", steps=50))  # doctest: +SKIP
    >>> update_status(run_dir, message="hello")["message"]  # doctest: +SKIP
    'hello'
    >>> rows = load_metrics(run_dir)  # doctest: +SKIP
    >>> [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from opd_lab.config import RunConfig
from opd_lab.paths import runs_dir

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
LOG_FILE = "log.txt"
STOP_FILE = "STOP"
SFT_DATASET_FILE = "sft_dataset.jsonl"
CHECKPOINTS_DIR = "checkpoints"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOG_LINES = 30


class RunError(ValueError):
    """A request about runs that cannot be done (unknown run, bad name, too many runs...)."""


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


# --- status -----------------------------------------------------------------------------

def update_status(run_dir: str | Path, **fields) -> dict:
    """Merge `fields` into the run's status.json (atomically) and return it."""
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path, default={}) or {}
    status.update(fields)
    status["updated_at"] = time.time()
    write_json_atomic(path, status)
    return status


def log_tail(run_dir: str | os.PathLike, lines: int = LOG_LINES) -> str:
    """The last `lines` lines of the run's log.txt ("" if none yet)."""
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return ""
    with path.open("rb") as handle:  # read only the end: logs of long runs grow large
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 200 * lines))
        text = handle.read().decode("utf-8", errors="replace")
    # tqdm bars redraw with carriage returns; keep each line's last state.
    shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(shown[-lines:])


# --- creation and listing -----------------------------------------------------------------

def create_run(config: RunConfig) -> Path:
    """Make a new run folder (config written, state queued) and return it."""
    base = config.run_name()
    stamp = time.strftime("%m%d-%H%M%S")
    root = runs_dir()
    for suffix in range(1000):
        run_id = f"{base}-{stamp}" + (f"-{suffix}" if suffix else "")
        folder = root / run_id
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise RunError(f"cannot find a free run id for {base!r}")
    write_json_atomic(folder / CONFIG_FILE, config.to_dict())
    update_status(folder, state="queued", step=0, total_steps=config.steps, created_at=time.time(),
                  message="waiting to start", pid=None)
    return folder


def run_path(run_id: str) -> Path:
    """The folder of `run_id`, refusing names that could leave the runs directory."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise RunError(f"invalid run id {run_id!r}: use letters, digits, '.', '-' and '_'")
    root = runs_dir()
    path = (root / run_id).resolve()
    if path.parent != root:
        raise RunError(f"invalid run id {run_id!r}")
    if not (path / CONFIG_FILE).exists():
        raise RunError(f"no run named {run_id!r} in {root}")
    return path


def run_folders() -> list[Path]:
    """Every run folder (one holding a config.json), in name order."""
    return [folder for folder in sorted(runs_dir().iterdir()) if (folder / CONFIG_FILE).exists()]


def run_row(run_dir: str | os.PathLike, status: dict) -> dict:
    """One run's summary for tables: id, method, task, state, step, ETA, message, accuracy.

    Args:
        status: the run's status (`runs.status_of` also notices a vanished process).
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    evals = [m["eval/accuracy"] for m in load_metrics(run_dir) if "eval/accuracy" in m]
    return {
        "id": run_dir.name, "path": str(run_dir), "method": config.get("method"), "task": config.get("task"),
        "state": status.get("state", "unknown"), "step": status.get("step", 0),
        "total_steps": status.get("total_steps", config.get("steps")), "eta_s": status.get("eta_s"),
        "message": status.get("message", ""), "created_at": status.get("created_at", 0),
        "accuracy": evals[-1] if evals else None,
    }
