"""`opd-lab compare --protocol handoff`: the seed's compute comparison, SFT first, then hand off.

The seed (Thinking Machines 2025) did not race OPD against SFT from an under-trained
student. It trained SFT on fixed datasets of growing size, saw accuracy grow
log-linearly in the dataset size, took the SFT checkpoint where that curve had
flattened, and asked what it costs to go further: more SFT data, or OPD from there.
Its "9x less compute" counts the SFT dataset as given; its "~30x" charges the teacher's
sampling of it. This module runs the same protocol on a lab scenario:

1. **stage 1**: SFT on a fixed teacher dataset of N samples (one teacher sample per
   prompt of a pool of N, `sft_source=teacher_dataset`), N = 64, 128, ..., 4096, each
   with early stopping (its best held-out evaluation, greedy); fit accuracy against
   log2 N by least squares, with a 95% confidence interval on the slope
   (`fit_log_linear`); N* is the first N after which a doubling gains less than
   `min_gain` (`plateau_size`).
2. **stage 2**, from N*'s best checkpoint: SFT on fresh teacher samples, OPD reusing the
   N* prompts, and RL; each runs until it closes half of the remaining gap to the
   teacher (`target = acc(N*) + 0.5 (teacher - acc(N*))`) or its budget ends.

The report (`handoff_report`) gives, per arm, the steps, sequences and FLOPs to the
target, and the hand-off ratio SFT / OPD counted two ways: SFT's training FLOPs only
(the dataset free, the seed's 9x) and SFT's FLOPs with the teacher's sampling charged
(the ~30x). It also says how many teacher samples the stage-1 fit predicts SFT would
need to reach the target, with the interval that follows from the slope's.

    opd-lab compare --protocol handoff --scenario baseline

Every number comes from the runs' metrics (`perf/flops_training`, `perf/flops`, ...),
so tests on synthetic runs can check it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

HANDOFF_SIZES = tuple(64 * 2**i for i in range(7))  # 64 ... 4096
HANDOFF_ARMS = ("sft", "opd", "rl")
ACCURACY = "eval/accuracy"
# Two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(degrees: int) -> float:
    """The 95% two-sided t quantile for `degrees` of freedom (the next smaller tabulated one)."""
    if degrees < 1:
        return math.inf
    return T95[max(d for d in T95 if d <= degrees)] if degrees <= 30 else 1.96


@dataclass(frozen=True)
class LogLinearFit:
    """`accuracy = intercept + slope * log2(N)`; `slope_ci` is the 95% interval of the slope."""

    intercept: float
    slope: float
    slope_ci: tuple[float, float]
    points: int

    def accuracy_at(self, size: float) -> float:
        return self.intercept + self.slope * math.log2(size)

    def size_for(self, accuracy: float, slope: float | None = None) -> float:
        """The dataset size at which the fitted line reaches `accuracy` (inf for a flat or falling slope)."""
        slope = self.slope if slope is None else slope
        if slope <= 0:
            return math.inf
        exponent = (accuracy - self.intercept) / slope
        return math.inf if exponent > 1000 else 2.0 ** exponent


def fit_log_linear(sizes: list[int], accuracies: list[float]) -> LogLinearFit:
    """Ordinary least squares of accuracy on log2(size), with the slope's 95% t interval.

    Example:
        >>> fit = fit_log_linear([64, 128, 256, 512], [0.5, 0.55, 0.6, 0.65])
        >>> round(fit.slope, 3), round(fit.intercept, 3), round(fit.slope_ci[1] - fit.slope_ci[0], 9)
        (0.05, 0.2, 0.0)
    """
    if len(sizes) != len(accuracies) or len(sizes) < 2:
        raise ValueError("a fit needs at least two (size, accuracy) points")
    xs = [math.log2(n) for n in sizes]
    mean_x, mean_y = sum(xs) / len(xs), sum(accuracies) / len(accuracies)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, accuracies)) / sxx
    intercept = mean_y - slope * mean_x
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, accuracies)]
    degrees = len(xs) - 2
    if degrees < 1:
        return LogLinearFit(intercept, slope, (-math.inf, math.inf), len(xs))
    standard_error = math.sqrt(sum(r * r for r in residuals) / degrees / sxx)
    half = t95(degrees) * standard_error
    return LogLinearFit(intercept, slope, (slope - half, slope + half), len(xs))


def plateau_size(sizes: list[int], accuracies: list[float], min_gain: float = 0.01) -> int:
    """N*: the first size whose next doubling gains less than `min_gain` (the largest size if none does).

    Example:
        >>> plateau_size([64, 128, 256, 512], [0.5, 0.6, 0.605, 0.61])
        128
    """
    for (size, accuracy), following in zip(zip(sizes, accuracies), accuracies[1:]):
        if following - accuracy < min_gain:
            return size
    return sizes[-1]


def _evaluations(rows: list[dict]) -> list[dict]:
    return [row for row in rows if isinstance(row.get(ACCURACY), (int, float))]


def best_evaluation(rows: list[dict]) -> dict:
    """Early stopping: the run's most accurate evaluation (the earliest on a tie)."""
    evaluations = _evaluations(rows)
    if not evaluations:
        raise ValueError("the run has no evaluation")
    return max(evaluations, key=lambda row: (row[ACCURACY], -row["step"]))


