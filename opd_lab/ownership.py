"""One owner per run: the lock a training process holds on its run folder for its whole life.

Every run folder has a lock file, `owner.lock`. The process that trains the run holds
an exclusive `fcntl.flock` on it until it exits; the kernel drops the lock however the
process ends, `kill -9` included. So "is this run training?" has one answer that cannot
go stale: is its lock held? Launch, resume and delete take the lock or refuse, so two
trainers never write one folder, and a run being deleted is never started.

A launch takes the lock in the launching process and hands the locked file to the
training process it starts (`Popen(pass_fds=...)`; the child `adopt`s it), so there is
no instant at which a starting run has no owner. `create_owned_run` makes a new folder
already owned, before its files are written.

A data-parallel run (`opd-lab launch --processes N`) cannot hand the file over that
way: accelerate's launcher starts the training processes with their inherited files
closed. So the process that owns the run (`LockHandover`) listens on a private Unix
socket whose path it gives the processes in `$OPD_LAB_OWNER_HANDOVER`, and rank 0
`receive`s the very same open file through it (`SCM_RIGHTS`), locked, before it
touches the folder; only after rank 0 confirms does the giver close its handle. Until
then the giver owns the run, from then on rank 0 does, and a rank 0 that gets no lock
(its giver died) never writes the folder.

The status also records the owner's pid and the kernel's start time of that process
(`process_start_time`): a folder from a version without lock files is "running" only
while that very process lives, not while another program that was given the same pid
does.

Example:
    >>> with take(run_dir):  # doctest: +SKIP
    ...     ...                # nobody else can train or delete the run here
    >>> is_owned(run_dir)  # doctest: +SKIP
    False
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from opd_lab.config import RunConfig
from opd_lab.run_folder import RunError, new_run_dir, write_new_run

LOCK_FILE = "owner.lock"
# Where rank 0 of a data-parallel run asks for the run's lock (a Unix socket's path).
HANDOVER_VAR = "OPD_LAB_OWNER_HANDOVER"
# How long a giver waits for rank 0 to ask (accelerate and torch start in seconds to minutes).
HANDOVER_WAIT_S = 300.0
# How long `take` waits for a lock held only for an instant (a listing checking it).
TAKE_WAIT_S = 2.0


class RunOwned(RunError):
    """The run is owned by another process (training, starting, or being deleted)."""


class RunOwner:
    """The exclusive hold of one process on a run folder. `release()`, leaving a `with`
    block or the process's end gives it up."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self.fd = run_dir, fd

    def release(self) -> None:
        """Close this process's handle. Never `LOCK_UN`: a child started with the same
        open file (a launch) keeps holding the lock."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RunOwner":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def take(run_dir: str | Path, wait_s: float = TAKE_WAIT_S) -> RunOwner:
    """Become the run's only owner.

    Raises:
        RunOwned: another process holds it (after waiting `wait_s` for a holder that
            only checks it, such as a listing).
    """
    run_dir = Path(run_dir)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return RunOwner(run_dir, fd)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunOwned(f"run {run_dir.name} is owned by another process (it is training, starting or "
                               "being deleted): stop it first, or wait for it to end") from None
            time.sleep(0.05)


def adopt(run_dir: str | Path, fd: int) -> RunOwner:
    """The lock a launcher handed to this process (file descriptor `fd`).

    Raises:
        RunError: `fd` is not the run's lock file, or not locked by the launcher.
    """
    run_dir = Path(run_dir)
    try:
        same_file = os.path.samestat(os.fstat(fd), os.stat(run_dir / LOCK_FILE))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours: succeeds at once
    except OSError as error:
        raise RunError(f"run {run_dir.name}: the lock handed over by the launcher is unusable ({error})") from None
    if not same_file:
        raise RunError(f"run {run_dir.name}: file descriptor {fd} is not its {LOCK_FILE}")
    return RunOwner(run_dir, fd)


class LockHandover:
    """Gives a run's lock (its open, locked file) to the one process that asks, over a
    Unix socket in a private temporary folder (mode 0700: only this user can connect).

    Example:
        >>> with LockHandover(owner) as handover:  # doctest: +SKIP
        ...     process = subprocess.Popen(command, env={**os.environ, **handover.env})
        ...     handover.give(alive=lambda: process.poll() is None)  # rank 0 holds it now
    """

    def __init__(self, owner: RunOwner):
        self.owner = owner
        self.folder = tempfile.mkdtemp(prefix="opd-lab-handover-")
        self.path = os.path.join(self.folder, "lock.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(0.2)

    @property
    def env(self) -> dict[str, str]:
        """The environment variable that tells rank 0 where to ask."""
        return {HANDOVER_VAR: self.path}

    def give(self, alive: Callable[[], bool] = lambda: True, wait_s: float = HANDOVER_WAIT_S) -> bool:
        """Wait for a receiver, send it the lock, and on its confirmation close this
        process's handle (`owner.release()`): True. False, still owning the run, when
        nobody asked within `wait_s` or `alive()` turned false first."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and alive():
            try:
                connection, _ = self.listener.accept()
            except socket.timeout:
                continue
            with connection:
                connection.settimeout(30)
                try:
                    socket.send_fds(connection, [str(self.owner.run_dir).encode()], [self.owner.fd])
                    confirmed = connection.recv(2) == b"ok"
                except OSError:
                    confirmed = False
            if confirmed:
                self.owner.release()
                return True
        return False

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "LockHandover":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def receive(run_dir: str | Path, path: str) -> RunOwner:
    """Rank 0's side of `LockHandover`: the run's lock from the process at `path`.

    Raises:
        RunError: nobody gives it (the giver is gone), or it is not this run's lock.
    """
    run_dir = Path(run_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(30)
            connection.connect(path)
            _, fds, _, _ = socket.recv_fds(connection, 4096, 1)
            if not fds:
                raise OSError("no file descriptor came")
            owner = adopt(run_dir, fds[0])
            connection.sendall(b"ok")
            return owner
    except OSError as error:
        raise RunError(f"run {run_dir.name}: the process that started it is gone before handing over the run's "
                       f"lock ({error}); resume the run") from None


def is_owned(run_dir: str | Path) -> bool:
    """Whether some process holds the run's lock (this one included, through another handle)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False  # closing the handle below releases the lock we just took
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def has_lock_file(run_dir: str | Path) -> bool:
    return (Path(run_dir) / LOCK_FILE).exists()


def create_owned_run(config: RunConfig) -> tuple[Path, RunOwner]:
    """A new run folder of `config` and this process's hold on it, taken before any file
    is written, so no listing ever sees the new run without an owner."""
    folder = new_run_dir(config)
    owner = None
    try:
        owner = take(folder, wait_s=0)
        write_new_run(folder, config)
    except BaseException:  # a full disk, Ctrl-C: no half-made folder stays behind
        shutil.rmtree(folder, ignore_errors=True)
        if owner is not None:
            owner.release()
        raise
    return folder, owner


def process_start_time(pid: int | None) -> int | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None when
    there is no such process or no /proc. A pid and its start time name one process."""
    if not pid:
        return None
    try:
        with open(f"/proc/{int(pid)}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[-1].split()
    except (OSError, ValueError):
        return None
    # fields[0] is the state (field 3 of proc(5)), fields[19] the start time (field 22).
    return None if fields[0] == "Z" else int(fields[19])


def process_alive(pid: int | None, start_time: int | None) -> bool:
    """Whether the process `pid` that started at `start_time` still runs (not a zombie,
    not another process given the same pid). Without a recorded start time, only the pid
    is checked."""
    if not pid:
        return False
    current = process_start_time(pid)
    if current is None:
        if Path("/proc").is_dir():
            return False
        try:  # no /proc (macOS): the pid alone
            os.kill(int(pid), 0)
            return True
        except OSError:
            return False
    return start_time is None or current == start_time
