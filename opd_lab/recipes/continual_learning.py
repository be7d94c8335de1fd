"""Recipe `continual-learning`: learn a company's documents, forget how to follow
instructions, get it back by OPD from the model's earlier self (the seed's second result).

Stages (each saved in `recipe.json` when it ends):

1. `before`: the original chat model's instruction following (`instructions`, the
   share of held-out prompts whose checks all pass) and its knowledge of the company
   (`company-qa`, held-out questions about facts it has never seen);
2. `finetune`: full fine-tuning (SFT on the references) on the company's documents
   and question-answer pairs (`company-docs`), until it answers the held-out questions
   or the step budget ends; both scores again;
3. `recover`: OPD on instruction prompts only, the fine-tuned model as student and the
   original model as teacher; both scores again: the seed's claim is that instruction
   following comes back and the new knowledge stays;
4. `mix`: the alternative the seed names, the same fine-tune with a share of old data
   mixed in (the original model's own answers to instruction prompts, since its
   instruction data is not public), for the same number of steps;
5. `kl_to_original`: how far each model's answers to held-out instruction prompts
   drifted from the original model's: the exact per-token reverse KL to the original on
   the model's own samples (`scoring.kl_to_reference`). A 135M model passes few
   instruction checks, so pass rates show forgetting coarsely; the KL shows it directly.
"""

from __future__ import annotations

import json
import random

from opd_lab.eval import answer
from opd_lab.recipes import Recipe, RecipeState
from opd_lab.recipes.scoring import kl_to_reference, last_step, load_stage_model, model_path, score
from opd_lab.tasks import get_task
from opd_lab.train import train

INSTRUCTIONS, FACTS, DOCUMENTS = "instructions", "company-qa", "company-docs"


def _counts(recipe: Recipe) -> dict[str, int]:
    return {INSTRUCTIONS: int(recipe.number("eval_instructions")), FACTS: int(recipe.number("eval_questions"))}


def write_mixture(recipe: Recipe, state: RecipeState, original: str, cap: int = 0) -> tuple[str, dict]:
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


def run(recipe: Recipe, state: RecipeState, progress_print=print) -> dict:
    """All four stages; returns the recipe's data (also in `recipe.json` and `recipe.md`)."""
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
    """`recipe.md`: the table of the four stages and what was run."""
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
