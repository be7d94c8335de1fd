"""Runs as background jobs: create, launch detached, list, stop, resume, delete.

A launched run is its own process in its own process session (`start_new_session`),
writing only to its folder, so closing the terminal, the browser or the app never
pauses, kills or loses it; anything that reads the folder reattaches to it.

Example:
    >>> run_dir = create_run(RunConfig(method="opd", steps=50))  # doctest: +SKIP
    >>> launch(run_dir)  # doctest: +SKIP
    >>> [r["id"] for r in list_runs()]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from opd_lab.config import RunConfig
from opd_lab.paths import ENV_VAR, data_dir, runs_dir
from opd_lab.runfiles import (CONFIG_FILE, LOG_FILE, STATUS_FILE, STOP_FILE, load_config, load_metrics,
                              read_json, write_json_atomic)

ACTIVE_STATES = ("queued", "running")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_MAX_ACTIVE_RUNS = 3


class RunError(ValueError):
    """A request about runs that cannot be done (unknown run, bad name, too many runs...)."""


def update_status(run_dir: str | Path, **fields) -> dict:
    """Merge `fields` into the run's status.json (atomically) and return it."""
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path, default={}) or {}
    status.update(fields)
    status["updated_at"] = time.time()
    write_json_atomic(path, status)
    return status


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


def create_run(config: RunConfig) -> Path:
    """Make a new run folder (config written, state queued) and return it."""
    base = config.name or f"{config.method}-{Path(config.task).stem}"
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
    """Active runs that hold a training process: what `launch` counts against its limit."""
    return len([p for p in active_runs() if p != exclude and status_of(p).get("pid")])


def launch(run_dir: str | Path, limit: int | None = None) -> int:
    """Start the run detached in its own process session; returns the pid.

    Raises:
        RunError: if `limit` (default `$OPD_LAB_MAX_RUNS` or 3) runs are already active.
    """
    run_dir = Path(run_dir)
    limit = max_active_runs() if limit is None else limit
    others = running_count(exclude=run_dir)
    if others >= limit:
        raise RunError(f"{others} runs are already running (the limit is {limit}); "
                       "stop one or wait for it to finish")
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
    run_dir = create_run(config)
    try:
        return run_dir, launch(run_dir)
    except RunError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


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
    """One summary dict per run, newest first."""
    rows = []
    for folder in runs_dir().iterdir():
        if not (folder / CONFIG_FILE).exists():
            continue
        status, config = status_of(folder), load_config(folder)
        metrics = load_metrics(folder)
        evals = [m["eval/accuracy"] for m in metrics if "eval/accuracy" in m]
        rows.append({
            "id": folder.name, "path": str(folder), "method": config.get("method"), "task": config.get("task"),
            "state": status.get("state", "unknown"), "step": status.get("step", 0),
            "total_steps": status.get("total_steps", config.get("steps")), "eta_s": status.get("eta_s"),
            "message": status.get("message", ""), "created_at": status.get("created_at", 0),
            "accuracy": evals[-1] if evals else None,
        })
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
