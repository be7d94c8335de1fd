"""Recipe `prune-distill`: drop a block of layers from a chat model, then recover it by
OPD from the full model, against SFT on the teacher's answers and RL on the checks.

Stages (each saved in the folder's `study.json` when it ends):

1. `prune`: choose the block of `drop_layers` consecutive layers whose input and output
   hidden states are the most alike on a few instruction prompts (`opd_lab.prune`),
   drop it, and save the student under the data dir (same tokenizer and chat template);
2. `reference`: the full model's (the teacher's) and the pruned student's held-out
   instruction following, the two ends of the gap;
3. `rl`, `sft`, `opd`: one run each from the pruned student, with the same sequences
   per step, steps, learning rate, seed and evaluation (`opd_lab.studies.arms.arm_overrides`);
4. `kl_to_teacher`: each model's exact per-token reverse KL to the teacher on its own
   samples of the held-out prompts (`pair_check.student_sample_stats`), a continuous
   measure of how close it came to the teacher: a 135M model passes few instruction
   checks, so the pass rates alone separate the methods by a handful of prompts;
5. the verdict and the compute-to-target numbers from `opd_lab.report`, the code that
   judges the lab's `opd-lab compare` reports.
"""

from __future__ import annotations

from pathlib import Path

from opd_lab import report
from opd_lab.studies.arms import arm_overrides
from opd_lab.models import load_model
from opd_lab.paths import data_dir
from opd_lab.prune import choose_block, drop_layers, layers_to_keep, save_pruned
from opd_lab.studies.recipes import Recipe
from opd_lab.studies.stages import StudyState
from opd_lab.studies.scoring import kl_to_reference, last_step, score
from opd_lab.run_folder import load_metrics
from opd_lab.tasks import get_task
from opd_lab.train import train

TASK = "instructions"
ARMS = ("rl", "sft", "opd")


def prune(original: str, drop: int, probe_prompts: int, folder: Path) -> dict:
    """Drop the most redundant block of `drop` layers from `original`; save it in `folder`."""
    import random

    model, tokenizer = load_model(original)
    model.eval()
    total = model.config.num_hidden_layers
    prompts = [p.prompt for p in get_task(TASK).train_problems(probe_prompts, random.Random(0))]
    start, distances = choose_block(model, tokenizer, prompts, drop)
    parameters = sum(p.numel() for p in model.parameters())
    drop_layers(model, layers_to_keep(total, drop, start))
    save_pruned(model, tokenizer, folder)
    return {"model": str(folder), "layers": total, "dropped": list(range(start, start + drop)),
            "distances": {str(k): round(v, 4) for k, v in distances.items()},
            "parameters": parameters, "parameters_after": sum(p.numel() for p in model.parameters())}


def run(recipe: Recipe, state: StudyState, progress_print=print) -> dict:
    """All stages; returns the recipe's data (also in `study.json` and `study.md`)."""
    original = str(recipe.number("model"))
    cap = int(recipe.values.get("eval_max_new_tokens", 0))
    drop = int(recipe.number("drop_layers"))
    eval_count = int(recipe.number("eval_instructions"))
    folder = data_dir() / "models" / f"{Path(original).stem}-drop{drop}"

    pruned = state.run_stage("prune", lambda: prune(original, drop, int(recipe.values.get("probe_prompts", 16)),
                                                    folder), progress_print)
    reference = state.run_stage("reference", lambda: {
        "teacher": score(original, {TASK: eval_count}, cap)[TASK],
        "student": score(pruned["model"], {TASK: eval_count}, cap)[TASK]}, progress_print)
    base, teacher = reference["student"]["accuracy"], reference["teacher"]["accuracy"]
    sequences = int(recipe.number("sequences_per_step"))

    for arm in ARMS:
        def train_arm(arm=arm):
            config = recipe.stage("train", name=f"pd-{arm}", task=TASK, teacher=original, student=pruned["model"],
                                  eval_count=eval_count, **arm_overrides(arm, sequences))
            run_dir = train(config)
            return {"run": run_dir.name, "run_dir": str(run_dir), "learning_rate": config.learning_rate,
                    "steps": last_step(run_dir),
                    "scores": score(run_dir, {TASK: eval_count}, cap)[TASK]}

        state.run_stage(arm, train_arm, progress_print)

    train_config = recipe.stage("train")
    state.run_stage("kl_to_teacher", lambda: {"models": kl_to_reference(
        original, {"student": pruned["model"], **{arm: state.data["stages"][arm]["run_dir"] for arm in ARMS}},
        TASK, eval_count, cap or train_config.max_new_tokens or 64)}, progress_print)
    steps = train_config.steps
    summaries = {arm: report.summarize_arm([load_metrics(state.data["stages"][arm]["run_dir"])], base, teacher)
                 for arm in ARMS}
    state.data["summaries"] = summaries
    state.data["verdict"] = report.verdict(summaries, base, teacher, budget_steps=steps)
    state.finish(markdown(state.data), progress_print)
    return state.data