def cost_at(rows: list[dict], target: float) -> dict | None:
    """Costs at the first evaluation at or above `target`: steps, sequences, training FLOPs
    and all FLOPs (sampling, teacher and training); None when never reached."""
    for row in _evaluations(rows):
        if row[ACCURACY] >= target - 1e-9:
            return {"steps": int(row["step"]), "sequences": float(row.get("progress/samples", 0.0)),
                    "flops_training": float(row.get("perf/flops_training", 0.0)),
                    "flops": float(row.get("perf/flops", 0.0))}
    return None


def _median_cost(costs: list[dict | None], name: str) -> float | None:
    """The median over seeds, a seed that never got there counting as infinite; None if most did not."""
    value = median([math.inf if c is None else c[name] for c in costs])
    return None if math.isinf(value) else value


def handoff_report(stage1: dict[int, list[dict]], stage2: dict[str, list[list[dict]]], teacher_accuracy: float,
                   min_gain: float = 0.01) -> dict:
    """The protocol's numbers from the runs' metrics.

    Args:
        stage1: dataset size N -> the metric rows of its SFT run.
        stage2: arm ("sft", "opd", "rl") -> one list of metric rows per seed, all started
            from N*'s best checkpoint.
        teacher_accuracy: the teacher's greedy accuracy on the same evaluation set.
    Returns:
        A dict: `stage1` (per N: best accuracy, its step and FLOPs), `fit`, `n_star`,
        `start_accuracy`, `target`, `arms` (median costs per arm), `ratios` (SFT / OPD:
        `flops_dataset_free`, `flops_sampling_charged`, `steps`, `sequences`; RL / OPD
        `rl_steps`), and `fit_prediction` (teacher samples the fit says SFT needs to reach
        the target, with the interval from the slope's).
    """
    sizes = sorted(stage1)
    points = {size: best_evaluation(stage1[size]) for size in sizes}
    accuracies = [points[size][ACCURACY] for size in sizes]
    fit = fit_log_linear(sizes, accuracies)
    n_star = plateau_size(sizes, accuracies, min_gain)
    start = points[n_star][ACCURACY]
    target = start + 0.5 * (teacher_accuracy - start)
    arms = {}
    for arm, runs in stage2.items():
        costs = [cost_at(rows, target) for rows in runs]
        finals = [_evaluations(rows)[-1][ACCURACY] for rows in runs if _evaluations(rows)]
        arms[arm] = {"seeds": len(runs), "reached": sum(c is not None for c in costs),
                     "final_accuracy": median(finals) if finals else None,
                     **{name: _median_cost(costs, name) for name in ("steps", "sequences", "flops_training", "flops")}}

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        return None if numerator is None or not denominator else numerator / denominator

    sft, opd, rl = arms.get("sft", {}), arms.get("opd", {}), arms.get("rl", {})
    ratios = {"flops_dataset_free": ratio(sft.get("flops_training"), opd.get("flops")),
              "flops_sampling_charged": ratio(sft.get("flops"), opd.get("flops")),
              "steps": ratio(sft.get("steps"), opd.get("steps")),
              "sequences": ratio(sft.get("sequences"), opd.get("sequences")),
              "rl_steps": ratio(rl.get("steps"), opd.get("steps"))}
    low, high = fit.slope_ci
    prediction = {"samples": fit.size_for(target),
                  # a steeper slope needs fewer samples: the interval's ends swap
                  "samples_low": fit.size_for(target, high) if high > 0 else math.inf,
                  "samples_high": fit.size_for(target, low) if low > 0 else math.inf}
    return {"stage1": {str(size): {"accuracy": points[size][ACCURACY], "step": int(points[size]["step"]),
                                   "flops_training": float(points[size].get("perf/flops_training", 0.0)),
                                   "flops": float(points[size].get("perf/flops", 0.0))} for size in sizes},
            "fit": {"intercept": fit.intercept, "slope": fit.slope, "slope_ci": list(fit.slope_ci),
                    "points": fit.points},
            "n_star": n_star, "start_accuracy": start, "teacher_accuracy": teacher_accuracy, "target": target,
            "arms": arms, "ratios": ratios, "fit_prediction": prediction}


