"""A training run from start to end: its folder, its steps, evaluation, checkpoints, stops.

`run_training(run_dir)` (re)starts a run from its config and last checkpoint and calls
`Trainer.step()` (`opd_lab.trainer`: one update of OPD, SFT or RL) until it is done,
stopped or failed, writing metrics, per-token samples, checkpoints and status on
schedule (docs/run-folder.md). `train(config)` creates the folder and runs it here, in
the foreground (the notebooks' entry point). Start background runs with
`opd-lab launch` (see `opd_lab.runs`).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from opd_lab import checkpoints, distributed, ownership, sharding
from opd_lab.config import RunConfig
from opd_lab.distributed import World
from opd_lab.flops import FlopsCounter
from opd_lab.ownership import RunOwner
from opd_lab.paths import disk_full_line, is_disk_full
from opd_lab.preflight import check_run_inputs
from opd_lab.files import append_jsonl, read_jsonl, truncate_jsonl
from opd_lab.run_folder import (METRICS_FILE, SAMPLES_FILE, RunError, append_log, clear_stop, load_config, load_status,
                                set_aside_history, stop_asked, update_status)
from opd_lab.tracking import RunTrackers
from opd_lab.trainer import NonFiniteLoss, StepResult, Trainer

# log.txt gets a training line every this many steps, after the first step and at each evaluation.
LOG_EVERY_STEPS = 10


def run_training(run_dir: str | Path, progress: bool = True, owner: RunOwner | None = None) -> str:
    """Run (or continue) the run in `run_dir` to its end; returns the final state.

    This process owns the run throughout (`opd_lab.ownership`): `owner` is a hold taken
    already (a launch hands one over), else the run is taken here.

    Continues from the newest checkpoint that loads (a corrupt one is set aside), after
    dropping metric and sample rows written after it, so the metric steps have no gaps
    and no repeats. Stops gracefully (checkpoint, state `stopped`) when the folder's
    STOP file appears, even before the first step, or on SIGTERM or a first Ctrl-C
    (SIGINT); a second Ctrl-C aborts at once (state `stopped`, work since the last
    checkpoint lost). A non-finite loss or any error ends in state `failed` with the
    message in status.json, the traceback in log.txt, and the last good checkpoint
    untouched.

    In a data-parallel run (`opd_lab.distributed`) every process calls this; rank 0
    alone owns the run and writes its folder, the others train their share of each
    batch. Any process that ends (a crash, `kill -9`) ends the run as `failed`.

    Raises:
        RunError: another process owns the run.
    """
    run_dir = Path(run_dir)
    world = distributed.current()
    if not world.is_main:
        return _run_owned(run_dir, False, world)
    owner = owner or ownership.take(run_dir)
    with owner:
        return _run_owned(run_dir, progress, world)


def _run_owned(run_dir: Path, progress: bool, world: World) -> str:
    """Train the run; every file write is rank 0's (`world.is_main`)."""
    main = world.is_main
    stop_requested = {"flag": False}
    previous_handlers = _install_stop_handlers(stop_requested) if _in_main_thread() else {}
    identity = (os.getpid(), ownership.process_start_time(os.getpid()))
    if main:
        update_status(run_dir, state="running", message="loading models", started_at=time.time(),
                      pid=identity[0], pid_started=identity[1])
    trainer = None
    trackers = RunTrackers({})
    try:
        identities = world.gather(identity)
        if main:  # what a resume starts again by default (runs.resume)
            update_status(run_dir, processes=world.size,
                          rank_pids=[pid for pid, _ in identities] if world.launched else None)
        if world.any(stop_asked(run_dir)):  # stopped while queued: never start
            return _stopped(run_dir, load_status(run_dir).get("step", 0), "before it started") if main else "stopped"
        config = RunConfig.from_dict(load_config(run_dir))
        if main and config.trackers():  # report_to: the trackers see each row as it is written
            trackers = RunTrackers.open(config, run_dir.name, warn=lambda text: append_log(run_dir, f"warning: {text}"))
        trainer = Trainer(config, run_dir, world)
        state = _restore(trainer, run_dir, world)
        if world.any(stop_requested["flag"] or stop_asked(run_dir)):  # asked while it loaded
            return _stopped(run_dir, trainer.step_done, "before it started") if main else "stopped"
        if main and state is None:
            _keep_rows_of_a_restart(run_dir)
        trainer.begin(state)
        if main and sharding.is_sharded(trainer.student):
            local, whole = sharding.weight_bytes(trainer.student)
            append_log(run_dir, f"student sharded across {world.size} processes (FSDP2, one unit per decoder layer): "
                 f"{local / 2**20:.1f} of its {whole / 2**20:.1f} MiB of weights per process; with gradients "
                 f"and AdamW's two moments, about {4 * local / 2**20:.1f} MiB of training state each "
                 f"(whole: {4 * whole / 2**20:.1f} MiB)")
        if main:
            truncate_jsonl(run_dir / METRICS_FILE, trainer.step_done if state is not None else -1)
            truncate_jsonl(run_dir / SAMPLES_FILE, trainer.step_done if state is not None else -1)
        if world.broadcast(main and not any(row.get("step") == 0 for row in read_jsonl(run_dir / METRICS_FILE))):
            if main:
                update_status(run_dir, message="evaluating the starting student")
            start = trainer.evaluate()
            if main:
                row = {"step": 0, "progress/samples": 0, "progress/tokens": 0, "perf/wall_s": 0.0,
                       **FlopsCounter().as_metrics(), **start}
                append_jsonl(run_dir / METRICS_FILE, [row])
                trackers.log_metrics(row)
        return _loop(trainer, run_dir, stop_requested, progress, trackers)
    except KeyboardInterrupt:  # the second Ctrl-C
        if not main:
            raise
        step = trainer.step_done if trainer else 0
        last = checkpoints.latest(run_dir)
        _record_failure(run_dir, state="stopped", step=step, message=(
            f"aborted by a second Ctrl-C at step {step}; resume continues from "
            + (f"the checkpoint of step {checkpoints.step_of(last)}" if last else "step 0")))
        raise
    except Exception as error:  # noqa: BLE001 - every failure must reach status.json
        error = distributed.lost_peer(error, world) or error
        message = (str(error) if isinstance(error, (NonFiniteLoss, distributed.PeerLost))
                   else disk_full_line(error) if is_disk_full(error)
                   else f"{type(error).__name__}: {error}")
        if not main:  # rank 0 writes the folder; this process's traceback goes to the launcher's output
            print(f"opd-lab: rank {world.rank}: {message}\n{traceback.format_exc()}", file=sys.stderr)
            return "failed"
        step = trainer.step_done if trainer else _status_step(run_dir)
        _record_failure(run_dir, state="failed", step=step, message=message, trace=traceback.format_exc())
        return "failed"
    finally:
        trackers.close()
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)


