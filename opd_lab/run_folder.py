"""The run folder: every file of a run, its names and its protocol, created, written, read and listed here only.

A run folder (docs/run-folder.md) holds the config, the status, metrics and samples
as JSON lines, the log and the checkpoints (`opd_lab.checkpoints`). Files are written
durably (`opd_lab.files`), so a run killed at any instant leaves readable files behind;
a run's JSON file that is unreadable all the same raises `UnreadableFile` (a `RunError`)
naming it, and listings report such a run and go on.

This module also owns the folder's two small protocols and the metrics schema:

- **stop**: `ask_to_stop` leaves a STOP file; the training loop polls `stop_asked` before
  each step and `clear_stop` removes the file when the run stops, finishes or is
  launched again;
- **log**: the training process writes `log.txt` (`open_log`, `append_log`); readers
  take its end with `log_tail`;
- **metrics**: the phases a step is timed in (`PHASES`, `perf/time_<phase>`) and the
  metrics that are means over rows rather than tokens (`ROW_MEAN_METRICS`).

Processes (launch, stop, resume, the run limit) are `opd_lab.runs`, and who owns a
run is `opd_lab.ownership`; this module never starts a process.

Example:
    >>> run_dir = create_run(RunConfig(method="opd", steps=50))  # doctest: +SKIP
    >>> update_status(run_dir, message="hello")["message"]  # doctest: +SKIP
    'hello'
    >>> rows = load_metrics(run_dir)  # doctest: +SKIP
    >>> [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from opd_lab import files
from opd_lab.jsonl_follow import followed_rows
from opd_lab.config import RUN_ID_MAX_LENGTH, RunConfig, run_id_problem
from opd_lab.files import read_json, read_jsonl, write_json_atomic
from opd_lab.paths import runs_dir

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
LOG_FILE = "log.txt"
STOP_FILE = "STOP"
SFT_DATASET_FILE = "sft_dataset.jsonl"
LAUNCHED_BY_FILE = "launched_by.json"
CHECKPOINTS_DIR = "checkpoints"
LOG_LINES = 30

# The phases of a step timed into `perf/time_<phase>` (seconds of that step; docs/run-folder.md).
PHASES = ("sampling", "teacher", "student", "optimizer")

# Metrics that are means over rows (samples); the others are means over completion
# tokens. Processes of a data-parallel run combine them with these weights.
ROW_MEAN_METRICS = ("train/reward", "train/accuracy", "train/completion_len", "train/zero_advantage_fraction")


class RunError(ValueError):
    """A request about runs that cannot be done (unknown run, bad name, too many runs...)."""


class UnreadableFile(RunError, files.UnreadableFile):
    """A run's JSON file exists but cannot be read or parsed; the message names it."""


def _read_json(path: Path, default: Any = None) -> Any:
    """`files.read_json` for a run's own files: an unreadable one is a `RunError` too."""
    try:
        return read_json(path, default=default)
    except files.UnreadableFile as error:
        raise UnreadableFile(str(error)) from None


HISTORY_PREFIX = "previous-"


def set_aside_history(run_dir: str | os.PathLike) -> Path:
    """Move the run's metrics, samples and checkpoints into a new folder `previous-<time>/`
    of the run (a restart from step 0 keeps what came before, never deletes it); returns it.

    The caller owns the run (`opd_lab.ownership`).
    """
    run_dir = Path(run_dir)
    aside = run_dir / f"{HISTORY_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in range(1000):
        candidate = aside.with_name(aside.name + (f"-{suffix}" if suffix else ""))
        try:
            candidate.mkdir()
            aside = candidate
            break
        except FileExistsError:
            continue
    for name in (METRICS_FILE, SAMPLES_FILE, CHECKPOINTS_DIR):
        if (run_dir / name).exists():
            os.replace(run_dir / name, aside / name)
    files.fsync_directory(run_dir)
    return aside


def load_config(run_dir: str | os.PathLike) -> dict:
    """The run's config as a plain dict."""
    return _read_json(Path(run_dir).expanduser() / CONFIG_FILE, default={})


def record_launcher(run_dir: str | os.PathLike, user: str) -> None:
    """Write who launched the run (the app's logged-in user) to launched_by.json."""
    write_json_atomic(Path(run_dir).expanduser() / LAUNCHED_BY_FILE, {"user": user, "at": time.time()})


def launcher_of(run_dir: str | os.PathLike) -> str | None:
    """Who launched the run from the app with a login, or None (no login, or the command line)."""
    data = _read_json(Path(run_dir).expanduser() / LAUNCHED_BY_FILE, default={})
    user = data.get("user") if isinstance(data, dict) else None
    return user if isinstance(user, str) and user else None


def load_status(run_dir: str | os.PathLike) -> dict:
    """The run's status dict (see docs/run-folder.md)."""
    return _read_json(Path(run_dir).expanduser() / STATUS_FILE, default={})


