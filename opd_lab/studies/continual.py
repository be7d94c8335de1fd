"""Continual learning: learn something new, forget, recover by OPD from the model's earlier self.

The seed's second result, as one study with two settings that run the same named stages
in one study folder (`opd_lab.studies.stages`: `study.json`, resume by stage):

1. `before`: the **original** model's scores on the old skill and the new material;
2. `finetune`: fine-tuning (SFT) on **new material**, after which it forgets much of the
   old skill;
3. `recover`: on-policy distillation with the **original model as teacher**, on old
   prompts only, which brings the old skill back while the new one stays.

The two settings:

- **the lab** (`ContinualSettings`; notebook 4, `bench/continual_learning.py`): the
  original model is a lab teacher that adds 3-digit numbers; the new material is writing
  a number's digits backwards (the `reverse` task) with a share of old data mixed in;
  scores are held-out greedy accuracies on both tasks;
- **SmolLM2-135M-Instruct** (`opd-lab recipe continual-learning`, the settings `cpu`,
  `gpu` and `quick` of `continual-learning.yaml`): the new material is a fictional
  company's documents (`company-docs`), the old skill instruction following
  (`instructions`, the share of held-out prompts whose checks all pass), the new
  knowledge held-out questions about the company (`company-qa`). Two more stages:
  `mix`, the alternative the seed names (the same fine-tune with a share of old data
  mixed in: the original model's own answers to instruction prompts, since its
  instruction data is not public), and `kl_to_original`, how far each model's answers
  to held-out instruction prompts drifted from the original's (the exact per-token
  reverse KL on the model's own samples, `scoring.kl_to_reference`). A 135M model passes
  few instruction checks, so pass rates show forgetting coarsely; the KL shows it directly.

Example:
    >>> lab = run_continual(ContinualSettings(learn_steps=300, recover_steps=150),
    ...                     original="~/.cache/opd-lab/lab/addition/teacher")  # doctest: +SKIP
    >>> lab_skills(lab)["recover"]  # doctest: +SKIP
    {'old': 0.95, 'new': 0.29}
    >>> results_table(run_continual("cpu"))  # SmolLM2, about 20 minutes on 2 cores  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from opd_lab import checkpoints
from opd_lab.config import RunConfig
from opd_lab.eval import answer, evaluate
from opd_lab.models import load_model
from opd_lab.paths import data_dir
from opd_lab.studies.recipes import Recipe, load_recipe, open_recipe
from opd_lab.studies.scoring import kl_to_reference, last_step, load_stage_model, model_path, score
from opd_lab.studies.stages import StudyState
from opd_lab.tasks import get_task
from opd_lab.train import train

STUDY = "continual-learning"
LAB_SETTING = "lab"
LAB_STAGES = {"before": "original model", "finetune": "after learning the new material",
              "recover": "after OPD from the original"}
INSTRUCTIONS, FACTS, DOCUMENTS = "instructions", "company-qa", "company-docs"


def run_continual(setting: ContinualSettings | str, out: str | Path | None = None, original: str | None = None,
                  progress_print=print) -> dict:
    """The continual-learning study in one setting, end to end (or finished in `out`);
    returns its data (`study.json`: `stages` holds each stage's scores and runs) and its `folder`.

    Args:
        setting: a `ContinualSettings` (the lab), or a setting of the SmolLM2 recipe file
            (`auto`, `cpu`, `gpu`, `quick`).
        out: the study folder to go on with; default a new one under the data dir.
        original: the lab setting's original model (default: the built lab teacher of
            `old_task`); the SmolLM2 settings name theirs in the recipe file.

    Raises:
        ConfigError: `out` holds another study or setting; an unknown recipe setting.
    """
    if isinstance(setting, str):
        recipe = load_recipe(STUDY, setting)
        state = open_recipe(recipe, out)
        progress_print(f"recipe {recipe.name} ({recipe.setting}) in {state.folder}")
        return {**run_recipe_stages(recipe, state, progress_print), "folder": str(state.folder)}
    from opd_lab.paths import lab_dir

    original = str(Path(original).expanduser()) if original else str(lab_dir(setting.old_task) / "teacher")
    folder = out or data_dir() / "studies" / f"{STUDY}-{LAB_SETTING}-{time.strftime('%Y%m%d-%H%M%S')}"
    state = StudyState.open(folder, study=STUDY, setting=LAB_SETTING, settings=asdict(setting), original=original)
    return {**run_lab(setting, state, original, progress_print), "folder": str(state.folder)}


# The lab setting (notebook 4 walks through it; the claims table reads `python -m bench.continual_learning`).
@dataclass(frozen=True)
class ContinualSettings:
    """The lab setting of the continual-learning study (notebook 4's settings cell)."""

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


def write_new_material(settings: ContinualSettings, path: str | Path) -> tuple[Path, list[dict]]:
    """The fine-tuning file: new-skill rows plus `old_data_share` of old-skill rows, shuffled (JSONL)."""
    rng = random.Random(settings.seed)
    rows = [{"prompt": p.prompt, "answer": p.reference}
            for p in get_task(settings.new_task).train_problems(settings.new_material_rows, rng)]
    old_rows = round(settings.new_material_rows * settings.old_data_share / (1 - settings.old_data_share))
    rows += [{"prompt": p.prompt, "answer": p.reference} for p in get_task(settings.old_task).train_problems(old_rows, rng)]
    rng.shuffle(rows)
    path = Path(path)
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


def run_lab(settings: ContinualSettings, state: StudyState, original: str, progress_print=print) -> dict:
    """The lab setting's stages (`before`, `finetune`, `recover`); returns the study's data."""
    state.run_stage("before", lambda: {"scores": skills_of(original, settings)}, progress_print)

    def finetune():
        material, _ = write_new_material(settings, state.folder / "new-material.jsonl")
        run_dir = train(learn_config(settings, original, material), progress=False)
        model = str(checkpoints.latest(run_dir))
        return {"run": run_dir.name, "run_dir": str(run_dir), "model": model, "scores": skills_of(model, settings)}

    tuned = state.run_stage("finetune", finetune, progress_print)

    def recover():
        run_dir = train(recover_config(settings, original, tuned["model"]), progress=False)
        model = str(checkpoints.latest(run_dir))
        return {"run": run_dir.name, "run_dir": str(run_dir), "model": model, "scores": skills_of(model, settings)}

    state.run_stage("recover", recover, progress_print)
    state.finish(lab_markdown(state.data), progress_print)
    return state.data


def lab_skills(data: dict) -> dict[str, dict[str, float]]:
    """Stage -> held-out accuracy on the old and the new skill (`{"old", "new"}`), of a lab study's data."""
    return {stage: data["stages"][stage]["scores"] for stage in LAB_STAGES if stage in data["stages"]}


def lab_markdown(data: dict) -> str:
    """`study.md` of the lab setting: each stage's accuracy on both skills."""
    settings = data["settings"]
    lines = [f"# Continual learning on the lab ({settings['old_task']}, then {settings['new_task']})", "",
             "| stage | old skill | new skill |", "|---|---|---|"]
    lines += [f"| {LAB_STAGES[stage]} | {skills['old']:.1%} | {skills['new']:.1%} |"
              for stage, skills in lab_skills(data).items()]
    return "\n".join(lines) + "\n"


# The SmolLM2 setting (`opd-lab recipe continual-learning`).


def _counts(recipe: Recipe) -> dict[str, int]:
    return {INSTRUCTIONS: int(recipe.number("eval_instructions")), FACTS: int(recipe.number("eval_questions"))}


def write_mixture(recipe: Recipe, state: StudyState, original: str, cap: int = 0) -> tuple[str, dict]:
    """The fine-tuning file with old data mixed in: company rows plus the original model's
    greedy answers to instruction training prompts, `old_share` of the rows (JSONL)."""
    share = float(recipe.number("old_share"))
    if not 0 < share < 1:
        raise ValueError(f"{recipe.path}: old_share must be in (0, 1) (got {share})")
    rng = random.Random(int(recipe.values.get("seed", 0)))
    model, tokenizer = load_stage_model(original)
    instructions = get_task(INSTRUCTIONS)
    if cap:
        instructions.max_new_tokens = min(instructions.max_new_tokens, cap)
    prompts = instructions.train_problems(int(recipe.number("old_prompts")), rng)
    old = [{"prompt": r["prompt"], "answer": "", "reference": r["completion"]}
           for r in answer(model, tokenizer, instructions, list({p.prompt: p for p in prompts}.values()), progress=True)]
    total = int(recipe.number("mix_rows"))
    new = [{"prompt": p.prompt, "answer": p.answer, "reference": p.reference}
           for p in get_task(DOCUMENTS).train_problems(round(total * (1 - share)), rng)]
    rows = new + [rng.choice(old) for _ in range(total - len(new))]
    rng.shuffle(rows)
    path = state.folder / "mixture.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path), {"rows": len(rows), "old_rows": len(rows) - len(new), "old_answers": len(old)}


def run_recipe_stages(recipe: Recipe, state: StudyState, progress_print=print) -> dict:
    """The SmolLM2 setting's stages; returns the study's data (also in `study.json` and `study.md`)."""
    original = str(recipe.number("model"))
    cap = int(recipe.values.get("eval_max_new_tokens", 0))
    counts = _counts(recipe)
    fixed = {"teacher": original, "finetune": "full"}

    state.run_stage("before", lambda: {"scores": score(original, counts, cap)}, progress_print)

    def finetune():
        config = recipe.stage("finetune", name="cl-finetune", method="sft", sft_source="reference", task=DOCUMENTS,
                              student=original, **fixed)
        run_dir = train(config)
        return {"run": run_dir.name, "run_dir": str(run_dir), "model": model_path(run_dir),
                "steps": last_step(run_dir), "scores": score(run_dir, counts, cap)}

    tuned = state.run_stage("finetune", finetune, progress_print)

    def recover():
        config = recipe.stage("recover", name="cl-recover", method="opd", task=INSTRUCTIONS,
                              student=tuned["model"], **fixed)
        run_dir = train(config)
        return {"run": run_dir.name, "run_dir": str(run_dir), "steps": last_step(run_dir),
                "scores": score(run_dir, counts, cap)}

    state.run_stage("recover", recover, progress_print)

    def mix():
        path, mixture = write_mixture(recipe, state, original, cap)
        config = recipe.stage("finetune", name="cl-mix", method="sft", sft_source="reference", task=path,
                              student=original, steps=tuned["steps"], stop_at_accuracy=0.0, **fixed)
        run_dir = train(config)
        return {"run": run_dir.name, "run_dir": str(run_dir), "mixture": mixture, "steps": last_step(run_dir),
                "scores": score(run_dir, counts, cap)}

    state.run_stage("mix", mix, progress_print)
    recover_tokens = recipe.stage("recover").max_new_tokens or 64
    state.run_stage("kl_to_original", lambda: {"models": kl_to_reference(
        original, {key: state.data["stages"][key]["run_dir"] for key in ("finetune", "recover", "mix")},
        INSTRUCTIONS, counts[INSTRUCTIONS], cap or recover_tokens)}, progress_print)
    state.finish(markdown(state.data), progress_print)
    return state.data


ROWS = (("before", "original model"), ("finetune", "after the fine-tune on the documents"),
        ("recover", "after OPD from the original model"), ("mix", "fine-tune with old data mixed in (instead)"))


def results_table(data: dict) -> list[dict]:
    """One row per stage: instruction following and company knowledge (held-out)."""
    rows = []
    for key, label in ROWS:
        stage = data["stages"].get(key)
        if not stage:
            continue
        scores = stage["scores"]
        rows.append({"stage": label, "steps": stage.get("steps", 0),
                     "instructions (all checks)": f"{scores[INSTRUCTIONS]['accuracy']:.1%}",
                     "instructions (checks passed)": f"{scores[INSTRUCTIONS]['reward']:.1%}",
                     "company questions": f"{scores[FACTS]['accuracy']:.1%}",
                     "KL to the original": _kl(data, key),
                     "minutes": f"{stage.get('seconds', 0) / 60:.1f}"})
    return rows


def _kl(data: dict, key: str) -> str:
    if key == "before":
        return "0"
    found = data["stages"].get("kl_to_original", {}).get("models", {}).get(key)
    return f"{found['kl']:.3f}" if found else "-"


def markdown(data: dict) -> str:
    """`study.md` of a SmolLM2 setting: the table of the four stages and what was run."""
    rows = results_table(data)
    counts = (data["settings"].get("eval_instructions"), data["settings"].get("eval_questions"))
    lines = [f"# Recipe continual-learning ({data['setting']})", "",
             f"Model `{data['settings'].get('model')}`. Held-out greedy scores: {counts[0]} instruction prompts "
             f"(all checks passed, and the mean share of checks passed) and {counts[1]} questions about the company.",
             "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    lines += ["", "KL to the original: the exact per-token reverse KL (nats) from each model to the original "
              "model on its own samples of the held-out instruction prompts, how far its answers drifted."]
    runs = [f"`{data['stages'][k]['run']}` ({k})" for k, _ in ROWS if data["stages"].get(k, {}).get("run")]
    lines += ["", "Runs: " + ", ".join(runs) + "."]
    return "\n".join(lines) + "\n"
