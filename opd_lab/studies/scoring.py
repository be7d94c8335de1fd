"""What a recipe measures after each stage: held-out scores of a model on several tasks.

A stage's model is named the way runs name models (`opd_lab.model_spec`: `smollm2`, a
model folder...) or is a finished run (its folder, or `run:ID[/step_N]`), whose newest
(or named) checkpoint is loaded, with its LoRA adapter on its base model when it has one. The scores come from `opd_lab.eval`, the
same greedy evaluation the runs log, so a recipe's table and its runs' curves agree.
"""

from __future__ import annotations

from pathlib import Path

from opd_lab import checkpoints, model_spec
from opd_lab.config import RunConfig
from opd_lab.eval import evaluate
from opd_lab.models import load_model
from opd_lab.run_folder import CHECKPOINTS_DIR, load_config, load_status, run_path
from opd_lab.tasks import get_task


def load_stage_model(source: str | Path):
    """`(model, tokenizer)` in eval mode: a model spec, or a run folder's newest checkpoint.

    Raises:
        FileNotFoundError: a run folder without a checkpoint.
    """
    parsed = model_spec.parse(str(source))
    if parsed.kind in (model_spec.RUN_FOLDER, model_spec.CHECKPOINT):
        folder = Path(str(source)).expanduser() if parsed.kind == model_spec.RUN_FOLDER else run_path(parsed.run_id)
        checkpoint = folder / CHECKPOINTS_DIR / parsed.checkpoint if parsed.checkpoint else checkpoints.latest(folder)
        if checkpoint is None or not checkpoint.is_dir():
            raise FileNotFoundError(f"run {folder.name} has no checkpoint {parsed.checkpoint} to evaluate")
        return checkpoints.load_student(checkpoint, RunConfig.from_dict(load_config(folder)))
    model, tokenizer = load_model(str(source))
    return model.eval(), tokenizer


def model_path(run_dir: str | Path) -> str:
    """The newest checkpoint of a run, as a model spec for the next stage.

    Raises:
        FileNotFoundError: the run has no checkpoint, or its checkpoint is a LoRA adapter
            only (a next stage needs a whole model: train that stage with `finetune: full`).
    """
    checkpoint = checkpoints.latest(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"run {Path(run_dir).name} has no checkpoint")
    if (checkpoint / "adapter_config.json").exists():
        raise FileNotFoundError(f"run {Path(run_dir).name} saved a LoRA adapter, not a whole model: "
                                "train the stage that feeds another with finetune: full")
    return str(checkpoint)


def score(source: str | Path, counts: dict[str, int], max_new_tokens: int = 0, progress: bool = True) -> dict[str, dict]:
    """Held-out scores of one model on each task of `counts` (task name -> problems).

    Per task: `accuracy` (greedy answers judged correct: for instruction prompts, every
    check passed), `reward` (the mean reward: for instruction prompts, the share of checks
    passed), `count`, and three example answers. `max_new_tokens > 0` caps the answers'
    length below each task's own limit (quick smoke tests only).
    """
    model, tokenizer = load_stage_model(source)
    scores = {}
    for task_name, count in counts.items():
        result = evaluate(model, tokenizer, get_task(task_name), count=count, progress=progress,
                          max_new_tokens=max_new_tokens)
        scores[task_name] = {
            "accuracy": result.accuracy,
            "reward": sum(r["reward"] for r in result.records) / len(result.records),
            "count": result.count,
            "examples": [{"prompt": r["prompt"], "completion": r["completion"], "correct": r["correct"]}
                         for r in result.records[:3]],
        }
    return scores


def last_step(run_dir: str | Path) -> int:
    """The step a finished run stopped at (fewer than its budget when it stopped early)."""
    return int(load_status(run_dir).get("step", 0))


def kl_to_reference(reference: str, students: dict[str, str | Path], task_name: str, prompts: int,
                    max_new_tokens: int) -> dict[str, dict]:
    """How far each model is from `reference` (the teacher, or the model before a
    fine-tune): its mean exact reverse KL per token to `reference`, and the share of its
    tokens in the reference's top 5, on its own temperature-1 samples of the first
    `prompts` held-out prompts of `task_name` (`pair_check.student_sample_stats`).

    A continuous measure beside pass rates, which a small model's few passes make coarse.
    """
    from opd_lab.pair_check import student_sample_stats

    teacher, _ = load_stage_model(reference)
    held_out = [p.prompt for p in get_task(task_name).eval_problems(prompts)]
    found = {}
    for name, source in students.items():
        student, tokenizer = load_stage_model(source)
        kl, agreement, tokens = student_sample_stats(teacher, student, tokenizer, held_out, max_new_tokens, top_k=5)
        found[name] = {"kl": kl, "top5_agreement": agreement, "tokens": tokens}
    return found
