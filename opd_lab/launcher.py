"""The one way opd-lab starts a process of its own: `python -m opd_lab ...`, with its log.

Runs (`opd_lab.runs`), recipes and comparisons (`opd_lab.studies.background`) all start
their processes here, so each gets the same three things right once:

- the environment: `paths.child_environment()` (the same data dir, this very package
  first on PYTHONPATH), plus what the caller adds;
- the identity: the pid *and* the kernel's start time of that process
  (`ownership.process_start_time`), so "is it still running?" (`Launched.alive`,
  through `ownership.process_alive`) is never fooled by a zombie or by another program
  given the same pid later;
- the reaping: a thread waits for the child, so a finished child never lingers as a
  zombie of a long-lived parent (the app).

A detached process (`detached=True`, the default) is its own session: closing the
terminal or the app never stops it. A worker (`die_with_parent=True`, a comparison's
runs) is the opposite: the kernel sends it SIGTERM when its parent dies, however the
parent ends (`kill -9` included), so no worker outlives the command that started it.

Example:
    >>> launched = start(["compare", "--scenario", "baseline", "--quick"], log=Path("compare.log"))  # doctest: +SKIP
    >>> record(Path("compare.json"), launched, user="ana")  # doctest: +SKIP
    >>> recorded(Path("compare.json")).alive()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from opd_lab import ownership
from opd_lab.paths import child_environment
from opd_lab.files import UnreadableFile, read_json, write_json_atomic

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


@dataclass(frozen=True)
class Launched:
    """One started process: its pid and its start time (clock ticks since boot; None
    without /proc), which together name it for as long as the machine runs."""

    pid: int
    started: int | None

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, not a reused pid)."""
        return ownership.process_alive(self.pid, self.started)

    def signal(self, number: int = signal.SIGTERM) -> bool:
        """Send it `number` if it still runs; whether it was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, number)
        except ProcessLookupError:
            return False
        return True

    def to_dict(self) -> dict:
        return {"pid": self.pid, "started": self.started}


def start(module_args: list[str], log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None,
          pass_fds: tuple[int, ...] = (), detached: bool = True, die_with_parent: bool = False,
          reap: bool = True, stdin_pipe: bool = False) -> tuple[Launched, subprocess.Popen]:
    """Start `python -m opd_lab <module_args>` with stdout and stderr appended to `log`.

    Args:
        env: variables added to `paths.child_environment()`.
        pass_fds: open files the child inherits (a run's lock, `opd_lab.ownership`).
        detached: its own session, so it outlives this process and its terminal.
        die_with_parent: the child gets SIGTERM when this process dies (Linux); a
            training process takes that as "stop with a checkpoint".
        reap: a thread waits for the child (no zombie); False when the caller polls it.
        stdin_pipe: the child reads its stdin from `Popen.stdin` (a worker's orders), else nothing.
    Returns:
        `(Launched, Popen)`.
    """
    environment = {**child_environment(), **(env or {})}
    parent = os.getpid()
    libc = _libc() if die_with_parent else None  # loaded here: the child only calls it
    with open(log, "a") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "opd_lab", *module_args], stdout=handle, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL, pass_fds=pass_fds, start_new_session=detached, env=environment,
            cwd=str(cwd) if cwd else None,
            preexec_fn=(lambda: _die_with(parent, libc)) if die_with_parent else None)
    launched = Launched(process.pid, ownership.process_start_time(process.pid))
    if reap:
        threading.Thread(target=process.wait, daemon=True, name=f"opd-lab-reap-{process.pid}").start()
    return launched, process


def _libc():
    """The C library, for prctl (None off Linux)."""
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with(parent: int, libc) -> None:
    """In the child, before exec: ask for SIGTERM when the parent dies, and exit at once
    if it already has (the request would then never fire). SIGTERM stays blocked (the
    mask survives exec) until `python -m opd_lab` has its handler (`opd_lab.__main__`),
    so one that comes while Python starts is held, not fatal."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if libc is not None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def record(path: Path, launched: Launched, **fields) -> None:
    """Write the process's identity (and `fields`, e.g. who asked) to the JSON file `path`."""
    write_json_atomic(path, {**launched.to_dict(), **fields})


def recorded(path: Path) -> Launched | None:
    """The process recorded in `path`, or None when there is none (or the file is unreadable)."""
    try:
        data = read_json(path, default=None)
    except UnreadableFile:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    started = data.get("started")
    return Launched(data["pid"], started if isinstance(started, int) else None)
