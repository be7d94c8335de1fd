"""The numbers of a method comparison, and a verdict computed from them.

Pure functions over the runs' own metrics (the rows of each run's `metrics.jsonl`), so
every number in a compare report can be traced to the evaluations it came from and
tested on synthetic runs; at the end, the same numbers for runs picked by hand (the
Compare tab, notebook 3: `run_labels`, `compare_runs`, which read the run folders). Progress is measured as a share of the **gap** from the base
student to the teacher: `target = base + fraction * (teacher - base)`, so a 50% row
is never reached "at step 0" by a student that already starts above half of the
teacher's accuracy.

For each arm (a method, or a variant such as OPD with the exact KL) and each gap
fraction, the cost to reach the target is the cost at the first evaluation at or
above it **that the next evaluation confirms** (also at or above it; the run's last
evaluation has none to confirm it and counts as it is): optimizer steps, sampled
sequences, FLOPs and wall time. One lucky evaluation on a few hundred problems does not
reach a target. Over seeds the
report gives the median, counting a seed that never reached the target as infinitely
expensive, so a median is finite only when most seeds got there; where it is not,
the cost at the end of the budget is a lower bound ("more than").

Example:
    >>> rows = [{"step": 0, "eval/accuracy": 0.5, "perf/flops": 0.0},
    ...         {"step": 10, "eval/accuracy": 0.9, "perf/flops": 5.0}]
    >>> cost_to_reach(rows, 0.8)["steps"]
    10
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from statistics import median

from opd_lab.plot_style import method_name
from opd_lab.run_folder import load_config, load_metrics

GAP_FRACTIONS = (0.5, 0.8, 0.95)
ACCURACY = "eval/accuracy"
# Mean accuracy of k samples per problem at temperature 1 (RunConfig.eval_samples), beside greedy.
SAMPLED_ACCURACY = "eval/sampled_accuracy"
ACCURACY_WORDS = {ACCURACY: "greedy accuracy", SAMPLED_ACCURACY: "sampled accuracy (temperature 1)"}
# cost name -> metrics key
COSTS = {"steps": "step", "samples": "progress/samples", "flops": "perf/flops", "wall_s": "perf/wall_s"}
VARIANT_LABELS = {"opd-full": "OPD (exact KL)", "opd-clipped": "OPD (clipped advantage)",
                  "opd-topk": "OPD (top-k renormalized KL)", "sft-greedy": "SFT (teacher's greedy answers)"}


def arm_label(arm: str) -> str:
    """A reader's name for an arm: `opd` -> `OPD`, `opd-full` -> `OPD (exact KL)`."""
    return VARIANT_LABELS.get(arm) or method_name(arm)


ARM_ORDER = ("rl", "sft", "sft-greedy", "opd", "opd-full", "opd-clipped", "opd-topk")


def ordered_arms(arms) -> list[str]:
    """Arms in the order reports show them: RL, SFT, OPD, then variants (JSON files sort their keys)."""
    return sorted(arms, key=lambda arm: (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm))


def run_path(report_folder: str | os.PathLike, run: dict) -> Path:
    """The folder of a run a compare report lists: its recorded `path`, or (reports made
    before runs stayed in the runs folder) `<report folder>/runs/<run>`."""
    return Path(run["path"]) if run.get("path") else Path(report_folder) / "runs" / run["run"]


def gap_target(base_accuracy: float, teacher_accuracy: float, fraction: float) -> float:
    """The accuracy that closes `fraction` of the gap from the base student to the teacher."""
    return base_accuracy + fraction * (teacher_accuracy - base_accuracy)


def _evaluations(rows: list[dict], metric: str = ACCURACY) -> list[dict]:
    return [row for row in rows if isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])]


def _costs(row: dict) -> dict:
    return {name: float(row.get(key, 0.0) or 0.0) if name != "steps" else int(row.get(key, 0))
            for name, key in COSTS.items()}


