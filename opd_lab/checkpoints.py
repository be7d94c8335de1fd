"""Checkpoints: save, find and restore a run's student and trainer state.

A checkpoint is a folder `checkpoints/step_000050/` holding the student (a full
`save_pretrained` model, or only the peft adapter for LoRA runs), the tokenizer, and
`trainer_state.pt` (step, optimizer, RNG states, counters). It is written under a
temporary name, fsynced, and renamed when complete, and `checkpoints/latest` is
updated last, so a run killed at any instant (or a machine that loses power) still has
its previous checkpoint intact; a save that fails (a full disk) removes its partial
folder. A checkpoint whose files cannot be deserialized (missing, short, garbage) is set
aside (`corrupt-step_...`) by `restore_newest`, which falls back to the one before;
any other error while loading (out of memory, an I/O error) is raised with nothing
renamed, since the checkpoint may be fine. Set-aside checkpoints are tried again
before a restore gives up. `prune` keeps the newest few and the best one (by held-out
accuracy).

`save` and `restore` take and return plain values (a model, a tokenizer, a state
dict), so they know nothing of the Trainer.

Example:
    >>> teacher, student, tokenizer = load_with_teacher(latest(run_dir), config)  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from opd_lab.models import check_pair_compatible, load_model
from opd_lab.files import fsync_directory, write_text_atomic
from opd_lab.paths import is_disk_full
from opd_lab.run_folder import CHECKPOINTS_DIR, RunError

STATE_FILE = "trainer_state.pt"
LATEST_FILE = "latest"
CORRUPT_PREFIX = "corrupt-"


class CorruptCheckpoint(RunError):
    """A checkpoint's files cannot be deserialized: a file is missing, short or not what it should be."""


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists())


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = Path(run_dir) / CHECKPOINTS_DIR / LATEST_FILE
    if pointer.exists():
        candidate = Path(run_dir) / CHECKPOINTS_DIR / pointer.read_text().strip()
        if (candidate / STATE_FILE).exists():
            return candidate
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def save(run_dir: str | Path, step: int, student, tokenizer, trainer_state: dict,
         student_state: dict | None = None) -> Path:
    """Write the checkpoint of `step`: the student (or its LoRA adapter), the tokenizer and
    `trainer_state` (anything `torch.save` takes); returns its folder.

    `student_state`: the student's whole state dict when its own parameters are shards
    (`sharding.full_model_state`); saved in the same files as an unsharded student's.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(run_dir, step)
    name = final.name
    partial = root / f".partial-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        student.save_pretrained(partial, **({"state_dict": student_state} if student_state is not None else {}))
        tokenizer.save_pretrained(partial)
        torch.save(trainer_state, partial / STATE_FILE)
        for file in partial.rglob("*"):
            if file.is_file():
                with file.open("rb+") as handle:
                    os.fsync(handle.fileno())
        fsync_directory(partial)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)  # a full disk must not stay full of half a checkpoint
        if is_disk_full(error):
            raise OSError(errno.ENOSPC, f"could not write the checkpoint of step {step} ({error})",
                          str(partial)) from error
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_directory(root)
    write_text_atomic(root / LATEST_FILE, name + "\n")
    return final


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """The folder of the checkpoint of `step` (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:06d}"


def step_of(checkpoint: Path) -> int:
    """The step a checkpoint folder holds: `step_000050` -> 50."""
    return int(checkpoint.name.split("_")[1])


def prune(run_dir: str | Path, keep_last: int, accuracy_by_step: dict[int, float]) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and the most accurate one.

    Args:
        accuracy_by_step: held-out accuracy at the steps where it was measured (the
            best checkpoint is the most accurate among those; the earliest on a tie).
    Returns:
        The deleted folders.
    """
    found = checkpoint_dirs(run_dir)
    keep = set(found[-keep_last:])
    scored = [(accuracy_by_step[step_of(c)], -step_of(c), c) for c in found if step_of(c) in accuracy_by_step]
    if scored:
        keep.add(max(scored)[2])
    removed = [c for c in found if c not in keep]
    for checkpoint in removed:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return removed


def is_corruption(error: BaseException) -> bool:
    """Whether a checkpoint failed to load because its files cannot be deserialized.

    Corruption: a missing file, a short or garbage pickle, zip archive or safetensors
    file, a library's "cannot load this file" (an OSError without an errno), weights of
    the wrong shape. Not corruption: running out of memory, an I/O error of the disk or
    a permission: those say nothing about the checkpoint, so it must not be set aside.
    """
    from safetensors import SafetensorError

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return False
    if isinstance(error, (pickle.UnpicklingError, EOFError, SafetensorError, json.JSONDecodeError,
                          UnicodeDecodeError)):
        return True
    if isinstance(error, OSError):
        return error.errno in (None, errno.ENOENT)
    if isinstance(error, RuntimeError):
        text = str(error)
        return any(mark in text for mark in ("PytorchStreamReader", "Error(s) in loading state_dict",
                                             "size mismatch", "invalid header", "unexpected EOF"))
    return False


def _restore_candidates(run_dir: Path) -> list[Path]:
    """Checkpoints to try, best first: by step, newest first; at one step the one the
    `latest` pointer names, then a set-aside one (it may have failed for a passing reason)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _plain_name(p).startswith("step_")]
    pointed = latest(run_dir)
    return sorted(found, key=lambda p: (checkpoints_step(p), p == pointed, not p.name.startswith(CORRUPT_PREFIX)),
                  reverse=True)


