"""Checkpoints: save, find and restore a run's student and trainer state.

A checkpoint is a folder `checkpoints/step_000050/` holding the student (a full
`save_pretrained` model, or only the peft adapter for LoRA runs), the tokenizer, and
`trainer_state.pt` (step, optimizer, RNG states, counters). It is written under a
temporary name and renamed when complete, and `checkpoints/latest` is updated last, so
a run killed at any instant still has its previous checkpoint intact.

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
from opd_lab.run_folder import CHECKPOINTS_DIR

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


def save(run_dir: str | Path, step: int, student, tokenizer, trainer_state: dict) -> Path:
    """Write the checkpoint of `step`: the student (or its LoRA adapter), the tokenizer and
    `trainer_state` (anything `torch.save` takes); returns its folder."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final, partial = root / name, root / f".partial-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    student.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    torch.save(trainer_state, partial / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    pointer_tmp = root / f".{LATEST_FILE}.tmp"
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, root / LATEST_FILE)
    return final


def restore(checkpoint: Path, student, lora: bool) -> dict:
    """Load a checkpoint's weights into `student` (built from the same config, LoRA-wrapped
    when `lora`) and return the trainer state saved with them."""
    from safetensors.torch import load_file

    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(student, load_file(checkpoint / "adapter_model.safetensors"))
    else:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        student.load_state_dict(saved.state_dict())
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)


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
