"""`opd-lab compare`: RL, SFT and OPD on one lab scenario, fairly, over several seeds.

    opd-lab compare --scenario baseline              # the full comparison (minutes, 2 cores)
    opd-lab compare --scenario baseline --quick      # tiny models and budgets: CI and notebooks

Fairness, in order:

1. every arm starts from the same base student, with the same sequences per step, the
   same prompts (per seed), the same evaluation set and the same step budget;
2. each arm's learning rate comes from the same sweep: every rate of the scenario's
   grid, `sweep_steps` steps, on a seed that is not reported; the rate with the best
   mean held-out accuracy over the sweep's evaluations wins (the sweep is in the report);
3. each arm then runs `seeds` seeds at its rate until it closes 95% of the gap from the
   base student to the teacher or exhausts the budget.

Its runs are ordinary runs: each is launched through `opd_lab.runs` (one owner, the run
limit, the queue: at the limit they wait in line like anyone's), trains on one thread,
and is stopped with a checkpoint if the comparison's own process dies. SIGTERM or a
Ctrl-C starts nothing more, stops the runs training now (with a checkpoint), and
writes `report.md` and `stopped.json` listing what finished.

The report folder is a study folder (`opd_lab.studies.stages`) with the stages `lab`
(the lab built, the teacher's and base student's accuracy), `sweep` and `runs`: its
`study.json` records each stage when it ends and each run as it finishes, with its
path. The runs stay in the runs folder (the Runs tab lists them). Rerunning a killed or
stopped comparison with the same `--out` skips the finished stages and runs and trains
only what is missing:

    opd-lab compare --scenario baseline --out ~/.cache/opd-lab/reports/baseline-20261203-101500

The folder also holds `report.json` (every number, the sweep, the verdict, each run's
path), `report.md` (the compute-to-target table and the verdict) and `curves.html`
(mean and spread over seeds, by steps and by FLOPs), written and read by
`opd_lab.studies.comparison_report`. `opd_lab.report` computes the numbers from the
runs' own metrics.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from opd_lab import report, runs
from opd_lab.config import RunConfig
from opd_lab.files import write_json_atomic
from opd_lab.run_batch import BatchStopped, StopRequest, stop_on_signals, train_all
from opd_lab.run_folder import load_metrics, summarize_run
from opd_lab.studies.arms import arm_of, arm_overrides
from opd_lab.studies.comparison_report import (REPORT_FILE, STOPPED_FILE, SWEEP_SEED, load_report, reports_dir,
                                               stopped_markdown, write_report)
from opd_lab.studies.scenarios import Scenario, get_scenario
from opd_lab.studies.stages import StudyState

STUDY = "comparison"
BASE_ARMS = ("rl", "sft", "opd")
# --quick: tiny models (the scenario's recipe with TINY_RECIPE) and budgets, for CI and notebooks.
QUICK = dict(steps=4, batch_size=8, sweep_steps=2, eval_every=2, eval_count=16, learning_rates=(1e-3, 3e-3))
# Samples per held-out problem behind sampled accuracy (temperature 1): the runs' RunConfig.eval_samples.
EVAL_SAMPLES = RunConfig.__dataclass_fields__["eval_samples"].default


@dataclass(frozen=True)
class CompareSettings:
    """What `opd-lab compare` runs (the scenario supplies budgets, batch and the sweep grid)."""

    scenario: str
    seeds: int = 3
    variants: tuple[str, ...] = ()
    quick: bool = False
    workers: int = 2
    prompt_pool: int | None = None
    """Override the scenario's prompt pool: every method reuses the same N prompts and SFT
    trains on one fixed teacher sample per prompt (the seed's off-policy distillation)."""

    def __post_init__(self):
        get_scenario(self.scenario)
        if self.seeds < 1:
            raise ValueError(f"seeds: must be at least 1 (got {self.seeds})")
        if self.prompt_pool is not None and self.prompt_pool < 1:
            raise ValueError(f"prompt_pool: must be at least 1 (got {self.prompt_pool})")
        if self.workers < 1:
            raise ValueError(f"workers: must be at least 1 (got {self.workers})")
        for arm in self.variants:
            arm_overrides(arm, 4)  # raises for an unknown variant

    @property
    def arms(self) -> tuple[str, ...]:
        """The three methods, the scenario's own extra arms, then `variants`."""
        extra = get_scenario(self.scenario).variants + self.variants
        return BASE_ARMS + tuple(dict.fromkeys(v for v in extra if v not in BASE_ARMS))

    def budget(self) -> Scenario:
        """The scenario with the quick budgets applied when `quick`."""
        scenario = get_scenario(self.scenario)
        if self.prompt_pool is not None:  # the pool is the question a data-reuse comparison asks
            scenario = dataclasses.replace(scenario, prompt_pool=self.prompt_pool,
                                           claims=("data-reuse", "compute-vs-sft"))
        return dataclasses.replace(scenario, **QUICK) if self.quick else scenario

    @property
    def label(self) -> str:
        """The report's name: the scenario, its pool override, and `quick`."""
        return (self.scenario + (f"-pool{self.prompt_pool}" if self.prompt_pool else "")
                + ("-quick" if self.quick else ""))


def _config(scenario: Scenario, lab: str, arm: str, seed: int, learning_rate: float, steps: int, name: str,
            stop_at: float = 0.0) -> RunConfig:
    task = scenario.recipe().task
    return RunConfig(name=name, task=task, teacher=f"lab:{lab}", student=f"lab:{lab}", steps=steps,
                     learning_rate=learning_rate, warmup_steps=min(5, steps), seed=seed,
                     eval_every=scenario.eval_every, eval_count=scenario.eval_count, checkpoint_every=steps,
                     stop_at_accuracy=stop_at, **arm_overrides(arm, scenario.batch_size, scenario.prompt_pool),
                     **scenario.run_changes)


def _mean_accuracy(rows: list[dict]) -> float:
    """The sweep's score: mean held-out accuracy over the evaluations after step 0."""
    values = [row[report.ACCURACY] for row in rows if row.get("step", 0) > 0 and report.ACCURACY in row]
    return sum(values) / len(values) if values else 0.0


def _final_kl(rows: list[dict]) -> float:
    """The sweep's tie-break: the per-token KL to the teacher at the sweep's last step (lower is better)."""
    values = [row["train/reverse_kl"] for row in rows if isinstance(row.get("train/reverse_kl"), (int, float))]
    return values[-1] if values else float("inf")


def pick_learning_rates(sweep: list[dict]) -> dict[str, float]:
    """Each arm's rate: the best sweep score; equal scores (e.g. all 0% from scratch) go to the lower final KL."""
    arms = dict.fromkeys(row["arm"] for row in sweep)
    return {arm: max((row for row in sweep if row["arm"] == arm),
                     key=lambda row: (round(row["score"], 9), -row.get("final_kl", float("inf"))))["learning_rate"]
            for arm in arms}


def reference_accuracies(lab: str, task: str, eval_count: int, samples: int = 0, noise: float = 0.0) -> dict:
    """The teacher's and the base student's greedy accuracy on the runs' evaluation set,
    and with `samples` > 0 their sampled accuracy (`<role>_sampled`: the mean over that
    many samples per problem at temperature 1, seed 0, as the runs' evaluations). The
    teacher is the clean one (the target); with `noise` > 0, `noisy_teacher` holds the
    noisy teacher's `{"greedy", "sampled"}` accuracy too."""
    from opd_lab.eval import evaluate
    from opd_lab.models import load_model
    from opd_lab.noisy_teacher import NoisyTeacherModel
    from opd_lab.tasks import get_task

    found = {}
    for role in ("teacher", "student"):
        model, tokenizer = load_model(f"lab:{lab}", role, task)
        result = evaluate(model.eval(), tokenizer, get_task(task), count=eval_count, samples_per_problem=samples)
        found[role] = result.accuracy
        if samples:
            found[f"{role}_sampled"] = result.sampled_accuracy
        if role == "teacher" and noise:
            noisy = evaluate(NoisyTeacherModel(model, noise).eval(), tokenizer, get_task(task), count=eval_count,
                             samples_per_problem=max(samples, 1))
            found["noisy_teacher"] = {"noise": noise, "greedy": noisy.accuracy, "sampled": noisy.sampled_accuracy}
    return found


def run_compare(settings: CompareSettings, out: str | Path | None = None, progress_print=print,
                launched_by: str | None = None) -> Path:
    """Build the scenario's lab, sweep, train every arm and seed, and write the report folder.

    SIGTERM or a Ctrl-C (in the main thread) stops it early: `stopped.json` and
    `report.md` then list the runs that finished, and the stopped ones stay in the runs
    folder, resumable. `launched_by`: the app's user who asked for it, recorded as each
    run's launcher (so they may stop its runs).
    """
    stop = StopRequest()
    previous = stop_on_signals(stop)
    try:
        return _run_compare(settings, out, progress_print, launched_by, stop)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run_compare(settings: CompareSettings, out: str | Path | None, progress_print, launched_by: str | None,
                 stop: StopRequest) -> Path:
    scenario = settings.budget()
    recipe = get_scenario(settings.scenario).recipe(quick=settings.quick)
    out = Path(out) if out else reports_dir() / f"{settings.label}-{time.strftime('%Y%m%d-%H%M%S')}"
    state = open_comparison(out, settings)

    # 0. the lab and the two ends of the gap (the teacher's and the base student's accuracy)
    stop.interruptible = True
    try:
        if stop.reason:  # asked before the handlers could interrupt anything
            raise BatchStopped(stop.reason)
        lab = state.run_stage("lab", lambda: _measure_lab(recipe, scenario, progress_print), progress_print)
    except BatchStopped:
        return _write_stopped(out, settings, stop.reason, [], progress_print)
    finally:
        stop.interruptible = False
    reference = lab["reference"]
    teacher, base = reference["teacher"], reference["student"]
    sampled_reference = {"teacher": reference["teacher_sampled"], "base": reference["student_sampled"],
                         **({"noisy_teacher": reference["noisy_teacher"]} if "noisy_teacher" in reference else {})}
    progress_print(f"teacher {teacher:.1%}, base student {base:.1%} on {scenario.eval_count} held-out problems "
                   f"(greedy); sampled at temperature 1: teacher {sampled_reference['teacher']:.1%}, "
                   f"base student {sampled_reference['base']:.1%}")

    # 1. the learning-rate sweep: the same grid and budget for every arm
    sweep_dirs: list[Path | None] = []
    if state.done("sweep") is None:
        sweep_configs = [_config(scenario, recipe.lab_name, arm, SWEEP_SEED, lr, scenario.sweep_steps,
                                 f"sweep-{settings.label}-{arm}-lr{lr:g}")
                         for arm in settings.arms for lr in scenario.learning_rates]
        sweep_dirs = _train_stage(state, "sweep", sweep_configs, settings.workers, "learning-rate sweep", stop,
                                  launched_by, progress_print)
        if stop.reason:
            return _write_stopped(out, settings, stop.reason, sweep_dirs, progress_print)
        rows = [{"arm": arm_of(c), "learning_rate": c.learning_rate, "score": _mean_accuracy(metrics),
                 "final_kl": _final_kl(metrics), "run": d.name, "path": str(d)}
                for c, d in zip(sweep_configs, sweep_dirs) for metrics in [load_metrics(d)]]
        state.record("sweep", {"sweep": rows, "learning_rates": pick_learning_rates(rows)})
    else:
        progress_print(f"stage sweep: already done in {out.name}")
    sweep, chosen = state.done("sweep")["sweep"], state.done("sweep")["learning_rates"]

    # 2. the reported runs: every arm and seed at its rate, until 95% of the gap or the budget
    if state.done("runs") is None:
        stop_at = report.gap_target(base, teacher, max(report.GAP_FRACTIONS))
        configs = [_config(scenario, recipe.lab_name, arm, seed, chosen[arm], scenario.steps,
                           f"cmp-{settings.label}-{arm}-s{seed}", stop_at=stop_at)
                   for arm in settings.arms for seed in range(settings.seeds)]
        run_dirs = _train_stage(state, "runs", configs, settings.workers, "comparison runs", stop, launched_by,
                                progress_print)
        if stop.reason:
            return _write_stopped(out, settings, stop.reason, sweep_dirs + run_dirs, progress_print)
        runs_by_arm = {arm: [] for arm in settings.arms}
        for config, run_dir in zip(configs, run_dirs):
            runs_by_arm[arm_of(config)].append({"seed": config.seed, "run": run_dir.name, "path": str(run_dir),
                                                "learning_rate": config.learning_rate})
        state.record("runs", {"runs": runs_by_arm})
    else:
        progress_print(f"stage runs: already done in {out.name}")
    runs_by_arm = state.done("runs")["runs"]

    # 3. the report: the numbers, the verdict, the figure (recomputed from the runs' metrics on every rerun)
    # What was run is saved first, so that a failure while reporting loses nothing (see `refresh_report`).
    write_json_atomic(out / REPORT_FILE, {"settings_used": dataclasses.asdict(settings), "lab": lab["lab"],
                                          "teacher_accuracy": teacher, "base_accuracy": base, "sweep": sweep,
                                          "learning_rates": chosen, "runs": runs_by_arm,
                                          "sampled_reference": sampled_reference})
    data = build_report(settings, scenario, lab["lab"], teacher, base, sweep, chosen, runs_by_arm, out,
                        seconds=state.elapsed(), sampled_reference=sampled_reference)  # every pass, if resumed
    write_report(out, data)
    (out / STOPPED_FILE).unlink(missing_ok=True)  # a rerun that finished what a stop left
    state.finish()
    progress_print(data["verdict"]["sentence"])
    return out


def open_comparison(out: Path, settings: CompareSettings) -> StudyState:
    """The comparison's study folder: new, or one to go on with, made with the same settings
    (`workers` aside: how many runs train side by side changes no number).

    Raises:
        ConfigError: `out` holds another study, or this comparison with other settings.
    """
    return StudyState.open(out, study=STUDY, setting=settings.label, settings=dataclasses.asdict(settings),
                           free=("workers",))


def _measure_lab(recipe, scenario: Scenario, progress_print) -> dict:
    """Stage `lab`: build (or reuse) the scenario's lab and measure the two ends of the gap."""
    from opd_lab.lab import build_lab

    summary = build_lab(recipe, progress_print=progress_print)
    reference = reference_accuracies(recipe.lab_name, recipe.task, scenario.eval_count, EVAL_SAMPLES,
                                     noise=scenario.run_changes.get("teacher_noise", 0.0))
    return {"lab": summary, "reference": reference}


def _train_stage(state: StudyState, stage: str, configs: list[RunConfig], workers: int, description: str,
                 stop: StopRequest, launched_by: str | None, progress_print) -> list[Path | None]:
    """Train the runs of `stage` this folder has not finished yet; returns every config's run
    folder in order (None: never started because of a stop).

    Each run that finishes is recorded in `study.json` at once (by its config's name, unique
    within the comparison), so a comparison killed in the middle of a stage retrains only
    the runs that had not finished. A run stopped before its end is trained again in full.
    """
    finished = state.parts(stage)
    missing = [index for index, config in enumerate(configs) if config.name not in finished]
    if len(missing) < len(configs):
        progress_print(f"{description}: {len(configs) - len(missing)} of {len(configs)} runs already finished "
                       f"in {state.folder.name}")

    def record_if_finished(position: int, run_dir: Path) -> None:
        if runs.status_of(run_dir).get("state") == "finished":
            state.record_part(stage, configs[missing[position]].name, str(run_dir))

    trained = train_all([configs[index] for index in missing], workers, description, stop, launched_by,
                        progress_print, on_finished=record_if_finished) if missing else []
    found: list[Path | None] = [Path(finished[config.name]) if config.name in finished else None for config in configs]
    for index, run_dir in zip(missing, trained):
        found[index] = run_dir
    return found


def _write_stopped(out: Path, settings: CompareSettings, reason: str, run_dirs: list[Path | None],
                   progress_print) -> Path:
    """The report of a comparison stopped early: the finished runs with their numbers, the
    stopped ones (resumable), and how many never started. No verdict: it would compare
    arms that did not all run. Rerunning the comparison with the same `--out` goes on
    from its last finished stage and run."""
    finished, unfinished = [], []
    out.mkdir(parents=True, exist_ok=True)
    for run_dir in run_dirs:
        if run_dir is None:
            continue
        if runs.status_of(run_dir).get("state") == "finished":
            finished.append({**summarize_run(run_dir), "path": str(run_dir)})
        else:
            unfinished.append(run_dir.name)
    data = {"stopped": reason, "settings_used": dataclasses.asdict(settings), "finished": finished,
            "unfinished": unfinished, "never_started": sum(run_dir is None for run_dir in run_dirs),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json_atomic(out / STOPPED_FILE, data)
    (out / "report.md").write_text(stopped_markdown(data))
    progress_print(f"comparison stopped ({reason}): {len(finished)} runs finished, {len(unfinished)} stopped "
                   f"(resumable), {data['never_started']} never started; report: {out / 'report.md'}; "
                   f"rerun with --out {out} to go on")
    return out


def build_report(settings: CompareSettings, scenario: Scenario, lab_summary: dict, teacher: float, base: float,
                 sweep: list[dict], chosen: dict, runs_by_arm: dict, out: Path, seconds: float,
                 sampled_reference: dict | None = None) -> dict:
    """The report's data, every number computed from the runs' metrics (`report.run_path`).

    `verdict` judges greedy accuracy; with `sampled_reference` (the teacher's and base
    student's sampled accuracy) and runs that logged it, `sampled` holds the same
    summaries and verdict judged on sampled accuracy at temperature 1.
    """
    summaries, verdict = _judge(out, runs_by_arm, base, teacher, scenario.steps)
    verdict["accuracy"] = report.ACCURACY_WORDS[report.ACCURACY]
    sampled = _judge_sampled(out, runs_by_arm, sampled_reference, scenario.steps)
    return {
        "scenario": settings.scenario, "label": settings.label, "quick": settings.quick, "seeds": settings.seeds,
        "condition": scenario.condition, "claims": list(scenario.claims),
        "settings": {"steps": scenario.steps, "batch_size": scenario.batch_size, "prompt_pool": scenario.prompt_pool,
                     "learning_rates": list(scenario.learning_rates), "sweep_steps": scenario.sweep_steps,
                     "eval_every": scenario.eval_every, "eval_count": scenario.eval_count, "workers": settings.workers},
        "lab": lab_summary, "teacher_accuracy": teacher, "base_accuracy": base,
        "sweep": sweep, "learning_rates": chosen, "runs": runs_by_arm, "summaries": summaries,
        "verdict": verdict, **({"sampled": sampled, "sampled_reference": sampled_reference} if sampled else {}),
        "seconds": round(seconds, 1), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _judge(folder: Path, runs_by_arm: dict, base: float, teacher: float, budget_steps: int) -> tuple[dict, dict]:
    """Each arm's summary over its seeds and the verdict, from the runs' metrics in `folder/runs`."""
    summaries = {arm: report.summarize_arm([load_metrics(report.run_path(folder, run)) for run in runs], base, teacher)
                 for arm, runs in runs_by_arm.items()}
    return summaries, report.verdict(summaries, base, teacher, budget_steps=budget_steps)


def _judge_sampled(folder: Path, runs_by_arm: dict, reference: dict | None, budget_steps: int) -> dict | None:
    """The summaries and verdict on sampled accuracy, or None when the runs or the reference lack it."""
    if not reference:
        return None
    runs = {arm: [load_metrics(report.run_path(folder, run)) for run in arm_runs]
            for arm, arm_runs in runs_by_arm.items()}
    if not all(report.has_metric(rows, report.SAMPLED_ACCURACY) for rows in runs.values()):
        return None
    base, teacher = reference["base"], reference["teacher"]
    summaries = {arm: report.summarize_arm(rows, base, teacher, metric=report.SAMPLED_ACCURACY)
                 for arm, rows in runs.items()}
    verdict = report.verdict(summaries, base, teacher, budget_steps=budget_steps)
    verdict["accuracy"] = report.ACCURACY_WORDS[report.SAMPLED_ACCURACY]
    return {"teacher_accuracy": teacher, "base_accuracy": base, "samples_per_problem": EVAL_SAMPLES,
            "statistics": {arm: final_statistics(rows) for arm, rows in runs.items()},
            **({"noisy_teacher": reference["noisy_teacher"]} if "noisy_teacher" in reference else {}),
            "summaries": summaries, "verdict": verdict}


def final_statistics(runs: list[list[dict]]) -> dict[str, float]:
    """The median over seeds of each task statistic of the sampled completions at the last
    evaluation that has it (`eval/sampled_<name>`, e.g. the retry task's recovery rate)."""
    from statistics import median

    names = sorted({key for rows in runs for row in rows for key in row
                    if key.startswith("eval/sampled_") and key != report.SAMPLED_ACCURACY})
    found = {}
    for name in names:
        last = [[row[name] for row in rows if name in row][-1:] for rows in runs]
        values = [values[0] for values in last if values]
        if values:
            found[name.removeprefix("eval/sampled_")] = median(values)
    return found


def refresh_report(folder: str | Path) -> dict:
    """Recompute a report's numbers and verdict from its runs with this version's code, and rewrite it.

    Also finishes a report whose comparison trained but failed while reporting: its
    report.json then holds only what was run (`settings_used`), and the rest is rebuilt.
    """
    folder = Path(folder)
    data = load_report(folder)
    if "settings_used" in data:
        settings = CompareSettings(**{**data["settings_used"], "variants": tuple(data["settings_used"]["variants"])})
        data = build_report(settings, settings.budget(), data["lab"], data["teacher_accuracy"], data["base_accuracy"],
                            data["sweep"], data["learning_rates"], data["runs"], folder,
                            seconds=data.get("seconds", float("nan")), sampled_reference=data.get("sampled_reference"))
    else:
        data["summaries"], data["verdict"] = _judge(folder, data["runs"], data["base_accuracy"],
                                                    data["teacher_accuracy"], data["settings"]["steps"])
        data["verdict"]["accuracy"] = report.ACCURACY_WORDS[report.ACCURACY]
        sampled = _judge_sampled(folder, data["runs"], data.get("sampled_reference"), data["settings"]["steps"])
        if sampled:
            data["sampled"] = sampled
    write_report(folder, data)
    return data


