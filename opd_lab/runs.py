"""Runs as background processes: launch detached, stop, resume, delete, and the run limit.

A launched run is its own process in its own process session (`start_new_session`),
writing only to its folder (`opd_lab.run_folder`), so closing the terminal, the
browser or the app never pauses, kills or loses it; anything that reads the folder
reattaches to it. At most `max_active_runs()` runs train at once: `check_capacity` is
the one place that says so, for the CLI and the app alike.

Example:
    >>> run_dir, pid = start_run(RunConfig(method="opd", steps=50))  # doctest: +SKIP
    >>> [r["id"] for r in list_runs()]  # doctest: +SKIP
    >>> request_stop(run_dir)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from opd_lab.config import RunConfig
from opd_lab.paths import ENV_VAR, data_dir, runs_dir
from opd_lab.run_folder import (LOG_FILE, STATUS_FILE, STOP_FILE, RunError, create_run, read_json, run_folders,
                                run_row, update_status)

ACTIVE_STATES = ("queued", "running")
DEFAULT_MAX_ACTIVE_RUNS = 3
LAUNCH_LOCK_FILE = ".launch.lock"

__all__ = ["ACTIVE_STATES", "RunError", "active_runs", "check_capacity", "delete_run", "format_runs", "launch",
           "list_runs", "max_active_runs", "request_stop", "resume", "running_count", "start_run", "start_runs",
           "status_of", "threads_per_run"]


def _pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{int(pid)}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def status_of(run_dir: str | Path) -> dict:
    """The run's status; a run whose process vanished (e.g. `kill -9`) is marked failed."""
    run_dir = Path(run_dir)
    status = read_json(run_dir / STATUS_FILE, default={}) or {}
    if status.get("state") in ACTIVE_STATES and status.get("pid") and not _pid_alive(status["pid"]):
        status = update_status(run_dir, state="failed", pid=None,
                               message="the training process ended unexpectedly; resume to continue "
                                       "from the last checkpoint")
    return status


def active_runs() -> list[Path]:
    """Runs that are queued or running now."""
    return [p for p in sorted(runs_dir().iterdir()) if (p / STATUS_FILE).exists()
            and status_of(p).get("state") in ACTIVE_STATES]


def max_active_runs() -> int:
    return int(os.environ.get("OPD_LAB_MAX_RUNS", DEFAULT_MAX_ACTIVE_RUNS))