def cost_to_reach(rows: list[dict], target: float, metric: str = ACCURACY) -> dict | None:
    """The costs at the first evaluation whose `metric` (greedy accuracy by default) is at least
    `target` and stays there at the next evaluation (the last evaluation counts as it is), or None."""
    evaluations = _evaluations(rows, metric)
    reached = [row[metric] >= target - 1e-9 for row in evaluations]  # 0.5 + 0.6 * 0.5 = 0.7999999999999999
    for index, row in enumerate(evaluations):
        if reached[index] and (index + 1 == len(evaluations) or reached[index + 1]):
            return _costs(row)
    return None


def final_accuracy(rows: list[dict], metric: str = ACCURACY) -> float:
    """The accuracy (`metric`) of the run's last evaluation."""
    evaluations = _evaluations(rows, metric)
    if not evaluations:
        raise ValueError(f"the run has no evaluation with {metric}")
    return float(evaluations[-1][metric])


def has_metric(runs: list[list[dict]], metric: str) -> bool:
    """Whether every run has at least one evaluation with `metric` (runs from before
    sampled accuracy have none)."""
    return bool(runs) and all(_evaluations(rows, metric) for rows in runs)


def _median_or_inf(values: list[float | None]) -> float:
    return median([math.inf if v is None else v for v in values])


def summarize_arm(runs: list[list[dict]], base_accuracy: float, teacher_accuracy: float,
                  fractions=GAP_FRACTIONS, metric: str = ACCURACY) -> dict:
    """Medians and spreads over the seeds of one arm.

    Args:
        runs: one list of metric rows per seed.
    Returns:
        `{"seeds": n, "metric": metric, "final_accuracy": {"median", "min", "max"}, "targets": [...]}`;
        each target has `fraction`, `accuracy`, `reached` (seeds that got there), and per
        cost a dict with `median` (None when most seeds did not get there), `min`/`max`
        over the seeds that did, and `lower_bound` (the median of the reached cost or the
        cost at the end of the run, for "more than" statements).
    """
    if not runs:
        raise ValueError("an arm needs at least one run")
    finals = [final_accuracy(rows, metric) for rows in runs]
    summary = {"seeds": len(runs), "metric": metric,
               "final_accuracy": {"median": median(finals), "min": min(finals), "max": max(finals)},
               "targets": []}
    for fraction in fractions:
        target = gap_target(base_accuracy, teacher_accuracy, fraction)
        reached = [cost_to_reach(rows, target, metric) for rows in runs]
        entry = {"fraction": fraction, "accuracy": target, "reached": sum(r is not None for r in reached)}
        for name in COSTS:
            values = [r[name] if r else None for r in reached]
            middle = _median_or_inf(values)
            done = [v for v in values if v is not None]
            at_end = [v if v is not None else _costs(rows[-1])[name] for v, rows in zip(values, runs)]
            entry[name] = {"median": None if math.isinf(middle) else middle,
                           "min": min(done) if done else None, "max": max(done) if done else None,
                           "lower_bound": median(at_end)}
        summary["targets"].append(entry)
    return summary


def _target(arm_summary: dict, fraction: float) -> dict:
    return next(t for t in arm_summary["targets"] if t["fraction"] == fraction)


def ratio(summaries: dict, arm: str, reference: str, fraction: float, cost: str) -> dict:
    """How many times more `cost` `arm` needed than `reference` to close `fraction` of the gap.

    Returns `{"value", "bound"}`: bound is "=" (both reached), ">" (only `reference`
    reached: `value` is a lower bound from `arm`'s whole budget), "<" (only `arm`
    reached) or None with value None (neither reached).
    """
    mine, theirs = _target(summaries[arm], fraction)[cost], _target(summaries[reference], fraction)[cost]
    if mine["median"] is not None and theirs["median"] is not None:
        return {"value": mine["median"] / max(theirs["median"], 1e-12), "bound": "="}
    if theirs["median"] is not None:
        return {"value": mine["lower_bound"] / max(theirs["median"], 1e-12), "bound": ">"}
    if mine["median"] is not None:
        return {"value": mine["median"] / max(theirs["lower_bound"], 1e-12), "bound": "<"}
    return {"value": None, "bound": None}


def format_ratio(found: dict) -> str:
    """`{"value": 3.21, "bound": ">"}` -> `more than 3.2x`."""
    if found["value"] is None:
        return "n/a"
    prefix = {"=": "", ">": "more than ", "<": "less than "}[found["bound"]]
    return f"{prefix}{found['value']:.1f}x"