def _ratio_text(value: float | None, what: str) -> str:
    if value is None:
        return f"{what}: n/a (an arm did not reach the target, or OPD reached it at no cost)"
    return f"{what}: {value:.2f}x"


def handoff_markdown(data: dict, scenario: str) -> str:
    """The report as Markdown: stage 1 with its fit, stage 2's costs, the two hand-off ratios."""
    fit = data["fit"]
    lines = [f"# opd-lab compare --protocol handoff: scenario `{scenario}`", "",
             "## Stage 1: SFT on fixed teacher datasets (best held-out evaluation, greedy)", "",
             "| N | accuracy | at step | training FLOPs |", "|---|---|---|---|"]
    lines += [f"| {size} | {point['accuracy']:.1%} | {point['step']} | {point['flops_training']:.2e} |"
              for size, point in data["stage1"].items()]
    lines += ["", f"Fit: accuracy = {fit['intercept']:.3f} + {fit['slope']:.4f} log2 N (slope 95% interval "
              f"{fit['slope_ci'][0]:.4f} to {fit['slope_ci'][1]:.4f}; {fit['points']} points, "
              f"{100 * fit['slope']:.1f} points per doubling). N* = {data['n_star']} "
              f"({data['start_accuracy']:.1%}); teacher {data['teacher_accuracy']:.1%}; target (half the remaining "
              f"gap) {data['target']:.1%}.", "",
              *(["**The teacher is not ahead of N*: there is nothing to hand off.**", ""]
                if data["teacher_accuracy"] <= data["start_accuracy"] else []),
              "## Stage 2: from N*'s checkpoint to the target (medians over seeds)", "",
              "| arm | seeds reached | steps | sequences | training FLOPs | all FLOPs | final accuracy |",
              "|---|---|---|---|---|---|---|"]
    for arm, cost in data["arms"].items():
        shown = [("not reached" if cost[name] is None else f"{cost[name]:.0f}" if name in ("steps", "sequences")
                  else f"{cost[name]:.2e}") for name in ("steps", "sequences", "flops_training", "flops")]
        final = cost.get("final_accuracy")
        lines.append(f"| {arm} | {cost['reached']}/{cost['seeds']} | " + " | ".join(shown)
                     + f" | {'n/a' if final is None else f'{final:.1%}'} |")
    ratios, prediction = data["ratios"], data["fit_prediction"]
    lines += ["", "## Hand-off ratios (SFT / OPD; above 1: OPD cheaper)", "",
              "- " + _ratio_text(ratios["flops_dataset_free"], "FLOPs, the SFT dataset free (the seed's 9x)"),
              "- " + _ratio_text(ratios["flops_sampling_charged"], "FLOPs, the teacher's sampling charged (the ~30x)"),
              "- " + _ratio_text(ratios["steps"], "gradient steps"),
              "- " + _ratio_text(ratios["rl_steps"], "RL / OPD gradient steps"), "",
              f"The stage-1 fit predicts SFT reaches the target at N = {prediction['samples']:.3g} teacher samples "
              f"(95% interval {prediction['samples_low']:.3g} to {prediction['samples_high']:.3g}).", ""]
    return "\n".join(lines)