def markdown(data: dict) -> str:
    """`study.md`: the pruned model, the gap, each method's result and the verdict."""
    stages, settings = data["stages"], data["settings"]
    pruned, reference = stages["prune"], stages["reference"]
    lines = [f"# Recipe prune-distill ({data['setting']})", "",
             f"**Verdict.** {data['verdict']['sentence']}", "",
             f"Student: `{settings.get('model')}` without layers {pruned['dropped'][0]}-{pruned['dropped'][-1]} "
             f"({pruned['layers'] - len(pruned['dropped'])} of {pruned['layers']} layers, "
             f"{pruned['parameters_after'] / 1e6:.1f}M of {pruned['parameters'] / 1e6:.1f}M parameters). "
             f"Held-out instruction prompts: {settings.get('eval_instructions')} (greedy; accuracy = every check "
             "passed, checks = mean share of checks passed).", "",
             "| model | steps | learning rate | steps to close half the gap | FLOPs to close half the gap "
             "| instructions (all checks) | instructions (checks passed) | KL to the teacher | minutes |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| teacher (full model) | - | - | - | - | {reference['teacher']['accuracy']:.1%} | "
             f"{reference['teacher']['reward']:.1%} | 0 | - |",
             f"| pruned student, before training | 0 | - | - | - | {reference['student']['accuracy']:.1%} | "
             f"{reference['student']['reward']:.1%} | {_kl(data, 'student')} | - |"]
    for arm in ARMS:
        stage = stages.get(arm)
        if stage:
            half = next(t for t in data["summaries"][arm]["targets"] if t["fraction"] == 0.5)
            reached = half["reached"] > 0
            lines.append(f"| {report.arm_label(arm)} | {stage['steps']} | {stage['learning_rate']:g} | "
                         f"{half['steps']['median'] if reached else 'not reached'} | "
                         f"{format(half['flops']['median'], '.2g') if reached else 'not reached'} | "
                         f"{stage['scores']['accuracy']:.1%} | {stage['scores']['reward']:.1%} | "
                         f"{_kl(data, arm)} | {stage['seconds'] / 60:.1f} |")
    lines += ["", "KL to the teacher: the exact per-token reverse KL (nats) from each model to the full model on "
              "its own samples of the held-out prompts (temperature 1), what OPD minimizes; SFT minimizes the "
              "forward KL on the teacher's samples and RL the checks' reward, so this column favours OPD by design."]
    runs = ", ".join(f"`{stages[arm]['run']}` ({arm})" for arm in ARMS if stages.get(arm))
    lines += ["", f"Runs: {runs}. They open in the app's Runs, Compare and Inspect tabs."]
    return "\n".join(lines) + "\n"


def _kl(data: dict, name: str) -> str:
    found = data["stages"].get("kl_to_teacher", {}).get("models", {}).get(name)
    return f"{found['kl']:.3f}" if found else "-"
