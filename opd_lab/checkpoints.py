"""Checkpoints: save, find and restore a run's student and trainer state.

A checkpoint is a folder `checkpoints/step_000050/` holding the student (a full
`save_pretrained` model, or only the peft adapter for LoRA runs), the tokenizer, and
`trainer_state.pt` (step, optimizer, RNG states, counters). It is written under a
temporary name and renamed when complete, and `checkpoints/latest` is updated last, so
a run killed at any instant still has its previous checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from opd_lab.runfiles import CHECKPOINTS_DIR

STATE_FILE = "trainer_state.pt"
LATEST_FILE = "latest"


def prepare_student(student, config):
    """Wrap the student in LoRA adapters (peft) on all linear layers."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(student, lora)


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


def save(trainer, run_dir: str | Path) -> Path:
    """Write a checkpoint of `trainer` at its current step; returns its folder."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{trainer.step_done:06d}"
    final, partial = root / name, root / f".partial-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    trainer.student.save_pretrained(partial)
    trainer.tokenizer.save_pretrained(partial)
    torch.save(trainer.state(), partial / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    pointer_tmp = root / f".{LATEST_FILE}.tmp"
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, root / LATEST_FILE)
    return final


def restore(trainer, checkpoint: Path) -> None:
    """Load a checkpoint's weights and trainer state into `trainer` (built from the same config)."""
    from safetensors.torch import load_file

    if trainer.lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(trainer.student, load_file(checkpoint / "adapter_model.safetensors"))
    else:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        trainer.student.load_state_dict(saved.state_dict())
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    trainer.load_state(state)


def load_student(checkpoint: Path, config, device="cpu"):
    """`(model, tokenizer)` of a checkpoint, for evaluation or the playground."""
    from opd_lab.models import load_model

    checkpoint = Path(checkpoint)
    if (checkpoint / "adapter_config.json").exists():
        from peft import PeftModel

        base, tokenizer = load_model(config.student, "student", config.task, device=device,
                                     trust_remote_code=config.trust_remote_code)
        return PeftModel.from_pretrained(base, checkpoint).eval(), tokenizer
    model, tokenizer = load_model(str(checkpoint), device=device)
    return model.eval(), tokenizer