def load_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All metric rows of a run, in step order.

    Read incrementally (`opd_lab.jsonl_follow`): a second call parses only the rows
    appended since the first, so polling a training run costs the new rows, not the file.
    The rows are shared between callers: read them, do not mutate them.
    """
    rows = followed_rows(Path(run_dir).expanduser() / METRICS_FILE)
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
    """Merge `fields` into the run's status.json (atomically) and return it.

    An unreadable status.json is replaced: only the run's owner writes it, and what it
    writes now is the truth.
    """
    path = Path(run_dir) / STATUS_FILE
    try:
        status = _read_json(path, default={}) or {}
    except UnreadableFile:
        status = {}
    status.update(fields)
    status["updated_at"] = time.time()
    write_json_atomic(path, status)
    return status


# --- stop and log -------------------------------------------------------------------------

def ask_to_stop(run_dir: str | os.PathLike) -> None:
    """Ask the run's training process to stop after its current step (it polls `stop_asked`)."""
    (Path(run_dir) / STOP_FILE).touch()


def stop_asked(run_dir: str | os.PathLike) -> bool:
    """Whether a stop is pending for the run."""
    return (Path(run_dir) / STOP_FILE).exists()


def clear_stop(run_dir: str | os.PathLike) -> None:
    """Forget a pending stop (the run stopped, finished, or is launched again)."""
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


def open_log(run_dir: str | os.PathLike):
    """The run's log.txt opened for appending (a launched process's stdout and stderr)."""
    return (Path(run_dir) / LOG_FILE).open("a", encoding="utf-8")


def append_log(run_dir: str | os.PathLike, text: str) -> None:
    """Add `text` to the run's log as whole lines."""
    with open_log(run_dir) as log:
        log.write(text.rstrip("\n") + "\n")


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
    # tqdm bars redraw with carriage returns; keep each line's last state (splitlines()
    # would split at every "\r" and keep every state).
    shown = [line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")]
    return "\n".join(shown[-lines:])


# --- creation and listing -----------------------------------------------------------------

def create_run(config: RunConfig) -> Path:
    """Make a new run folder (config written, state queued) and return it.

    To own the run from its first instant, use `opd_lab.ownership.create_owned_run`.
    """
    folder = new_run_dir(config)
    write_new_run(folder, config)
    return folder


def new_run_dir(config: RunConfig) -> Path:
    """Reserve a fresh, empty folder for a run of `config`. Listings skip it until
    `write_new_run` has written its config."""
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
    return folder


def write_new_run(folder: Path, config: RunConfig) -> None:
    """Write a new run's status (queued), then its config: the run appears in listings last."""
    update_status(folder, state="queued", step=0, total_steps=config.steps, created_at=time.time(),
                  message="waiting to start", pid=None)
    write_json_atomic(folder / CONFIG_FILE, config.to_dict())


def run_path(run_id: str) -> Path:
    """The folder of `run_id`, refusing names that could leave the runs directory."""
    problem = run_id_problem(run_id, RUN_ID_MAX_LENGTH)
    if problem:
        raise RunError(f"invalid run id {run_id!r}: {problem}")
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
    A config.json that cannot be read gives the state "unreadable" and a message naming it.
    """
    run_dir = Path(run_dir)
    try:
        config = load_config(run_dir)
    except UnreadableFile as error:
        config, status = {}, {**status, "state": "unreadable", "message": str(error)}
    return {
        "id": run_dir.name, "path": str(run_dir), "method": config.get("method"), "task": config.get("task"),
        "state": status.get("state", "unknown"), "step": status.get("step", 0),
        "total_steps": status.get("total_steps", config.get("steps")), "eta_s": status.get("eta_s"),
        "message": status.get("message", ""), "created_at": status.get("created_at", 0),
        "accuracy": last_accuracy(run_dir),
    }


# (size, modification time) of a metrics.jsonl when it was last read, and its last accuracy.
_ACCURACY_CACHE: dict[Path, tuple[tuple[int, int], float | None]] = {}


def last_accuracy(run_dir: str | os.PathLike) -> float | None:
    """The run's latest held-out accuracy, None before its first evaluation.

    metrics.jsonl is parsed again only when its size or modification time changed, so
    listing runs every few seconds (many viewers of the app) does not re-read every file.
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = (stat.st_size, stat.st_mtime_ns)
    cached = _ACCURACY_CACHE.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    evals = [m["eval/accuracy"] for m in load_metrics(run_dir) if "eval/accuracy" in m]
    accuracy = evals[-1] if evals else None
    _ACCURACY_CACHE[path] = (stamp, accuracy)
    return accuracy


def written_by(method: str, sft_source: str) -> str:
    """Who wrote a logged sample's completion: "student" (OPD, RL), "teacher" (SFT on teacher
    samples) or "reference" (SFT on the task's worked solutions). An SFT sample is the data the
    student trained on, not the student's own answer.

    Example:
        >>> written_by("opd", "teacher"), written_by("sft", "teacher_dataset"), written_by("sft", "reference")
        ('student', 'teacher', 'reference')
    """
    if method != "sft":
        return "student"
    return "reference" if sft_source == "reference" else "teacher"


def task_metric(key: str, task: str) -> str:
    """The metrics.jsonl key of `key` restricted to one task of a multi-task run:
    "train/accuracy" -> "train/accuracy/addition". A task file is named by its stem
    (`/data/qa.jsonl` -> "qa")."""
    name = task.rsplit("/", 1)[-1].removesuffix(".jsonl")
    return f"{key}/{name}"
