"""A batch of runs trained in turn under the run limit, stopped together when told.

`opd-lab compare` trains a dozen runs, `workers` at a time. Each one is an ordinary run
launched through `opd_lab.runs` (`start_if_room`): it has one owner, counts under the
run limit, waits in line behind everyone's queued runs, and trains on one thread. Its
process is started with `die_with_parent` (`opd_lab.launcher`), so if the program
running the batch dies, even by `kill -9`, each run still stops with a checkpoint.

SIGTERM or a first Ctrl-C (`stop_on_signals`) asks the batch to stop: no run starts any
more, the training ones stop after their current step with a checkpoint, and
`train_all` returns what it has, leaving the caller to report what finished. A second
Ctrl-C aborts at once.

Example:
    >>> stop = StopRequest()  # doctest: +SKIP
    >>> handlers = stop_on_signals(stop)  # doctest: +SKIP
    >>> folders = train_all(configs, workers=2, description="sweep", stop=stop)  # doctest: +SKIP
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from opd_lab import runs
from opd_lab.config import RunConfig

POLL_S = 0.5  # how often the batch looks at its runs


class BatchStopped(Exception):
    """Raised by the signal handler while `StopRequest.interruptible` (no run trains yet)."""


class StopRequest:
    """Set by SIGTERM or a Ctrl-C (or a failed run): start nothing more, stop the runs
    training now with a checkpoint. `reason` is None until then. While the caller marks
    it `interruptible` (no run is training: e.g. a lab is being built), a signal raises
    `BatchStopped` at once instead of waiting for that work to end."""

    def __init__(self):
        self.reason: str | None = None
        self.interruptible = False

    def ask(self, reason: str) -> None:
        self.reason = self.reason or reason


def stop_on_signals(stop: StopRequest) -> dict:
    """SIGTERM and a first Ctrl-C ask the batch to stop; a second Ctrl-C aborts at
    once (its runs, told by the kernel that their parent died, still save a checkpoint).
    Returns the previous handlers (none outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(number, _frame):
        if number == signal.SIGINT and stop.reason:
            raise KeyboardInterrupt
        stop.ask("Ctrl-C" if number == signal.SIGINT else "SIGTERM")
        if stop.interruptible:
            raise BatchStopped(stop.reason)
        print(f"\nopd-lab: {stop.reason}: starting no more runs, stopping the current ones with a "
              "checkpoint, then writing the report of what finished", file=sys.stderr)

    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    for number in previous:
        signal.signal(number, on_signal)
    return previous


def train_all(configs: list[RunConfig], workers: int, description: str, stop: StopRequest,
               launched_by: str | None = None, progress_print=print) -> list[Path | None]:
    """Train `configs`, at most `workers` at once and never past the run limit; returns
    their run folders in order (None for a run never started because of a stop).

    Each run is launched like any other (`runs.start_if_room`): it waits while the
    limit is full or other runs wait before it, and this loop serves the queue
    (`runs.start_waiting`) so waiting runs start even without an app. When `stop` is
    asked, no run starts any more and the running ones are stopped with a checkpoint.
    """
    results: list[Path | None] = [None] * len(configs)
    pending = list(range(len(configs)))
    training: dict[int, Path] = {}
    told_waiting = stopping = False
    bar = tqdm(total=len(configs), desc=description, unit="run")
    try:
        while pending or training:
            if stop.reason and not stopping:
                stopping = True
                pending.clear()
                for run_dir in training.values():
                    runs.request_stop(run_dir)
            for index, run_dir in list(training.items()):
                if not runs.is_active(run_dir):
                    results[index] = training.pop(index)
                    bar.update(1)
                    state = runs.status_of(run_dir).get("state")
                    if state == "failed":
                        stop.ask(f"run {run_dir.name} failed: {runs.status_of(run_dir).get('message')}")
            runs.start_waiting()
            while pending and len(training) < workers and not stopping:
                started = runs.start_if_room(configs[pending[0]], die_with_parent=True, threads=1,
                                             launched_by=launched_by)
                if started is None:
                    if not told_waiting:
                        progress_print("waiting for a free place under the run limit (other runs are training "
                                       "or waiting before these)")
                        told_waiting = True
                    break
                training[pending.pop(0)] = started
            time.sleep(POLL_S)
    finally:
        bar.close()
    return results
