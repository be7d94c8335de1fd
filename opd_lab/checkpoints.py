"""Checkpoints: save, find and restore a run's student and trainer state.

A checkpoint is a folder `checkpoints/step_000050/` holding the student (a full
`save_pretrained` model, or only the peft adapter for LoRA runs), the tokenizer, and
`trainer_state.pt` (step, optimizer, RNG states, counters). It is written under a
temporary name, fsynced, and renamed when complete, and `checkpoints/latest` is
updated last, so a run killed at any instant (or a machine that loses power) still has
its previous checkpoint intact. A checkpoint that does not load all the same is set
aside (`corrupt-step_...`) by `restore_newest`, which falls back to the one before.
`prune` keeps the newest few and the best one (by held-out accuracy).

`save` and `restore` take and return plain values (a model, a tokenizer, a state
dict), so they know nothing of the Trainer.

Example:
    >>> teacher, student, tokenizer = load_with_teacher(latest(run_dir), config)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from opd_lab.models import check_pair_compatible, load_model
from opd_lab.files import fsync_directory, write_text_atomic
from opd_lab.run_folder import CHECKPOINTS_DIR, RunError

STATE_FILE = "trainer_state.pt"
LATEST_FILE = "latest"


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
    student.save_pretrained(partial, **({"state_dict": student_state} if student_state is not None else {}))
    tokenizer.save_pretrained(partial)
    torch.save(trainer_state, partial / STATE_FILE)
    for file in partial.rglob("*"):
        if file.is_file():
            with file.open("rb+") as handle:
                os.fsync(handle.fileno())
    fsync_directory(partial)
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


def restore_newest(run_dir: str | Path, student, lora: bool, warn=print) -> dict | None:
    """Restore the newest checkpoint that loads into `student`; its trainer state, or
    None when the run has no checkpoint.

    A checkpoint that fails to load is renamed `corrupt-step_...` (kept for a look,
    never loaded again) and the one before it is tried; `warn` is told each time.

    Raises:
        RunError: the run has checkpoints but none of them loads.
    """
    candidates = checkpoint_dirs(run_dir)
    pointed = latest(run_dir)
    if pointed is not None and pointed in candidates:  # the pointer first, then the rest newest first
        candidates.remove(pointed)
        candidates.append(pointed)
    tried = []
    for checkpoint in reversed(candidates):
        try:
            return restore(checkpoint, student, lora)
        except Exception as error:  # noqa: BLE001 - a corrupt file raises many types
            aside = checkpoint.with_name(f"corrupt-{checkpoint.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(checkpoint, aside)
            tried.append(checkpoint.name)
            warn(f"checkpoint {checkpoint} does not load ({type(error).__name__}: {error}); "
                 f"moved it to {aside.name} and trying the one before")
    if tried:
        raise RunError(f"no checkpoint of run {Path(run_dir).name} loads ({', '.join(tried)} were set aside as "
                       "corrupt-*); delete its checkpoints folder to restart it from step 0")
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