# --- running the protocol --------------------------------------------------------------

# Each arm's rate when the scenario has no committed report to take its sweep's choice from.
DEFAULT_RATE = 1e-4
QUICK_SIZES = (8, 16, 32)


@dataclass(frozen=True)
class HandoffSettings:
    """What `opd-lab compare --protocol handoff` runs."""

    scenario: str
    seeds: int = 1
    """Seeds of each stage-2 arm (stage 1 runs once per N, seed 0)."""
    sizes: tuple[int, ...] = HANDOFF_SIZES
    stage1_epochs: int = 8
    """Each stage-1 run trains at most this many epochs of its N samples (early stopping picks the best)..."""
    stage1_max_steps: int = 400
    """...and at most this many steps."""
    min_gain: float = 0.01
    quick: bool = False
    workers: int = 2

    def __post_init__(self):
        from opd_lab.studies.scenarios import get_scenario

        get_scenario(self.scenario)
        if self.seeds < 1 or self.workers < 1 or len(self.sizes) < 2:
            raise ValueError("handoff: seeds and workers must be at least 1, and sizes needs two or more")


def _chosen_rates(scenario: str) -> dict[str, float]:
    """Each arm's rate from the scenario's committed compare report (its sweep), else from the
    report of the scenario whose lab it shares (noisy-teacher: baseline's), else `DEFAULT_RATE`."""
    import json

    from opd_lab.paths import MEASURED_RESULTS_DIR
    from opd_lab.studies.scenarios import get_scenario

    for name in dict.fromkeys((scenario, get_scenario(scenario).lab or scenario)):
        path = MEASURED_RESULTS_DIR / f"{name}.json"
        chosen = json.loads(path.read_text()).get("learning_rates", {}) if path.exists() else {}
        if chosen:
            return {arm: chosen.get(arm, DEFAULT_RATE) for arm in HANDOFF_ARMS}
    return {arm: DEFAULT_RATE for arm in HANDOFF_ARMS}


def refresh_handoff(folder) -> dict:
    """Recompute a hand-off report folder's numbers from its runs (after a change to the
    report's rules); its settings, lab and timing stay. Rewrites handoff.json and .md."""
    import json
    from pathlib import Path

    from opd_lab.run_folder import load_config, load_metrics, write_json_atomic

    folder = Path(folder)
    data = json.loads((folder / "handoff.json").read_text())
    stage1 = {int(load_config(folder / "runs" / name)["prompt_pool"]): load_metrics(folder / "runs" / name)
              for name in data["runs"]["stage1"]}
    stage2: dict[str, list] = {}
    for name in data["runs"]["stage2"]:
        stage2.setdefault(load_config(folder / "runs" / name)["method"], []).append(load_metrics(folder / "runs" / name))
    data.update(handoff_report(stage1, stage2, data["teacher_accuracy"], data["settings"]["min_gain"]))
    data.setdefault("protocol", "handoff")
    write_json_atomic(folder / "handoff.json", data)
    (folder / "handoff.md").write_text(handoff_markdown(data, data["scenario"]))
    return data