# Costs within this factor of each other are "about the same": a ratio is never printed as "1.0x less".
SAME_COST = 1.05
GAP_DEFINITION = ("The gap is the teacher's held-out accuracy minus the base student's; closing 80% of it means "
                  "reaching base + 0.8 × (teacher − base), held at the next evaluation too.")


def standard_error(accuracy: float, eval_count: int) -> float:
    """The standard error of an accuracy measured on `eval_count` problems (binomial).

    Example:
        >>> round(standard_error(0.75, 200), 4)
        0.0306
    """
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(eval_count, 1))


def is_tie(first: float, second: float, eval_count: int | None) -> bool:
    """Whether two accuracies on `eval_count` problems each are within two standard errors of
    their difference (so the evaluation cannot tell them apart); never a tie without a count."""
    if not eval_count:
        return False
    spread = math.hypot(standard_error(first, eval_count), standard_error(second, eval_count))
    return abs(first - second) <= 2 * spread


def _cost_phrase(summaries: dict, arm: str, winner: str, fraction: float, cost: str, noun: str) -> str | None:
    """How `arm` compares with `winner` on `cost`, in words that never claim what was not measured;
    None when `arm`'s whole budget was smaller than the winner's cost (it never had the chance)."""
    found = ratio(summaries, arm, winner, fraction, cost)
    name = arm_label(arm)
    if found["value"] is None:
        return f"{name} did not get there"
    if found["bound"] == ">" and found["value"] <= 1:
        return None
    if found["value"] < SAME_COST and found["bound"] == "=":
        return f"about as much {noun} as {name}"
    return f"{format_ratio(found)} less than {name}"