def _restore(trainer: Trainer, run_dir: Path, world: World) -> dict | None:
    """Rank 0 restores the newest checkpoint that loads (setting corrupt ones aside);
    the other processes then load that same checkpoint. Returns the trainer state."""
    state = None
    if world.is_main:
        state = checkpoints.restore_newest(run_dir, trainer.student, trainer.lora,
                                           warn=lambda text: append_log(run_dir, text))
    step = world.broadcast(None if state is None else state["step"])
    if not world.is_main and step is not None:
        state = checkpoints.restore(checkpoints.checkpoint_path(run_dir, step), trainer.student, trainer.lora)
    return state


def _keep_rows_of_a_restart(run_dir: Path) -> None:
    """A run with no checkpoint on disk starts at step 0; metric or sample rows it wrote
    before (it died before its first checkpoint) are moved aside, never deleted."""
    if any(row.get("step", 0) > 0 for row in read_jsonl(run_dir / METRICS_FILE)):
        aside = set_aside_history(run_dir)
        append_log(run_dir, f"no checkpoint to continue from: starting at step 0; the earlier rows are kept in {aside.name}/")


def _install_stop_handlers(stop_requested: dict) -> dict:
    """SIGTERM and a first SIGINT ask for a graceful stop; a second SIGINT aborts."""
    def on_interrupt(*_):
        if stop_requested["flag"]:
            raise KeyboardInterrupt
        stop_requested["flag"] = True
        print("\nstopping after the current step, with a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM), signal.SIGINT: signal.getsignal(signal.SIGINT)}
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.update(flag=True))
    signal.signal(signal.SIGINT, on_interrupt)
    return previous


