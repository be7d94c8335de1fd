"""Continual learning on the lab: learn something new, forget, recover with OPD from the earlier self.

The seed's second result, scaled down (notebook 4 walks through it; the claims table
reads `python -m bench.continual_learning`):

1. the **original** model is a lab teacher that adds 3-digit numbers;
2. it is fine-tuned (SFT) on **new material**, writing a number's digits backwards (the
   `reverse` task), with a share of old data mixed in, and forgets much of addition;
3. on-policy distillation with the **original model as teacher**, on old prompts only,
   brings addition back while the new skill stays.

Example:
    >>> settings = ContinualSettings(learn_steps=300, recover_steps=150)
    >>> stages = run_continual_learning(settings, original="~/.cache/opd-lab/lab/addition/teacher")  # doctest: +SKIP
    >>> stages["after_recovery"]  # doctest: +SKIP
    {'old': 0.95, 'new': 0.9}
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from opd_lab import checkpoints
from opd_lab.config import RunConfig
from opd_lab.eval import evaluate
from opd_lab.models import load_model
from opd_lab.paths import data_dir
from opd_lab.tasks import get_task
from opd_lab.train import train


@dataclass(frozen=True)
class ContinualSettings:
    """The continual-learning recipe's settings (notebook 4's settings cell)."""

    old_task: str = "addition"
    new_task: str = "reverse"
    new_material_rows: int = 2000
    old_data_share: float = 0.3   # share of old-skill examples mixed into the fine-tuning data
    learn_steps: int = 300        # fine-tuning steps on the new material
    learn_rate: float = 1e-3      # a fast fine-tune, as when a model is adapted to a new domain
    recover_steps: int = 150      # OPD steps to recover the old skill
    eval_count: int = 200
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.old_data_share < 1:
            raise ValueError(f"old_data_share: must be in [0, 1) (got {self.old_data_share})")


def skills_of(model_path: str, settings: ContinualSettings) -> dict:
    """Held-out greedy accuracy of a saved model on the old (`old`) and the new (`new`) skill."""
    model, tokenizer = load_model(model_path)
    return {key: evaluate(model, tokenizer, get_task(task), count=settings.eval_count).accuracy
            for key, task in (("old", settings.old_task), ("new", settings.new_task))}


def write_new_material(settings: ContinualSettings, path: str | Path | None = None) -> tuple[Path, list[dict]]:
    """The fine-tuning file: new-skill rows plus `old_data_share` of old-skill rows, shuffled (JSONL)."""
    rng = random.Random(settings.seed)
    rows = [{"prompt": p.prompt, "answer": p.reference}
            for p in get_task(settings.new_task).train_problems(settings.new_material_rows, rng)]
    old_rows = round(settings.new_material_rows * settings.old_data_share / (1 - settings.old_data_share))
    rows += [{"prompt": p.prompt, "answer": p.reference} for p in get_task(settings.old_task).train_problems(old_rows, rng)]
    rng.shuffle(rows)
    path = Path(path) if path else data_dir() / "notebook-data" / "new-material.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, rows


def learn_config(settings: ContinualSettings, original: str, material: Path, name: str = "nb4-learn") -> RunConfig:
    """Step 1: plain SFT of the original model on the new material."""
    return RunConfig(name=name, method="sft", sft_source="reference", task=str(material), teacher=original,
                     student=original, finetune="full", steps=settings.learn_steps, learning_rate=settings.learn_rate,
                     eval_every=settings.learn_steps, eval_count=min(settings.eval_count, 50),
                     checkpoint_every=settings.learn_steps, seed=settings.seed)


def recover_config(settings: ContinualSettings, original: str, student: str, name: str = "nb4-recover") -> RunConfig:
    """Step 2: OPD on old prompts, the fine-tuned model as student, the original model as teacher."""
    every = max(1, settings.recover_steps // 5)
    return RunConfig(name=name, method="opd", task=settings.old_task, teacher=original, student=student,
                     finetune="full", steps=settings.recover_steps, eval_every=every, eval_count=settings.eval_count,
                     sample_every=every, checkpoint_every=settings.recover_steps, seed=settings.seed)


def run_continual_learning(settings: ContinualSettings, original: str) -> dict:
    """The three stages, end to end; returns each stage's skills and the runs' folders."""
    original = str(Path(original).expanduser())
    stages = {"original": skills_of(original, settings)}
    material, _ = write_new_material(settings)
    learn_dir = train(learn_config(settings, original, material), progress=False)
    after_learning = str(checkpoints.latest(learn_dir))
    stages["after_learning"] = skills_of(after_learning, settings)
    recover_dir = train(recover_config(settings, original, after_learning), progress=False)
    stages["after_recovery"] = skills_of(str(checkpoints.latest(recover_dir)), settings)
    return {"stages": stages, "runs": {"learn": str(learn_dir), "recover": str(recover_dir)}}