def _plain_name(checkpoint: Path) -> str:
    return checkpoint.name.removeprefix(CORRUPT_PREFIX)


def checkpoints_step(checkpoint: Path) -> int:
    """The step of a checkpoint folder, set aside or not (-1 for a name without one)."""
    try:
        return int(_plain_name(checkpoint).split("_")[1])
    except (IndexError, ValueError):
        return -1


def had_checkpoints(run_dir: str | Path) -> bool:
    """Whether the run ever saved a checkpoint that is still on disk (usable or set aside)."""
    return bool(_restore_candidates(Path(run_dir)))


def restore_newest(run_dir: str | Path, student, lora: bool, warn=print) -> dict | None:
    """Restore the newest checkpoint that loads into `student`; its trainer state, or
    None when the run has no checkpoint at all.

    A checkpoint whose files cannot be deserialized (`is_corruption`) is renamed
    `corrupt-step_...` (kept for a look) and the one before it is tried; `warn` is told
    each time. A set-aside checkpoint is tried again in its turn, and one that loads now
    gets its name back. Any other error (out of memory, a disk's I/O error) is raised at
    once and nothing is renamed.

    Raises:
        RunError: the run has checkpoints but none of them loads.
        MemoryError, OSError...: loading failed for a reason that is not the checkpoint's.
    """
    run_dir = Path(run_dir)
    tried = []
    for checkpoint in _restore_candidates(run_dir):
        try:
            state = restore(checkpoint, student, lora)
        except Exception as error:  # noqa: BLE001 - sorted by is_corruption below
            if not is_corruption(error):
                raise
            tried.append(_plain_name(checkpoint))
            if checkpoint.name.startswith(CORRUPT_PREFIX):
                warn(f"set-aside checkpoint {checkpoint.name} still does not load ({type(error).__name__}: {error})")
                continue
            aside = checkpoint.with_name(CORRUPT_PREFIX + checkpoint.name)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(checkpoint, aside)
            warn(f"checkpoint {checkpoint} does not load ({type(error).__name__}: {error}); "
                 f"moved it to {aside.name} and trying the one before")
            continue
        if checkpoint.name.startswith(CORRUPT_PREFIX):  # it loads after all: give it its name back
            plain = checkpoint.with_name(_plain_name(checkpoint))
            if not plain.exists():
                os.replace(checkpoint, plain)
                write_text_atomic(plain.parent / LATEST_FILE, plain.name + "\n")
            warn(f"set-aside checkpoint {checkpoint.name} loads now; continuing from it")
        return state
    if tried:
        raise RunError(f"no checkpoint of run {run_dir.name} loads ({', '.join(dict.fromkeys(tried))} were tried "
                       f"and are set aside as {CORRUPT_PREFIX}*); `opd-lab resume {run_dir.name} --from-scratch` "
                       "restarts it from step 0, keeping its old metrics, samples and checkpoints aside")
    return None


def restore(checkpoint: Path, student, lora: bool) -> dict:
    """Load a checkpoint's weights into `student` (built from the same config, LoRA-wrapped
    when `lora`) and return the trainer state saved with them."""
    from safetensors.torch import load_file

    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)  # first: it fails fastest
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(student, load_file(checkpoint / "adapter_model.safetensors"))
    else:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        student.load_state_dict(saved.state_dict())
    return state


def load_student(checkpoint: Path, config, device="cpu"):
    """`(model, tokenizer)` of a checkpoint, for evaluation or the playground."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "adapter_config.json").exists():
        from peft import PeftModel

        base, tokenizer = load_model(config.student, "student", config.task, device=device,
                                     trust_remote_code=config.trust_remote_code)
        return PeftModel.from_pretrained(base, checkpoint).eval(), tokenizer
    model, tokenizer = load_model(str(checkpoint), device=device)
    return model.eval(), tokenizer


def load_with_teacher(checkpoint: Path, config, device="cpu"):
    """`(teacher, student, tokenizer)`: a checkpoint's student and the teacher its run trained
    against, both in eval mode without gradients, after checking they share a tokenizer.

    Args:
        config: the run's `RunConfig` (`RunConfig.from_dict(run_folder.load_config(run_dir))`).

    Raises:
        ModelLoadError: a teacher that cannot be loaded or that does not match the student.
    """
    teacher, teacher_tokenizer = load_model(config.teacher, "teacher", config.task, device=device,
                                            trust_remote_code=config.trust_remote_code)
    student, tokenizer = load_student(checkpoint, config, device=device)
    check_pair_compatible(teacher_tokenizer, tokenizer)
    return teacher.eval().requires_grad_(False), student.eval().requires_grad_(False), tokenizer