def _status_step(run_dir: Path) -> int:
    try:
        return load_status(run_dir).get("step", 0)
    except RunError:
        return 0


def _record_failure(run_dir: Path, state: str, step: int, message: str, trace: str = "") -> None:
    """Write the end of a run that went wrong to its folder. When the folder cannot be
    written (a full disk, a folder made read-only), say so on stderr with the original
    error, instead of letting a second error hide the first."""
    try:
        if trace:
            append_log(run_dir, trace)
        update_status(run_dir, state=state, message=message, step=step, pid=None)
    except OSError as error:
        hint = f"; {disk_full_line(error)}" if is_disk_full(error) else ""
        print(f"opd-lab: run {run_dir.name} {state}: {message} (and its folder could not be written: {error}{hint})",
              file=sys.stderr)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stopped(run_dir: Path, step: int, when: str) -> str:
    clear_stop(run_dir)
    update_status(run_dir, state="stopped", message=f"stopped {when}; resume to continue", pid=None)
    return "stopped"


def _save_checkpoint(trainer: Trainer, run_dir: Path) -> None:
    """Save the step's checkpoint, then keep only the newest `keep_checkpoints` and the best one.
    Every process calls it (a sharded student is gathered for it); rank 0 writes."""
    student_state = sharding.full_model_state(trainer.student)
    trainer_state = trainer.state()
    if not trainer.world.is_main:
        return
    checkpoints.save(run_dir, trainer.step_done, trainer.student, trainer.tokenizer, trainer_state,
                     student_state=student_state)
    accuracy_by_step = {row["step"]: row["eval/accuracy"] for row in read_jsonl(run_dir / METRICS_FILE)
                        if isinstance(row.get("eval/accuracy"), (int, float))}
    checkpoints.prune(run_dir, trainer.config.keep_checkpoints, accuracy_by_step)


def training_line(metrics: dict, total_steps: int, steps_per_s: float) -> str:
    """One line of log.txt about a step: step, loss, KL, held-out accuracy (at an evaluation), speed.

    Example:
        >>> training_line({"step": 20, "train/loss": 0.41, "train/reverse_kl": 0.39}, 150, 2.5)
        'step 20/150  loss 0.4100  KL 0.3900  2.50 steps/s'
    """
    parts = [f"step {metrics['step']}/{total_steps}", f"loss {metrics['train/loss']:.4f}"]
    if isinstance(metrics.get("train/reverse_kl"), (int, float)):
        parts.append(f"KL {metrics['train/reverse_kl']:.4f}")
    elif isinstance(metrics.get("train/reverse_kl_topk"), (int, float)):  # a teacher server's lower bound
        parts.append(f"KL(top-k) {metrics['train/reverse_kl_topk']:.4f}")
    if isinstance(metrics.get("eval/accuracy"), (int, float)):
        parts.append(f"held-out accuracy {metrics['eval/accuracy']:.1%}")
    parts.append(f"{steps_per_s:.2f} steps/s")
    return "  ".join(parts)