def verdict(summaries: dict, base_accuracy: float, teacher_accuracy: float, budget_steps: int | None = None,
            eval_count: int | None = None) -> dict:
    """A one-sentence verdict, and the facts it rests on, computed from `summaries`.

    The level is the largest gap fraction that some arm reached (median over seeds).
    The winner is the arm with the least median compute (FLOPs) at that level, crowned
    only when every arm that did not get there spent more than the winner's cost (an arm
    whose whole budget was smaller never had the chance: the sentence says so and names no
    winner). Ratios are never printed as "x less" with x <= 1: costs within SAME_COST are
    "about as much". Then the seed's step claim: gradient steps of OPD against RL. With
    `eval_count` (problems per evaluation), final accuracies within two standard errors of
    each other are called a tie, and a winner that ended clearly below another arm is
    said to have.

    Returns:
        `{"sentence", "level", "winner", "steps_winner"}` (level/winner None when no arm
        closed even the smallest fraction, or when the comparison is open).
    """
    arms = ordered_arms(summaries)
    seeds = max(s["seeds"] for s in summaries.values())
    if teacher_accuracy <= base_accuracy:
        return {"sentence": f"The teacher ({teacher_accuracy:.1%}) is not ahead of the base student "
                            f"({base_accuracy:.1%}): there is no gap to close, so no method can win.",
                "level": None, "winner": None, "steps_winner": None}
    fractions = sorted({t["fraction"] for s in summaries.values() for t in s["targets"]}, reverse=True)
    level = next((f for f in fractions if any(_target(summaries[a], f)["flops"]["median"] is not None for a in arms)),
                 None)
    tail = f" (median of {seeds} seeds)." if seeds != 1 else " (one seed)."
    finals = {a: summaries[a]["final_accuracy"]["median"] for a in arms}
    if level is None:
        best = max(arms, key=lambda a: finals[a])
        within = f" within {budget_steps} steps" if budget_steps else ""
        tied = [a for a in arms if a != best and is_tie(finals[best], finals[a], eval_count)]
        if tied:
            names = " and ".join(arm_label(a) for a in [best, *tied])
            best_text = (f"the final accuracies of {names} ({', '.join(f'{finals[a]:.1%}' for a in [best, *tied])}) "
                         f"are within two standard errors: a tie")
        else:
            best_text = f"the best final accuracy was {arm_label(best)}'s {finals[best]:.1%}"
        return {"sentence": f"No method closed {min(fractions):.0%} of the gap to the teacher{within}; {best_text}"
                            + tail, "level": None, "winner": None, "steps_winner": None}
    reached = [a for a in arms if _target(summaries[a], level)["flops"]["median"] is not None]
    fastest = min(reached, key=lambda a: _target(summaries[a], level)["flops"]["median"])
    others = [a for a in arms if a != fastest]
    phrases = {a: _cost_phrase(summaries, a, fastest, level, "flops", "compute") for a in others}
    unmeasured = [a for a in others if phrases[a] is None]
    compared = [phrases[a] for a in others if phrases[a] is not None]
    if unmeasured:
        winner = None
        names = " and ".join(arm_label(a) for a in unmeasured)
        sentence = (f"{arm_label(fastest)} closed {level:.0%} of the gap to the teacher"
                    + (f" with the least compute of the methods that got there ({', '.join(compared)})"
                       if compared else "")
                    + f"; {names} stopped on a smaller budget than that without getting there, so no method is "
                      f"named the cheapest")
    else:
        winner = fastest
        sentence = f"{arm_label(winner)} closed {level:.0%} of the gap to the teacher with the least compute"
        sentence += f" ({', '.join(compared)})" if compared else ""
    if eval_count:
        ahead = [a for a in others if finals[a] > finals[fastest] and not is_tie(finals[a], finals[fastest], eval_count)]
        if ahead:
            leader = max(ahead, key=lambda a: finals[a])
            sentence += (f", but it ended below {arm_label(leader)} ({finals[fastest]:.1%} against "
                         f"{finals[leader]:.1%} final accuracy)")
    steps_winner = None
    if "opd" in summaries and "rl" in summaries:
        # The seed's step claim, at the largest fraction OPD or RL reached (it may be below `level`).
        step_level = next((f for f in fractions if f <= level and any(
            _target(summaries[a], f)["steps"]["median"] is not None for a in ("opd", "rl"))), None)
        where = "" if step_level in (None, level) else f" to close {step_level:.0%} of the gap"
        if step_level is None:
            sentence += f"; neither OPD nor RL closed {min(fractions):.0%} of the gap"
        else:
            first = min(("opd", "rl"), key=lambda a: _steps_or_inf(summaries[a], step_level))
            second = "rl" if first == "opd" else "opd"
            found = ratio(summaries, second, first, step_level, "steps")
            if found["bound"] == ">" and found["value"] <= 1:
                sentence += (f"; {arm_label(first)} got there in {_target(summaries[first], step_level)['steps']['median']:.0f} "
                             f"steps and {arm_label(second)} stopped sooner without getting there{where}")
            elif found["bound"] == "=" and found["value"] < SAME_COST:
                sentence += f"; OPD and RL needed about as many gradient steps{where}"
            else:
                steps_winner = first
                sentence += (f"; {arm_label(first)} needed {format_ratio(found)} fewer gradient steps than "
                             f"{arm_label(second)}{where}")
    return {"sentence": sentence + tail, "level": level, "winner": winner, "steps_winner": steps_winner}


def _steps_or_inf(arm_summary: dict, fraction: float) -> float:
    steps = _target(arm_summary, fraction)["steps"]["median"]
    return math.inf if steps is None else steps


# Runs picked by hand (the Compare tab, notebook 3): each named by what differs between
# their configs ("OPD · estimator=full · T=0.7") and measured with the functions above,
# so no run "reaches" a target at step 0 and the verdict is `verdict` over the runs.
#
#     >>> run_labels([{"method": "opd", "seed": 0, "temperature": 1.0},
#     ...             {"method": "opd", "seed": 0, "temperature": 0.7}])
#     ['OPD · T=1', 'OPD · T=0.7']

