"""Runs picked by hand, compared: one row per run and a verdict computed from the rows.

The Compare tab (and a notebook) picks any runs; this module names each one by what
differs between their configs ("OPD · estimator=full · T=0.7") and measures each run with
`opd_lab.report`, the code of `opd-lab compare` reports: targets close a share of the
**gap** from the base student to the teacher (`report.gap_target`), so no run "reaches"
a target at step 0, and the verdict sentence is `report.verdict` over the runs.

Example:
    >>> run_labels([{"method": "opd", "seed": 0, "temperature": 1.0},
    ...             {"method": "opd", "seed": 0, "temperature": 0.7}])
    ['OPD · T=1', 'OPD · T=0.7']
"""

from __future__ import annotations

import os
from pathlib import Path

from opd_lab import report
from opd_lab.plot_style import method_name
from opd_lab.run_folder import load_config, load_metrics

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


def _cost_text(target: dict, cost: str) -> str:
    found = target[cost]
    value = found["median"] if found["median"] is not None else found["lower_bound"]
    text = {"steps": f"{value:.0f} steps", "samples": f"{value:.0f} samples", "flops": f"{value:.2g} FLOPs",
            "wall_s": f"{value:.0f} s"}[cost]
    return text if found["median"] is not None else f"> {text}"


def compare_runs(run_dirs: list[str | os.PathLike], base_accuracy: float, teacher_accuracy: float,
                 fractions=report.GAP_FRACTIONS) -> dict:
    """One row per run with an evaluation, and the verdict over them.

    Returns:
        `{"headers", "rows", "labels", "verdict", "summaries"}`: rows hold the run's label,
        final and best accuracy, then per gap fraction "reached (steps, samples, FLOPs, wall)"
        or "not reached" with the whole budget as a lower bound; `verdict` is
        `opd_lab.report.verdict`'s dict with its sentence in the runs' own labels.
    """
    paths = [Path(run_dir) for run_dir in run_dirs]
    metrics = {path: load_metrics(path) for path in paths}
    evaluated = [path for path in paths if any(isinstance(row.get(report.ACCURACY), (int, float))
                                               for row in metrics[path])]
    labels = dict(zip(paths, run_labels([load_config(path) for path in paths])))
    headers = ["run", "id", "final accuracy", "best accuracy"] + [
        f"to close {fraction:.0%} of the gap ({report.gap_target(base_accuracy, teacher_accuracy, fraction):.1%})"
        for fraction in fractions]
    summaries, rows = {}, []
    for path in evaluated:
        summary = report.summarize_arm([metrics[path]], base_accuracy, teacher_accuracy, fractions)
        summaries[labels[path]] = summary
        best = max(row[report.ACCURACY] for row in metrics[path] if isinstance(row.get(report.ACCURACY), (int, float)))
        cells = []
        for target in summary["targets"]:
            costs = ", ".join(_cost_text(target, cost) for cost in ("steps", "samples", "flops", "wall_s"))
            cells.append(costs if target["reached"] else f"not reached ({costs})")
        rows.append([labels[path], path.name, f"{summary['final_accuracy']['median']:.1%}", f"{best:.1%}", *cells])
    if not summaries:
        return {"headers": headers, "rows": [], "labels": labels, "summaries": {},
                "verdict": {"sentence": "No chosen run has an evaluation yet.", "level": None, "winner": None}}
    counts = {load_config(path).get("eval_count") for path in evaluated}
    eval_count = counts.pop() if len(counts) == 1 and isinstance(next(iter(counts)), int) else None
    found = report.verdict(summaries, base_accuracy, teacher_accuracy, eval_count=eval_count)
    sentence = found["sentence"].replace(" (median of 1 seeds).", ".")
    for label in summaries:  # report names arms by method; these arms are runs with labels
        sentence = sentence.replace(report.arm_label(label), label)
    return {"headers": headers, "rows": rows, "labels": labels, "summaries": summaries,
            "verdict": {**found, "sentence": sentence}}