def run_handoff(settings: HandoffSettings, out=None, progress_print=print):
    """Build the lab, run both stages, write `handoff.json` and `handoff.md` in the report folder.

    The folder is a study folder (`opd_lab.studies.stages`) with the stages `lab`,
    `stage1` and `stage2`; rerun on the same folder, the study skips the finished ones.
    The runs stay in the runs folder; `handoff.json` records their paths.
    """
    import dataclasses
    import time
    from pathlib import Path

    from opd_lab import checkpoints
    from opd_lab.studies.arms import arm_overrides
    from opd_lab.config import RunConfig
    from opd_lab.studies.comparison import QUICK, reference_accuracies
    from opd_lab.studies.comparison_report import reports_dir
    from opd_lab.run_batch import train_batch
    from opd_lab.lab import build_lab
    from opd_lab.run_folder import load_metrics, write_json_atomic
    from opd_lab.studies.scenarios import get_scenario
    from opd_lab.studies.stages import StudyState

    scenario = get_scenario(settings.scenario)
    budget = dataclasses.replace(scenario, **QUICK) if settings.quick else scenario
    sizes = QUICK_SIZES if settings.quick else settings.sizes
    recipe = scenario.recipe(quick=settings.quick)
    rates = _chosen_rates(settings.scenario)
    label = settings.scenario + ("-quick" if settings.quick else "")
    out = Path(out) if out else reports_dir() / f"handoff-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    state = StudyState.open(out, study="handoff", setting=label, settings=dataclasses.asdict(settings))
    measured = state.run_stage("lab", lambda: {
        "lab": build_lab(recipe, progress_print=progress_print),
        "teacher": reference_accuracies(recipe.lab_name, recipe.task, budget.eval_count)["teacher"]}, progress_print)
    lab, teacher = measured["lab"], measured["teacher"]

    def trained(stage: str, configs: list[RunConfig], description: str) -> list[Path]:
        """The run folders of `stage`: trained now, or those an earlier pass of this study recorded."""
        found = state.run_stage(stage, lambda: {"runs": [str(path) for path in train_batch(
            configs, settings.workers, description, progress_print)]}, progress_print)
        return [Path(path) for path in found["runs"]]

    common = dict(task=recipe.task, teacher=f"lab:{recipe.lab_name}", eval_every=budget.eval_every,
                  eval_count=budget.eval_count, finetune="full", **scenario.run_changes)

    # Stage 1: SFT on a fixed teacher dataset of N samples, early stopping by greedy accuracy.
    stage1_configs = [RunConfig(
        name=f"handoff-{label}-sft{size}", student=f"lab:{recipe.lab_name}", learning_rate=rates["sft"], seed=0,
        steps=max(budget.eval_every, min(settings.stage1_max_steps if not settings.quick else budget.steps,
                                         settings.stage1_epochs * size // budget.batch_size)),
        eval_samples=0, checkpoint_every=budget.eval_every, keep_checkpoints=1,
        **{**arm_overrides("sft", budget.batch_size, size), **common}) for size in sizes]
    stage1_dirs = trained("stage1", stage1_configs, "handoff stage 1")
    stage1 = {size: load_metrics(d) for size, d in zip(sizes, stage1_dirs)}
    preview = handoff_report(stage1, {}, teacher, settings.min_gain)
    n_star = preview["n_star"]
    best_step = preview["stage1"][str(n_star)]["step"]
    star_dir = stage1_dirs[sizes.index(n_star)]
    start = str(checkpoints.checkpoint_path(star_dir, best_step)) if best_step else f"lab:{recipe.lab_name}"
    progress_print(f"N* = {n_star} ({preview['start_accuracy']:.1%}); stage 2 starts from {start}; "
                   f"target {preview['target']:.1%}")

    # Stage 2: from N*'s best checkpoint, until half of the remaining gap is closed.
    stage2_configs = [RunConfig(
        name=f"handoff-{label}-{arm}-s{seed}", student=start, learning_rate=rates[arm], seed=seed, steps=budget.steps,
        stop_at_accuracy=preview["target"], checkpoint_every=budget.steps,
        **{**arm_overrides(arm, budget.batch_size, n_star if arm == "opd" else 0), **common})
        for arm in HANDOFF_ARMS for seed in range(settings.seeds)]
    stage2_dirs = trained("stage2", stage2_configs, "handoff stage 2")
    stage2 = {arm: [load_metrics(d) for c, d in zip(stage2_configs, stage2_dirs) if c.method == arm]
              for arm in HANDOFF_ARMS}

    data = handoff_report(stage1, stage2, teacher, settings.min_gain)
    data.update({"protocol": "handoff", "scenario": settings.scenario, "quick": settings.quick,
                 "settings": dataclasses.asdict(settings), "learning_rates": rates, "lab": lab,
                 "seconds": round(state.elapsed(), 1),
                 "runs": {"stage1": [str(d) for d in stage1_dirs], "stage2": [str(d) for d in stage2_dirs]}})
    write_json_atomic(out / "handoff.json", data)
    (out / "handoff.md").write_text(handoff_markdown(data, settings.scenario))
    state.finish()
    return out
