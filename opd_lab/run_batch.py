"""A batch of runs trained in turn under the run limit, stopped together when told.

`opd-lab compare` trains a dozen runs, `workers` at a time. Each one is an ordinary run
created through `opd_lab.runs` (`claim_if_room`): it has one owner, counts under the
run limit, waits in line behind everyone's queued runs, and trains on one thread. It
trains in one of `workers` processes kept for the whole batch (`Worker`: torch is
imported once per worker, not once per run; a quick comparison's runs take seconds),
each started with `die_with_parent` (`opd_lab.launcher`), so if the program running the
batch dies, even by `kill -9`, the run training there still stops with a checkpoint.

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

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from opd_lab import launcher, ownership, runs
from opd_lab.config import RunConfig
from opd_lab.run_folder import RunError, ask_to_stop, update_status

HANDOVER_WAIT_S = 120.0  # a new worker imports torch before it takes its first run

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


class Worker:
    """A training process kept for the whole batch (`python -m opd_lab batch-worker`):
    it imports torch once and trains one run after another, each run's lock handed to it
    (`ownership.LockHandover`) so the run is owned from its creation to its end. It dies
    with the batch's process (`launcher.start(die_with_parent=True)`)."""

    def __init__(self, log: Path):
        self.log = log
        self.launched, self.process = launcher.start(["batch-worker"], log=log, detached=False, die_with_parent=True,
                                                     reap=False, stdin_pipe=True, env={"OMP_NUM_THREADS": "1"})
        self.run_dir: Path | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def train(self, run_dir: Path, owner: ownership.RunOwner, cancelled=lambda: False) -> bool:
        """Give the worker `run_dir` and its lock; True once the worker holds the lock (the
        run then records the worker's pid itself). False when `cancelled()` turns true
        first (a worker still importing torch at a stop): the run is then marked stopped.

        Raises:
            RunError: the worker died before taking the run (the run then reads failed).
        """
        with owner, ownership.LockHandover(owner) as handover:
            update_status(run_dir, state="queued", pid=None, message="starting")
            try:
                self.process.stdin.write(f"{run_dir}\t{handover.path}\n".encode())
                self.process.stdin.flush()
            except OSError:
                pass
            if handover.give(alive=lambda: self.alive() and not cancelled(), wait_s=HANDOVER_WAIT_S):
                self.run_dir = run_dir
                return True
            if self.alive() and cancelled():
                update_status(run_dir, state="stopped", message="stopped before it started; resume to start it")
                self.close(wait_s=0)  # it would still ask for the lock it was promised
                return False
        raise RunError(f"the process that was to train {run_dir.name} is gone; see {self.log}")

    def close(self, wait_s: float = 30.0) -> None:
        """No more runs: the worker exits once its run (if any) is done."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve_worker() -> None:
    """The worker's side (`python -m opd_lab batch-worker`): each line of stdin names a
    run folder and where to receive its lock; train it, then read the next line."""
    import torch

    from opd_lab.train import run_training

    torch.set_num_threads(1)
    current: list[Path] = []

    def on_sigterm(*_):  # run_training's own handler replaces this one while it trains
        if not current:
            sys.exit(128 + signal.SIGTERM)  # idle: nothing to save
        ask_to_stop(current[0])  # taken, not yet training: it stops before it starts

    signal.signal(signal.SIGTERM, on_sigterm)
    for line in sys.stdin:
        folder, _, handover = line.rstrip("\n").partition("\t")
        run_dir = Path(folder)
        try:
            owner = ownership.receive(run_dir, handover)
        except RunError as error:
            print(f"opd-lab batch-worker: {error}", file=sys.stderr, flush=True)
            continue
        current[:] = [run_dir]
        run_training(run_dir, progress=False, owner=owner)
        current.clear()


def train_all(configs: list[RunConfig], workers: int, description: str, stop: StopRequest,
              launched_by: str | None = None, progress_print=print,
              on_finished: Callable[[int, Path], None] | None = None) -> list[Path | None]:
    """Train `configs`, at most `workers` at once and never past the run limit; returns
    their run folders in order (None for a run never started because of a stop).
    `on_finished(index, run_dir)` is called as soon as a run stops training (finished,
    stopped or failed: its status says which), e.g. to record it before the others end.

    Each run is created like any other (`runs.claim_if_room`): it waits while the limit
    is full or other runs wait before it, and this loop serves the queue
    (`runs.start_waiting`) so waiting runs start even without an app. It then trains in
    one of `workers` warm processes (`Worker`). When `stop` is asked, no run starts any
    more and the training ones are stopped with a checkpoint.
    """
    results: list[Path | None] = [None] * len(configs)
    pending = list(range(len(configs)))
    training: dict[int, Worker] = {}
    idle: list[Worker] = []
    logs = runs.runs_dir()
    told_waiting = stopping = False
    bar = tqdm(total=len(configs), desc=description, unit="run")
    try:  # the workers import torch while the first runs are created
        idle = [Worker(logs / f".batch-worker-{os.getpid()}-{time.monotonic_ns()}.log")
                for _ in range(min(workers, len(configs)))]
        while pending or training:
            if stop.reason and not stopping:
                stopping = True
                pending.clear()
                for worker in training.values():
                    runs.request_stop(worker.run_dir)
            for index, worker in list(training.items()):
                if not runs.is_active(worker.run_dir):
                    results[index] = worker.run_dir
                    del training[index]
                    if on_finished is not None:
                        on_finished(index, worker.run_dir)
                    idle.append(worker)
                    bar.update(1)
                    status = runs.status_of(worker.run_dir)
                    if status.get("state") == "failed":
                        stop.ask(f"run {worker.run_dir.name} failed: {status.get('message')}")
            runs.start_waiting()
            while pending and len(training) < workers and not stopping:
                claimed = runs.claim_if_room(configs[pending[0]], launched_by=launched_by)
                if claimed is None:
                    if not told_waiting:
                        progress_print("waiting for a free place under the run limit (other runs are training "
                                       "or waiting before these)")
                        told_waiting = True
                    break
                idle = [worker for worker in idle if worker.alive()]
                worker = idle.pop() if idle else Worker(logs / f".batch-worker-{os.getpid()}-{time.monotonic_ns()}.log")
                index = pending.pop(0)
                try:
                    handed = worker.train(*claimed, cancelled=lambda: stop.reason is not None)
                except RunError as error:
                    stop.ask(str(error))
                    results[index] = claimed[0]
                    continue
                if not handed:  # stopped meanwhile: the run reads stopped, resumable
                    results[index] = claimed[0]
                    continue
                training[index] = worker
            time.sleep(POLL_S)
    finally:
        bar.close()
        for worker, wait_s in [(w, 2.0) for w in idle] + [(w, 30.0) for w in training.values()]:
            worker.close(wait_s)  # an idle one holds no run: killed if it does not exit at once
            if worker.process.returncode in (0, -signal.SIGKILL):
                worker.log.unlink(missing_ok=True)
    return results


def train_batch(configs: list[RunConfig], workers: int, description: str, progress_print=print) -> list[Path]:
    """`train_all` for a study that needs every run: SIGTERM or Ctrl-C stops the runs with a
    checkpoint (they stay in the runs folder, resumable) and raises `BatchStopped`."""
    stop = StopRequest()
    previous = stop_on_signals(stop)
    try:
        run_dirs = train_all(configs, workers, description, stop, progress_print=progress_print)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if stop.reason or any(run_dir is None for run_dir in run_dirs):
        raise BatchStopped(stop.reason or "a run did not start")
    return run_dirs  # type: ignore[return-value]