def threads_per_run(limit: int) -> int:
    """CPU threads for each background run, so that `limit` runs at once share the cores.

    Two torch processes that each take every core slow each other down by an order
    of magnitude (measured on 2 cores: two lab runs at once took 108 s each instead of
    7 s alone; with one thread each, 9 s each). A user's own OMP_NUM_THREADS wins.
    """
    return max(1, (os.cpu_count() or 1) // max(1, limit))


def running_count(exclude: Path | None = None) -> int:
    """Active runs that hold a training process: what the run limit counts."""
    return len([p for p in active_runs() if p != exclude and status_of(p).get("pid")])


def check_capacity(new_runs: int = 1, limit: int | None = None, exclude: Path | None = None) -> None:
    """The run limit, checked once for everyone: room for `new_runs` more training processes?

    Raises:
        RunError: when `running_count() + new_runs` would pass `limit` (default
            `$OPD_LAB_MAX_RUNS` or 3), with a message saying what to do.
    """
    limit = max_active_runs() if limit is None else limit
    others = running_count(exclude=exclude)
    if others + new_runs > limit:
        starting = "" if new_runs == 1 else f"this starts {new_runs} runs, "
        raise RunError(f"{starting}{others} runs are already running (the limit is {limit}, "
                       "`opd-lab app --max-runs` or $OPD_LAB_MAX_RUNS); stop one or wait for it to finish")


@contextlib.contextmanager
def _launch_lock():
    """Serialize capacity checks and launches across processes (the app and CLIs)."""
    with open(data_dir() / LAUNCH_LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def launch(run_dir: str | Path, limit: int | None = None) -> int:
    """Start the run detached in its own process session; returns the pid.

    Raises:
        RunError: if `limit` (default `$OPD_LAB_MAX_RUNS` or 3) runs are already active.
    """
    run_dir = Path(run_dir)
    limit = max_active_runs() if limit is None else limit
    with _launch_lock():
        check_capacity(1, limit, exclude=run_dir)
        return _spawn(run_dir, limit)


def _spawn(run_dir: Path, limit: int) -> int:
    # The child imports this very package, even when it is run from a source checkout.
    package_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, ENV_VAR: str(data_dir()), "PYTHONPATH": python_path}
    env.setdefault("OMP_NUM_THREADS", str(threads_per_run(limit)))
    with (run_dir / LOG_FILE).open("a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "opd_lab", "train", "--run-dir", str(run_dir), "--no-progress"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=str(run_dir),
        )
    update_status(run_dir, state="queued", pid=process.pid, message="starting")
    # Reap the child when it exits so it never lingers as a zombie of this process.
    threading.Thread(target=process.wait, daemon=True).start()
    return process.pid


def start_run(config: RunConfig) -> tuple[Path, int]:
    """Create a run folder for `config` and launch it: `(run folder, pid)`.

    Raises:
        RunError: when the run limit is reached; the new folder is removed, so a
            refused launch leaves no never-started run behind.
    """
    return start_runs([config])[0]


def start_runs(configs: list[RunConfig]) -> list[tuple[Path, int]]:
    """Create and launch several runs, all or none, under one capacity check.

    Returns:
        `(run folder, pid)` per config, in order.
    Raises:
        RunError: when the run limit leaves no room for all of them; no folder is
            left behind and nothing is started.
    """
    limit = max_active_runs()
    with _launch_lock():
        check_capacity(len(configs), limit)
        run_dirs = [create_run(config) for config in configs]
        return [(run_dir, _spawn(run_dir, limit)) for run_dir in run_dirs]


def request_stop(run_dir: str | Path) -> str:
    """Ask a run to stop after its current step (with a checkpoint); returns a message."""
    run_dir = Path(run_dir)
    status = status_of(run_dir)
    if status.get("state") not in ACTIVE_STATES:
        return f"run {run_dir.name} is not running ({status.get('state')})"
    (run_dir / STOP_FILE).touch()
    update_status(run_dir, message="stopping after the current step")
    return f"stop requested for {run_dir.name}"


def resume(run_dir: str | Path) -> int:
    """Relaunch a stopped or failed run from its last checkpoint; returns the pid."""
    run_dir = Path(run_dir)
    status = status_of(run_dir)
    if status.get("state") in ACTIVE_STATES:
        raise RunError(f"run {run_dir.name} is already {status['state']}")
    if status.get("state") == "finished":
        raise RunError(f"run {run_dir.name} has finished all its steps")
    return launch(run_dir)


def delete_run(run_dir: str | Path) -> None:
    """Remove a run folder; refuses while the run is active."""
    run_dir = Path(run_dir)
    if status_of(run_dir).get("state") in ACTIVE_STATES:
        raise RunError(f"run {run_dir.name} is still running: stop it first")
    shutil.rmtree(run_dir)


def list_runs() -> list[dict]:
    """One summary dict per run (`run_folder.run_row`), newest first."""
    rows = [run_row(folder, status_of(folder)) for folder in run_folders()]
    return sorted(rows, key=lambda row: row["created_at"], reverse=True)


def format_runs(rows: list[dict]) -> str:
    """A text table of `list_runs()` for the terminal."""
    if not rows:
        return f"no runs in {runs_dir()}"
    lines = [f"{'run':<36}{'method':<7}{'state':<10}{'step':>11}{'accuracy':>10}  message"]
    for row in rows:
        accuracy = f"{row['accuracy']:.1%}" if row["accuracy"] is not None else "-"
        lines.append(f"{row['id']:<36}{row['method'] or '?':<7}{row['state']:<10}"
                     f"{row['step']:>5}/{row['total_steps']:<5}{accuracy:>10}  {row['message']}")
    return "\n".join(lines)