def _loop(trainer: Trainer, run_dir: Path, stop_requested: dict, progress: bool, trackers: RunTrackers) -> str:
    """Step until done, stopped or at the target accuracy. In a data-parallel run every
    process runs this loop and they agree on when to stop (`World.any`); rank 0 alone
    evaluates and writes."""
    config, world = trainer.config, trainer.world
    main = world.is_main
    bar = tqdm(total=config.steps, initial=trainer.step_done, desc=f"{config.method} {run_dir.name}",
               unit="step", disable=not progress)
    started_wall = trainer.wall_s
    first_step = trainer.step_done
    while trainer.step_done < config.steps:
        if world.any(stop_requested["flag"] or stop_asked(run_dir)):  # asked before this step began
            bar.close()
            if world.broadcast(main and _unsaved(trainer, run_dir)):
                _save_checkpoint(trainer, run_dir)
            return _stopped(run_dir, trainer.step_done, f"at step {trainer.step_done}") if main else "stopped"
        result = trainer.step()
        step = trainer.step_done
        metrics = result.metrics
        if step % config.eval_every == 0 or step == config.steps:
            metrics.update(trainer.evaluate())
        reached = world.any(config.stop_at_accuracy > 0
                            and metrics.get("eval/accuracy", -1.0) >= config.stop_at_accuracy)
        # The step's rows first, then its checkpoint: a crash between the two leaves rows
        # that a resume drops, never a checkpoint without its rows.
        if main:
            _write_rows(run_dir, result, trackers)
        # A stop asked for during this step is saved by the check at the top of the loop.
        if step % config.checkpoint_every == 0 or step == config.steps or reached:
            _save_checkpoint(trainer, run_dir)
        if main:
            _write_progress(trainer, run_dir, metrics, started_wall, first_step)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", kl=f"{metrics.get('train/reverse_kl', math.nan):.3f}")
        if reached:
            break
    bar.close()
    if not main:
        return "finished"
    final = read_jsonl(run_dir / METRICS_FILE)[-1].get("eval/accuracy")
    early = trainer.step_done < config.steps
    clear_stop(run_dir)
    update_status(run_dir, state="finished", eta_s=0, pid=None,
                  message=f"finished {trainer.step_done} steps" + (" (reached the target accuracy)" if early else "")
                  + (f", held-out accuracy {final:.1%}" if final is not None else ""))
    return "finished"


def _unsaved(trainer: Trainer, run_dir: Path) -> bool:
    """Whether the trainer has taken steps since the run's newest checkpoint."""
    latest = checkpoints.latest(run_dir)
    return bool(trainer.step_done) and (latest is None or checkpoints.step_of(latest) != trainer.step_done)


def _write_rows(run_dir: Path, result: StepResult, trackers: RunTrackers) -> None:
    """Rank 0's rows of a step: its metrics and logged samples, then the same to the trackers."""
    append_jsonl(run_dir / METRICS_FILE, [result.metrics])
    if result.logged:
        append_jsonl(run_dir / SAMPLES_FILE, result.logged)
    trackers.log_metrics(result.metrics)
    trackers.log_samples(result.metrics["step"], result.logged)


def _write_progress(trainer: Trainer, run_dir: Path, metrics: dict, started_wall: float, first_step: int) -> None:
    """Rank 0's report of a step, after its checkpoint: the log line and status."""
    config, step = trainer.config, trainer.step_done
    per_step = (trainer.wall_s - started_wall) / max(1, step - first_step)
    if step % LOG_EVERY_STEPS == 0 or "eval/accuracy" in metrics or step == first_step + 1:
        append_log(run_dir, training_line(metrics, config.steps, 1.0 / per_step if per_step > 0 else 0.0))
    update_status(run_dir, step=step, eta_s=round(per_step * (config.steps - step), 1),
                  message=f"loss {metrics['train/loss']:.4f}"
                  + (f", held-out accuracy {metrics['eval/accuracy']:.1%}" if "eval/accuracy" in metrics else ""))


def train(config: RunConfig, progress: bool = True) -> Path:
    """Check `config`'s inputs (`preflight.check_run_inputs`), create a run folder for it and
    train it here, in the foreground; returns the folder.

    The notebooks' entry point: `run_dir = train(RunConfig(method="opd", steps=60))`.
    """
    run_dir, owner = ownership.create_owned_run(check_run_inputs(config))
    state = run_training(run_dir, progress=progress, owner=owner)
    if state == "failed":
        raise RuntimeError(f"run {run_dir.name} failed: {load_status(run_dir).get('message')}")
    return run_dir
