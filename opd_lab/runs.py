"""Runs as background processes: launch detached, stop, resume, delete, and the run limit.

A launched run is its own process in its own process session (`start_new_session`),
writing only to its folder (`opd_lab.run_folder`), so closing the terminal, the
browser or the app never pauses, kills or loses it; anything that reads the folder
reattaches to it. Each run has one owner (`opd_lab.ownership`): the training process
holds the run's lock for its whole life, and launch, resume and delete take it or
refuse. A run's state is derived from that lock: "queued" or "running" in status.json
while nobody holds it means the process is gone (`kill -9`, a crash), and the run is
marked failed. At most `max_active_runs()` runs train at once: `check_capacity` is
the one place that says so, and every launch counts and claims under one data-dir
lock, so two launches at the same instant cannot both take the last place.

The queue (a room of attendees sharing one machine): `submit_run` starts a run when
there is room and nobody waits before it, and otherwise leaves its folder in the state
"waiting". `start_waiting` (the app calls it every few seconds) launches the oldest
waiting runs through `launch`, so they take the same locks and the same limit as any
launch. The queue is the folders themselves: it survives an app restart.

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
import time
from pathlib import Path

from opd_lab import launcher, ownership
from opd_lab.config import RunConfig
from opd_lab.paths import data_dir, runs_dir
from opd_lab.run_folder import (LOG_FILE, RunError, UnreadableFile, ask_to_stop, clear_stop, load_status, run_folders,
                                record_launcher, run_row, set_aside_history, stop_asked, update_status)

ACTIVE_STATES = ("queued", "running")
WAITING = "waiting"  # in the queue for a free place under the run limit; no process yet
DEFAULT_MAX_ACTIVE_RUNS = 3
MAX_RUNS_VAR = "OPD_LAB_MAX_RUNS"
LAUNCH_LOCK_FILE = ".launch.lock"

__all__ = ["ACTIVE_STATES", "WAITING", "RunError", "active_runs", "check_capacity", "delete_run", "format_runs",
           "is_active", "launch", "list_runs", "max_active_runs", "queue_positions", "request_stop", "resume", "running_count",
           "claim_if_room", "start_run", "start_runs", "start_waiting", "submit_resume", "status_of", "submit_run", "threads_per_run", "waiting_runs"]


def _owner_alive(run_dir: Path, status: dict) -> bool:
    """Whether the run has a live owner: its lock is held, or (a folder from before lock
    files) the recorded process, identified by pid and start time, still runs."""
    if ownership.has_lock_file(run_dir):
        return ownership.is_owned(run_dir)
    return ownership.process_alive(status.get("pid"), status.get("pid_started"))


def status_of(run_dir: str | Path) -> dict:
    """The run's status, its state checked against its owner.

    A run "queued" or "running" without a live owner (`kill -9`, a crash, a launch that
    never started) is marked failed. A pending stop shows in the message. An unreadable
    status.json gives the state "unreadable" and a message naming the file.
    """
    run_dir = Path(run_dir)
    try:
        status = load_status(run_dir) or {}
    except UnreadableFile as error:
        return {"state": "unreadable", "message": str(error)}
    if status.get("state") not in ACTIVE_STATES:
        return status
    if _owner_alive(run_dir, status):
        if stop_asked(run_dir):
            status = {**status, "message": "stop requested: stopping after the current step"}
        return status
    try:  # mark it failed as its owner, so no launch starting now is overwritten
        with ownership.take(run_dir, wait_s=0):
            status = load_status(run_dir) or {}
            if status.get("state") in ACTIVE_STATES:
                message = ("the training process ended unexpectedly; resume to continue from the last checkpoint"
                           if status.get("pid") else "the run never started; resume to start it")
                try:
                    status = update_status(run_dir, state="failed", pid=None, message=message)
                except OSError as error:  # a full disk: say what it is, even though the file keeps "running"
                    status = {**status, "state": "failed", "pid": None, "eta_s": None,
                              "message": f"the training process ended and its status cannot be written "
                                         f"(disk full in {data_dir()}?): {error.strerror or error}"}
    except RunError:  # someone owns it now (a launch)
        pass
    except OSError as error:  # no lock can be taken either: the folder is read-only or the disk is full
        if not ownership.is_owned(run_dir):
            status = {**status, "state": "failed", "pid": None, "eta_s": None,
                      "message": f"the training process ended and its folder cannot be written "
                                 f"(disk full in {data_dir()}?): {error.strerror or error}"}
    return status


def _active(run_dir: Path) -> bool:
    """Whether a process trains (or is starting) the run, whatever its status file says."""
    try:
        status = load_status(run_dir) or {}
    except UnreadableFile:
        status = {}
    return _owner_alive(run_dir, status)


def is_active(run_dir: str | Path) -> bool:
    """Whether a process trains (or is starting) the run."""
    return _active(Path(run_dir))


def active_runs() -> list[Path]:
    """Runs that are queued or running now."""
    return [p for p in run_folders() if _active(p)]


def max_active_runs() -> int:
    """The run limit: `$OPD_LAB_MAX_RUNS`, else 3.

    Raises:
        RunError: when the variable is not a whole number of at least 0.
    """
    raw = os.environ.get(MAX_RUNS_VAR, "").strip()
    if not raw:
        return DEFAULT_MAX_ACTIVE_RUNS
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise RunError(f"{MAX_RUNS_VAR}: expected a whole number of runs, got {raw!r}; "
                       f"set it to e.g. 3, or unset it for the default ({DEFAULT_MAX_ACTIVE_RUNS})")
    return limit


def threads_per_run(limit: int) -> int:
    """CPU threads for each background run, so that `limit` runs at once share the cores.

    Two torch processes that each take every core slow each other down by an order
    of magnitude (measured on 2 cores: two lab runs at once took 108 s each instead of
    7 s alone; with one thread each, 9 s each). A user's own OMP_NUM_THREADS wins.
    """
    return max(1, (os.cpu_count() or 1) // max(1, limit))


def running_count(exclude: Path | None = None) -> int:
    """Active runs (owned by a training or starting process): what the run limit counts."""
    return len([p for p in active_runs() if p != exclude])


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
    """Serialize counting and claiming the run limit across processes (the app and CLIs)."""
    with open(data_dir() / LAUNCH_LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def launch(run_dir: str | Path, limit: int | None = None, processes: int = 1) -> int:
    """Start the run detached in its own process session, on `processes` data-parallel
    processes; returns the pid (of the process that starts them, when several).

    A stop requested earlier is forgotten; one requested from now on is honoured, even
    before training starts.

    Raises:
        RunError: if the run has an owner (it is running) or if `limit` (default
            `$OPD_LAB_MAX_RUNS` or 3) runs are already active.
    """
    return _launch_existing(Path(run_dir), limit, refuse_finished=False, processes=processes)


def _launch_existing(run_dir: Path, limit: int | None, refuse_finished: bool, only_waiting: bool = False,
                     processes: int | None = 1, from_scratch: bool = False) -> int:
    """Own the run, check the limit, and spawn it; `processes=None` keeps the number the
    run last trained on (status.json's "processes", else 1). `from_scratch`: its metrics,
    samples and checkpoints are moved aside first (`run_folder.set_aside_history`)."""
    if processes is not None:
        _check_processes(processes)
    limit = max_active_runs() if limit is None else limit
    with _launch_lock():
        owner = _take_or_refuse(run_dir)
        try:
            if refuse_finished and _state(run_dir) == "finished":
                raise RunError(f"run {run_dir.name} has finished all its steps")
            if only_waiting and _state(run_dir) != WAITING:  # started, stopped or deleted meanwhile
                raise RunError(f"run {run_dir.name} is no longer waiting")
            check_capacity(1, limit, exclude=run_dir)
            clear_stop(run_dir)
            if from_scratch:
                _restart_from_scratch(run_dir)
            if processes is None:
                processes = int((load_status(run_dir) or {}).get("processes") or 1)
            return _spawn(run_dir, owner, limit, processes)
        finally:
            owner.release()


def _check_processes(processes: int) -> None:
    if processes < 1:
        raise RunError(f"--processes: must be at least 1 (got {processes})")


def _state(run_dir: Path) -> str | None:
    """The state in status.json; None when the file is unreadable (the run rewrites it)."""
    try:
        return (load_status(run_dir) or {}).get("state")
    except UnreadableFile:
        return None


def _take_or_refuse(run_dir: Path) -> ownership.RunOwner:
    """Own the run, or raise RunError saying that it is running."""
    refusal = RunError(f"run {run_dir.name} is already running (another process owns it); stop it first")
    try:
        status = load_status(run_dir) or {}
    except UnreadableFile:
        status = {}
    if not ownership.has_lock_file(run_dir) and _owner_alive(run_dir, status):
        raise refusal
    try:
        return ownership.take(run_dir)
    except ownership.RunOwned:
        raise refusal from None


def _spawn(run_dir: Path, owner: ownership.RunOwner, limit: int, processes: int = 1) -> int:
    """Start the training process, handing it `owner`'s lock (the caller then releases its handle).

    With several processes, the process started here starts them (`accelerate launch`)
    and passes the lock on to their rank 0 (`ownership.LockHandover`), so the run has
    one owner from this instant to its end. A run counts once under the run limit; its
    processes share the run's threads.
    """
    # a user's own OMP_NUM_THREADS wins over the share of the cores
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, threads_per_run(limit) // processes))}
    update_status(run_dir, state="queued", pid=None, message="starting", processes=processes)
    launched, _ = launcher.start(
        ["train", "--run-dir", str(run_dir), "--no-progress", "--owner-fd", str(owner.fd),
         *(["--processes", str(processes)] if processes > 1 else [])],
        log=run_dir / LOG_FILE, cwd=run_dir, env=env, pass_fds=(owner.fd,))
    update_status(run_dir, pid=launched.pid, pid_started=launched.started)
    return launched.pid


def start_run(config: RunConfig, processes: int = 1) -> tuple[Path, int]:
    """Check `config`'s inputs, create a run folder for it and launch it on `processes`
    data-parallel processes: `(run folder, pid)`.

    Raises:
        ConfigError, ModelLoadError: a bad input (`preflight.check_run_inputs`);
            nothing is created.
        RunError: when the run limit is reached; nothing is created.
    """
    return start_runs([config], processes)[0]


def start_runs(configs: list[RunConfig], processes: int = 1) -> list[tuple[Path, int]]:
    """Check, create and launch several runs, all or none, under one capacity check.

    Returns:
        `(run folder, pid)` per config, in order.
    Raises:
        ConfigError, ModelLoadError, RunError: a bad input, or a run limit that leaves
            no room for all of them; no folder is left behind and nothing is started.
    """
    from opd_lab.preflight import check_run_inputs  # loads models (torch); listing runs does not

    _check_processes(processes)
    limit = max_active_runs()
    configs = [check_run_inputs(config) for config in configs]
    with _launch_lock():
        check_capacity(len(configs), limit)
        owned = []
        try:
            for config in configs:
                owned.append(ownership.create_owned_run(config))
        except BaseException:
            for run_dir, owner in owned:
                shutil.rmtree(run_dir, ignore_errors=True)
                owner.release()
            raise
        started = []
        for run_dir, owner in owned:
            with owner:
                started.append((run_dir, _spawn(run_dir, owner, limit, processes)))
        return started


def waiting_runs() -> list[Path]:
    """The queue: runs in the state "waiting", first come first."""
    waiting = []
    for folder in run_folders():
        try:
            status = load_status(folder) or {}
        except UnreadableFile:
            continue
        if status.get("state") == WAITING:  # in line since it was queued (a resume queues again)
            waiting.append((status.get("queued_at", status.get("created_at", 0)), folder.name, folder))
    return [folder for *_, folder in sorted(waiting)]


def queue_positions() -> dict[str, int]:
    """{run id: place in the queue, 1 first} of the waiting runs."""
    return {folder.name: position for position, folder in enumerate(waiting_runs(), start=1)}


def submit_run(config: RunConfig) -> tuple[Path, int | None]:
    """Start a run of `config` now if the run limit leaves room and nobody is waiting,
    else queue it: `(run folder, pid, or None when it waits)`.

    Raises:
        ConfigError, ModelLoadError: a bad input (`preflight.check_run_inputs`);
            nothing is created.
    """
    from opd_lab.preflight import check_run_inputs  # loads models (torch); listing runs does not

    limit = max_active_runs()
    config = check_run_inputs(config)
    with _launch_lock():
        run_dir, owner = ownership.create_owned_run(config)
        with owner:
            if not waiting_runs() and running_count(exclude=run_dir) < limit:
                return run_dir, _spawn(run_dir, owner, limit)
            update_status(run_dir, state=WAITING, message="waiting for a free place under the run limit",
                          queued_at=time.time())
            return run_dir, None


def claim_if_room(config: RunConfig, limit: int | None = None,
                  launched_by: str | None = None) -> tuple[Path, ownership.RunOwner] | None:
    """Create a run of `config`, owned by this process, when the run limit has room and
    nobody waits in line: `(folder, owner)` for the caller to hand to its training
    process, or None (nothing created) when it must wait. A program that trains many
    runs (`opd_lab.run_batch`) asks until it answers, so its runs queue behind everyone's;
    the run counts under the limit from this instant, since its lock is held.

    Args:
        launched_by: the user recorded as the run's launcher (`run_folder.record_launcher`).
    Raises:
        ConfigError, ModelLoadError: a bad input; nothing is created.
    """
    limit = max_active_runs() if limit is None else limit
    if waiting_runs() or running_count() >= limit:  # asked every half second while it waits: no checks then
        return None
    from opd_lab.preflight import check_run_inputs  # loads models (torch); listing runs does not

    config = check_run_inputs(config)
    with _launch_lock():
        if waiting_runs() or running_count() >= limit:
            return None
        run_dir, owner = ownership.create_owned_run(config)
        if launched_by:
            record_launcher(run_dir, launched_by)
        return run_dir, owner


def start_waiting(limit: int | None = None) -> list[tuple[Path, int]]:
    """Launch the oldest waiting runs while the run limit leaves room: `[(run folder, pid)]`.

    Each goes through `launch`'s locks and capacity check, so a queue served by several
    apps at once starts each run once, and never more runs than the limit.
    """
    started = []
    for run_dir in waiting_runs():
        if running_count() >= (max_active_runs() if limit is None else limit):
            break
        try:
            started.append((run_dir, _launch_existing(run_dir, limit, refuse_finished=True, only_waiting=True)))
        except RunError:  # taken by another app, cancelled, or the limit filled up meanwhile
            continue
    return started


def request_stop(run_dir: str | Path) -> str:
    """Ask a run to stop after its current step (with a checkpoint); returns a message.

    A run that has not started training yet stops as soon as it starts; a waiting one
    leaves the queue.
    """
    run_dir = Path(run_dir)
    status = status_of(run_dir)
    if status.get("state") == WAITING:
        try:
            with ownership.take(run_dir):
                if _state(run_dir) == WAITING:
                    update_status(run_dir, state="stopped", message="taken out of the queue; resume to start it")
                    return f"{run_dir.name} left the queue"
        except ownership.RunOwned:
            pass
        status = status_of(run_dir)
    if status.get("state") not in ACTIVE_STATES:
        return f"run {run_dir.name} is not running ({status.get('state')})"
    ask_to_stop(run_dir)
    return f"stop requested for {run_dir.name}"


def resume(run_dir: str | Path, processes: int | None = None, from_scratch: bool = False) -> int:
    """Relaunch a stopped or failed run from its last checkpoint, on `processes`
    processes (default: as many as it last trained on); returns the pid.

    A run none of whose checkpoints loads is refused by the training process (its
    status says so); `from_scratch=True` restarts it from step 0, its old metrics,
    samples and checkpoints moved aside into `previous-<time>/`, never deleted.

    Raises:
        RunError: the run is running (another process owns it), has finished, or the
            run limit is reached.
    """
    return _launch_existing(Path(run_dir), None, refuse_finished=True, processes=processes,
                            from_scratch=from_scratch)


def submit_resume(run_dir: str | Path) -> int | None:
    """Resume a stopped or failed run now if the run limit has room and nobody waits,
    else put it in line like a new run (`submit_run`): its pid, or None when it waits.

    Raises:
        RunError: the run is running (another process owns it) or has finished.
    """
    run_dir = Path(run_dir)
    limit = max_active_runs()
    with _launch_lock():
        owner = _take_or_refuse(run_dir)
        try:
            if _state(run_dir) == "finished":
                raise RunError(f"run {run_dir.name} has finished all its steps")
            clear_stop(run_dir)
            if not waiting_runs() and running_count(exclude=run_dir) < limit:
                return _spawn(run_dir, owner, limit)
            update_status(run_dir, state=WAITING, message="waiting for a free place under the run limit",
                          queued_at=time.time())
            return None
        finally:
            owner.release()


def _restart_from_scratch(run_dir: Path) -> None:
    aside = set_aside_history(run_dir)
    update_status(run_dir, step=0, message=f"restarting from step 0; the earlier rows are in {aside.name}/")


def take_for_foreground(run_dir: str | Path, from_scratch: bool = False) -> ownership.RunOwner:
    """Own a stopped or failed run to continue it in this process (`resume --foreground`).

    Raises:
        RunError: the run is running elsewhere, or has finished.
    """
    run_dir = Path(run_dir)
    owner = _take_or_refuse(run_dir)
    if _state(run_dir) == "finished":
        owner.release()
        raise RunError(f"run {run_dir.name} has finished all its steps")
    clear_stop(run_dir)
    if from_scratch:
        _restart_from_scratch(run_dir)
    return owner


def delete_run(run_dir: str | Path) -> None:
    """Remove a run folder; refuses while the run is active (owned by another process)."""
    run_dir = Path(run_dir)
    try:
        owner = _take_or_refuse(run_dir)
    except RunError:
        raise RunError(f"run {run_dir.name} is still running: stop it first") from None
    with owner:
        shutil.rmtree(run_dir)


def list_runs() -> list[dict]:
    """One summary dict per run (`run_folder.run_row`), newest first. A run whose files
    cannot be read is listed with the state "unreadable" and the file in its message."""
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
