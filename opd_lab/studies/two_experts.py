"""The `two-experts` lab scenario: merge an addition expert and a sorting expert into one student.

Multi-teacher on-policy distillation ("merging experts") trains one student on prompts
of several domains, each judged by the expert of its domain (`teacher_routing`). This
study asks whether that keeps both skills where training on one domain after the other
forgets the first, and what it costs against the alternatives:

- the **teachers**: the lab's addition teacher (`lab:addition`) and sorting teacher
  (`lab:sorting`), each near-perfect on its task;
- the **student** (`lab:two-experts`): a fresh small model given a brief SFT on a
  mixture of both teachers' greedy solutions: it has the foundation of both skills
  (the format, the digits and letters) but masters neither;
- the **arms**, each with the same step budget, batch and evaluation:
  1. `multi-teacher-opd`: OPD on a 50/50 batch, each prompt scored by its task's teacher;
  2. `sft-mixture`: SFT on a 50/50 mixture of both teachers' fresh samples;
  3. `sequential-opd`: OPD on addition for half the budget, then on sorting (the
     other task has weight 0: measured at every evaluation, never trained on);
  4. `rl-both`: RL (GRPO) on a 50/50 batch with both tasks' verifiers as reward.

Every arm's held-out greedy accuracy on each task is logged over steps and FLOPs; at
the end each arm's final student is also scored with sampled completions. The report
(`report.json`, `report.md`) ends with the verdict of the claim "OPD keeps two experts'
skills where sequential training forgets".

Run:
    opd-lab compare --scenario two-experts           # the measured setting (see docs/claims.md)
    opd-lab compare --scenario two-experts --quick   # tiny models, seconds: tests and notebooks

Example:
    >>> settings = TwoExpertsSettings(quick=True)
    >>> settings.arm_configs("lab:two-experts-quick")["sequential-opd"][1].task_weights
    'sorting=1,addition=0'
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from opd_lab import checkpoints
from opd_lab.config import RL_SAMPLES_PER_PROMPT, RunConfig
from opd_lab.eval import answer, evaluate
from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab, sft_train
from opd_lab.models import build_lab_model, load_model
from opd_lab.paths import data_dir, lab_dir
from opd_lab.files import write_json_atomic, write_text_atomic
from opd_lab.run_folder import load_metrics, task_metric
from opd_lab.studies.stages import StudyState
from opd_lab.tasks import get_task
from opd_lab.tokenizer import build_char_tokenizer
from opd_lab.train import train

TASKS = ("addition", "sorting")
ARMS = ("multi-teacher-opd", "sft-mixture", "sequential-opd", "rl-both")
CLAIM = "OPD keeps two experts' skills where sequential training forgets"


@dataclass(frozen=True)
class TwoExpertsSettings:
    """The scenario's models and budgets (`quick`: tiny models and budgets, for tests)."""

    steps: int = 200
    """Optimizer steps of every arm (sequential OPD: half on each task)."""
    batch_size: int = 32
    """Sequences per step, the same for every arm (RL: a quarter of the prompts, 4 samples each)."""
    opd_learning_rate: float = 3e-5
    sft_learning_rate: float = 1e-4
    rl_learning_rate: float = 1e-5
    """Each method's rate as the `baseline` scenario's sweep picked it (opd_lab/data/results/baseline.json).
    One rate of 3e-4 for every arm made OPD lose both skills (addition 15% -> 5%, sorting 52% -> 31%)."""
    eval_every: int = 20
    eval_count: int = 100
    sampled_eval_count: int = 100
    """Problems per task of the final sampled-accuracy evaluation (one sample each, temperature 1)."""
    student_examples: int = 1024
    """Teacher solutions per task in the base student's brief SFT."""
    student_steps: int = 700
    """Its steps (the lab's own base student: 1024 solutions of one task, 700 steps). With
    300 steps on 512 of each, it was at 4% on addition and 0% on sorting: no foundation,
    and 120 OPD steps at 1e-4 left it there."""
    seed: int = 0
    quick: bool = False

    def __post_init__(self):
        if self.steps < 2 or self.steps % 2:
            raise ValueError(f"steps: an even number of at least 2 (sequential OPD halves it), got {self.steps}")

    @property
    def lab_name(self) -> str:
        return "two-experts" + ("-quick" if self.quick else "")

    def teacher_recipes(self) -> list[LabRecipe]:
        """The labs of the two teachers: the standard ones (`lab:addition`, `lab:sorting`), or
        tiny ones of their own (`lab:addition-quick`, ...) that leave the standard labs alone."""
        return [LabRecipe.for_task(task, **(dict(TINY_RECIPE, name=f"{task}-quick") if self.quick else {}))
                for task in TASKS]

    def arm_configs(self, student: str) -> dict[str, list[RunConfig]]:
        """Each arm's runs, in order (sequential OPD: two stages, the second's student is the first's result)."""
        teachers = ",".join(f"{recipe.task}=lab:{recipe.lab_name}" for recipe in self.teacher_recipes())
        both = ",".join(f"{task}=1" for task in TASKS)
        common = dict(teachers=teachers, student=student, steps=self.steps, batch_size=self.batch_size,
                      learning_rate=self.opd_learning_rate, eval_every=self.eval_every, eval_count=self.eval_count,
                      sample_every=self.eval_every, checkpoint_every=self.steps, max_new_tokens=0, seed=self.seed,
                      finetune="full")
        half = dict(common, steps=self.steps // 2, checkpoint_every=self.steps // 2)
        rl_prompts = max(1, self.batch_size // RL_SAMPLES_PER_PROMPT)
        return {
            "multi-teacher-opd": [RunConfig(name="two-experts-opd", method="opd", task_weights=both, **common)],
            "sft-mixture": [RunConfig(name="two-experts-sft", method="sft", task_weights=both,
                                      **dict(common, learning_rate=self.sft_learning_rate))],
            "sequential-opd": [
                RunConfig(name="two-experts-seq1", method="opd", task_weights="addition=1,sorting=0", **half),
                RunConfig(name="two-experts-seq2", method="opd", task_weights="sorting=1,addition=0", **half)],
            "rl-both": [RunConfig(name="two-experts-rl", method="rl", task_weights=both,
                                  **dict(common, batch_size=rl_prompts, samples_per_prompt=RL_SAMPLES_PER_PROMPT,
                                         learning_rate=self.rl_learning_rate))],
        }


def build_student(settings: TwoExpertsSettings, progress_print=print) -> dict:
    """Build both teachers' labs (reused when built) and the base student `lab:<lab_name>`.

    The student is a fresh lab model (the size of the labs' base students) trained
    briefly on both teachers' greedy solutions, shuffled together. Returns its summary
    (each task's accuracy of teachers and student).
    """
    summaries = {recipe.task: build_lab(recipe, progress_print=progress_print) for recipe in settings.teacher_recipes()}
    folder = lab_dir(settings.lab_name)
    summary_path = folder / "summary.json"
    student_fields = ("student_examples", "student_steps", "seed", "eval_count", "quick")  # what makes the student
    wanted = {"settings": {name: getattr(settings, name) for name in student_fields},
              "teachers": {t: s["recipe"] for t, s in summaries.items()}}
    if summary_path.exists() and json.loads(summary_path.read_text()).get("built_from") == wanted:
        progress_print(f"Reusing the two-experts student in {folder}.")
        return json.loads(summary_path.read_text())
    started, recipe = time.perf_counter(), settings.teacher_recipes()[0]
    tokenizer, rng, examples, accuracy = build_char_tokenizer(), random.Random(settings.seed), [], {}
    for task_name, lab in zip(TASKS, (recipe.lab_name for recipe in settings.teacher_recipes())):
        teacher, _ = load_model(f"lab:{lab}", "teacher")
        task = get_task(task_name)
        solutions = answer(teacher, tokenizer, task, task.train_problems(settings.student_examples, rng), greedy=True)
        examples += [(row["prompt"], row["completion"]) for row in solutions]
    student = build_lab_model(recipe.student_size, tokenizer, seed=settings.seed + 1)
    sft_train(student, tokenizer, examples, settings.student_steps, recipe.student_batch_size,
              recipe.student_learning_rate, settings.seed + 1, "two-experts student")
    for task_name in TASKS:
        accuracy[task_name] = evaluate(student, tokenizer, get_task(task_name), count=settings.eval_count).accuracy
    student.save_pretrained(folder / "student")
    tokenizer.save_pretrained(folder / "student")
    summary = {"built_from": wanted, "student_accuracy": accuracy, "seconds": round(time.perf_counter() - started, 1),
               "teacher_accuracy": {t: s["teacher"]["accuracy"] for t, s in summaries.items()}}
    write_json_atomic(summary_path, summary)
    return summary


def arm_curve(run_dirs: list[Path]) -> list[dict]:
    """An arm's evaluations over its runs, one after the other: step, FLOPs and each task's accuracy."""
    points, step_offset, flops_offset = [], 0, 0.0
    for run_dir in run_dirs:
        rows = load_metrics(run_dir)
        for row in rows:
            if task_metric("eval/accuracy", TASKS[0]) in row and not (points and row["step"] == 0):
                flops = sum(row.get(key, 0.0) for key in ("perf/flops_sampling", "perf/flops_teacher",
                                                          "perf/flops_training"))
                points.append({"step": row["step"] + step_offset, "flops": flops + flops_offset,
                               **{task: row[task_metric("eval/accuracy", task)] for task in TASKS}})
        last = rows[-1]
        step_offset += last["step"]
        flops_offset = points[-1]["flops"]
    return points


def verdict(curves: dict[str, list[dict]], sampled: dict[str, dict[str, float]]) -> dict:
    """The claim's verdict from the arms' curves.

    It holds when (1) sequential OPD forgot: its addition accuracy fell from its value at
    the switch to sorting by at least 10 points; (2) multi-teacher OPD kept both skills:
    it ends no lower than it started on either; and (3) its worse skill is at least
    sequential OPD's worse skill.
    """
    final = {arm: curve[-1] for arm, curve in curves.items()}
    sequential = curves["sequential-opd"]
    switch = max((p for p in sequential if p["step"] <= sequential[-1]["step"] // 2), key=lambda p: p["step"])
    forgot = switch["addition"] - final["sequential-opd"]["addition"]
    opd_worst = min(final["multi-teacher-opd"][task] for task in TASKS)
    sequential_worst = min(final["sequential-opd"][task] for task in TASKS)
    start = curves["multi-teacher-opd"][0]
    kept = all(final["multi-teacher-opd"][task] >= start[task] for task in TASKS)
    holds = forgot >= 0.10 and kept and opd_worst >= sequential_worst
    sentence = (f"multi-teacher OPD went from addition {start['addition']:.1%}, sorting {start['sorting']:.1%} to "
                f"{final['multi-teacher-opd']['addition']:.1%}, {final['multi-teacher-opd']['sorting']:.1%}; sequential OPD's addition went from "
                f"{switch['addition']:.1%} at the switch to {final['sequential-opd']['addition']:.1%} "
                f"(sorting {final['sequential-opd']['sorting']:.1%})")
    return {"claim": CLAIM, "holds": holds, "forgetting": forgot, "opd_kept_both": kept, "sentence": sentence,
            "final": final, "sampled": sampled}


def report_markdown(result: dict) -> str:
    lines = [f"# two-experts: {CLAIM}", "",
             f"Verdict: **{'holds' if result['verdict']['holds'] else 'does not hold'}**: "
             f"{result['verdict']['sentence']}.", "",
             "| arm | addition (greedy) | sorting (greedy) | addition (sampled) | sorting (sampled) | FLOPs |",
             "|---|---|---|---|---|---|"]
    for arm, point in result["verdict"]["final"].items():
        sampled = result["verdict"]["sampled"][arm]
        lines.append(f"| {arm} | {point['addition']:.1%} | {point['sorting']:.1%} | {sampled['addition']:.1%} | "
                     f"{sampled['sorting']:.1%} | {point['flops']:.3g} |")
    lines += ["", f"Base student: {json.dumps(result['student']['student_accuracy'])}; teachers: "
              f"{json.dumps(result['student']['teacher_accuracy'])}; {result['seconds']:.0f} s in all."]
    return "\n".join(lines) + "\n"


def curves_figure(result: dict, x: str = "step"):
    """Each arm's accuracy on each skill over `x` ("step" or "flops"): solid addition, dotted sorting."""
    import plotly.graph_objects as go

    from opd_lab.plot_style import method_color

    methods = {"multi-teacher-opd": "opd", "sft-mixture": "sft", "sequential-opd": "opd", "rl-both": "rl"}
    figure = go.Figure()
    for arm, curve in result["curves"].items():
        for task, dash in zip(TASKS, ("solid", "dot")):
            figure.add_scatter(x=[p[x] for p in curve], y=[p[task] for p in curve], name=f"{arm}: {task}",
                               mode="lines+markers", line=dict(color=None if arm == "sequential-opd"
                                                               else method_color(methods[arm]), dash=dash))
    figure.update_layout(title="two-experts: each skill's held-out greedy accuracy", xaxis_title=x,
                         yaxis_title="accuracy", yaxis_tickformat=".0%", xaxis_type="log" if x == "flops" else None)
    return figure


def run_two_experts(settings: TwoExpertsSettings, out: str | Path | None = None, progress_print=print) -> dict:
    """Build the scenario, run every arm, write the report; returns the report's dict
    (with `folder`, the study folder: default `<data dir>/reports/<lab name>-<time>`).

    Stages (`opd_lab.studies.stages`): `student`, then one per arm; rerun on the same
    folder, the study skips the stages it finished.
    """
    folder = Path(out) if out else data_dir() / "reports" / f"{settings.lab_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    state = StudyState.open(folder, study="two-experts", setting=settings.lab_name,
                            settings=dataclasses.asdict(settings))
    student_summary = state.run_stage("student", lambda: {"summary": build_student(settings, progress_print)},
                                      progress_print)["summary"]

    def run_arm(configs: list[RunConfig]) -> dict:
        run_dirs, student = [], None
        for config in configs:
            config = config.with_overrides(student=student) if student else config
            progress_print(f"{config.name}")
            run_dirs.append(train(config, progress=False))
            student = str(checkpoints.latest(run_dirs[-1]))
        model, tokenizer = load_model(student)
        return {"curve": arm_curve(run_dirs), "runs": [str(path) for path in run_dirs],
                "sampled": {task: evaluate(model, tokenizer, get_task(task), count=settings.sampled_eval_count,
                                           samples_per_problem=1, seed=settings.seed).sampled_accuracy
                            for task in TASKS}}

    arms = {arm: state.run_stage(arm, lambda configs=configs: run_arm(configs), progress_print)
            for arm, configs in settings.arm_configs(f"lab:{settings.lab_name}").items()}
    curves = {arm: found["curve"] for arm, found in arms.items()}
    sampled = {arm: found["sampled"] for arm, found in arms.items()}
    runs = {arm: found["runs"] for arm, found in arms.items()}
    result = {"settings": dataclasses.asdict(settings), "student": student_summary, "curves": curves, "runs": runs,
              "verdict": verdict(curves, sampled), "seconds": round(state.elapsed(), 1)}
    write_json_atomic(folder / "report.json", result)
    write_text_atomic(folder / "report.md", report_markdown(result))
    state.finish()
    progress_print(report_markdown(result))
    return {**result, "folder": str(folder)}