# Config fields that never tell runs apart for a reader (names are unique by construction).
UNLABELLED_FIELDS = ("name", "trust_remote_code", "device")
SHORT_FIELD_NAMES = {"temperature": "T", "learning_rate": "lr", "samples_per_prompt": "samples/prompt"}


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def comparable(value):
    """A value as settings compare it: numbers by value (the form's `1` is the CLI's `1.0`),
    containers element by element, booleans apart from numbers.

    Example:
        >>> comparable(1) == comparable(1.0), comparable(True) == comparable(1)
        (True, False)
    """
    if isinstance(value, bool) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(comparable(item) for item in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(key), comparable(item)) for key, item in value.items())))
    return ("text", str(value))


def run_labels(configs: list[dict]) -> list[str]:
    """A legend name per config: its method, then every field whose value differs between the configs
    (compared by value: `1` and `1.0` are one value)."""
    fields = sorted({key for config in configs for key in config} - {"method", *UNLABELLED_FIELDS})
    differing = [key for key in fields if len({comparable(config.get(key)) for config in configs}) > 1]
    labels = []
    for config in configs:
        parts = [method_name(str(config.get("method", "?")))]
        parts += [f"{SHORT_FIELD_NAMES.get(key, key)}={_short(config.get(key))}" for key in differing]
        labels.append(" · ".join(parts))
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):  # identical configs (a rerun): number them
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[index] = f"{label} #{seen[label]}"
    return labels


def _run_cost_text(target: dict, cost: str) -> str:
    found = target[cost]
    value = found["median"] if found["median"] is not None else found["lower_bound"]
    text = {"steps": f"{value:.0f} steps", "samples": f"{value:.0f} samples", "flops": f"{value:.2g} FLOPs",
            "wall_s": f"{value:.0f} s"}[cost]
    return text if found["median"] is not None else f"> {text}"


def compare_runs(run_dirs: list[str | os.PathLike], base_accuracy: float, teacher_accuracy: float,
                 fractions=GAP_FRACTIONS) -> dict:
    """One row per run with an evaluation, and the verdict over them.

    Returns:
        `{"headers", "rows", "labels", "verdict", "summaries"}`: rows hold the run's label,
        final and best accuracy, then per gap fraction "reached (steps, samples, FLOPs, wall)"
        or "not reached" with the whole budget as a lower bound; `verdict` is
        `opd_lab.verdict`'s dict with its sentence in the runs' own labels.
    """
    paths = [Path(run_dir) for run_dir in run_dirs]
    metrics = {path: load_metrics(path) for path in paths}
    evaluated = [path for path in paths if any(isinstance(row.get(ACCURACY), (int, float))
                                               for row in metrics[path])]
    labels = dict(zip(paths, run_labels([load_config(path) for path in paths])))
    headers = ["run", "id", "final accuracy", "best accuracy"] + [
        f"to close {fraction:.0%} of the gap ({gap_target(base_accuracy, teacher_accuracy, fraction):.1%})"
        for fraction in fractions]
    summaries, rows = {}, []
    for path in evaluated:
        summary = summarize_arm([metrics[path]], base_accuracy, teacher_accuracy, fractions)
        summaries[labels[path]] = summary
        best = max(row[ACCURACY] for row in metrics[path] if isinstance(row.get(ACCURACY), (int, float)))
        cells = []
        for target in summary["targets"]:
            costs = ", ".join(_run_cost_text(target, cost) for cost in ("steps", "samples", "flops", "wall_s"))
            cells.append(costs if target["reached"] else f"not reached ({costs})")
        rows.append([labels[path], path.name, f"{summary['final_accuracy']['median']:.1%}", f"{best:.1%}", *cells])
    if not summaries:
        return {"headers": headers, "rows": [], "labels": labels, "summaries": {},
                "verdict": {"sentence": "No chosen run has an evaluation yet.", "level": None, "winner": None}}
    counts = {load_config(path).get("eval_count") for path in evaluated}
    eval_count = counts.pop() if len(counts) == 1 and isinstance(next(iter(counts)), int) else None
    found = verdict(summaries, base_accuracy, teacher_accuracy, eval_count=eval_count)
    sentence = found["sentence"].replace(" (median of 1 seeds).", ".")
    for label in summaries:  # report names arms by method; these arms are runs with labels
        sentence = sentence.replace(arm_label(label), label)
    return {"headers": headers, "rows": rows, "labels": labels, "summaries": summaries,
            "verdict": {**found, "sentence": sentence}}
