"""Plotly figures of runs: learning curves and OPD vs SFT vs RL.

Every builder reads run folders only (through `opd_lab.run_folder`, see
docs/run-folder.md) and returns a `plotly.graph_objects.Figure` without showing it:
a notebook displays it as the cell's value, the app passes it to `gr.Plot`. The
per-token KL figures are in `opd_lab.plots_kl`, the forward- vs reverse-KL teaching
figure in `opd_lab.divergence_demo`.

Each method keeps one colour everywhere (`opd_lab.plot_style`), so an OPD curve is the
same blue in every chart of the app and the notebooks. What a run paid to close a share
of the gap to the teacher is a number, not a figure: `opd_lab.report` computes it.

Example:
    >>> runs = ["~/.cache/opd-lab/runs/opd-addition-0001",
    ...         "~/.cache/opd-lab/runs/rl-addition-0001"]  # doctest: +SKIP
    >>> method_comparison(runs, x="flops", teacher_accuracy=0.93)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from opd_lab import report
from opd_lab.files import read_json
from opd_lab.plot_style import FIGURE_LAYOUT, METRIC_TITLES, method_color, method_name
from opd_lab.run_folder import load_config, load_metrics

# x choice -> (metrics.jsonl key, axis title). All are cumulative counters.
X_AXES = {
    "step": ("step", "optimizer step"),
    "samples": ("progress/samples", "sequences trained on"),
    "tokens": ("progress/tokens", "completion tokens trained on"),
    "flops": ("perf/flops", "FLOPs (sampling + teacher scoring + training)"),
    "wall": ("perf/wall_s", "wall-clock training time (s)"),
}

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")

def _as_paths(run_dirs) -> list[Path]:
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    return [Path(run_dir).expanduser() for run_dir in run_dirs]


def _checked_runs(run_dirs, smoothing: float, labels: Sequence[str] | None) -> list[Path]:
    """The run folders of a curves figure, after checking its smoothing and its labels (one per run)."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1) (got {smoothing})")
    paths = _as_paths(run_dirs)
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"labels: expected {len(paths)} names, one per run (got {len(labels)})")
    return paths


def method_of(run_dir: str | os.PathLike) -> str:
    """The run's method ("opd", "sft", "rl") from its config.json; "?" if unknown."""
    return str(load_config(run_dir).get("method", "?"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_points(rows: list[dict], x_key: str, metric: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of the rows that hold a finite `metric` and a finite `x_key`."""
    pairs = [(row[x_key], row[metric]) for row in rows
             if _finite(row.get(metric)) and _finite(row.get(x_key))]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average: s_i = smoothing * s_(i-1) + (1 - smoothing) * v_i, s_0 = v_0."""
    smoothed, current = [], None
    for value in values:
        current = value if current is None else smoothing * current + (1 - smoothing) * value
        smoothed.append(current)
    return smoothed


def _shade(color: str, repeat: int) -> str:
    """The `repeat`-th shade of a method colour: the colour, then darker, lighter, darker still..."""
    if repeat == 0:
        return color
    red, green, blue = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    amount = 0.3 * ((repeat + 1) // 2)
    target = 0 if repeat % 2 else 255
    return "#" + "".join(f"{round(channel + (target - channel) * min(amount, 0.8)):02x}" for channel in (red, green, blue))


def curve_traces(xs: list, ys: list, label: str, color: str | None, smoothing: float, hover: str,
                  dash: str = "solid", group: str | None = None) -> list[go.Scatter]:
    """A run's curve: raw, or (with `smoothing`) its EMA drawn over the raw values shown faintly, as TensorBoard does."""
    mode = "lines+markers" if len(xs) <= 30 else "lines"
    line = dict(color=color, dash=dash) if color else dict(dash=dash)
    if not smoothing:
        return [go.Scatter(x=xs, y=ys, name=label, mode=mode, line=line, legendgroup=group or label,
                           hovertemplate=hover)]
    return [go.Scatter(x=xs, y=ys, name=f"{label} (raw)", mode="lines", line=dict(line, width=1), opacity=0.25,
                       legendgroup=group or label, showlegend=False, hoverinfo="skip"),
            go.Scatter(x=xs, y=_ema(ys, smoothing), name=label, mode="lines", line=line,
                       legendgroup=group or label, hovertemplate=hover)]


def _x_key(x: str) -> tuple[str, str]:
    if x not in X_AXES:
        raise ValueError(f"unknown x {x!r}: use one of {', '.join(X_AXES)} "
                         f"(they plot the metrics keys {', '.join(key for key, _ in X_AXES.values())})")
    return X_AXES[x]


def _layout(fig: go.Figure, title: str, x: str, metric: str, log_y: bool = False,
            log_x: bool = False) -> go.Figure:
    x_title = _x_key(x)[1]
    fig.update_layout(**FIGURE_LAYOUT, title=title, height=420, hovermode="closest")
    fig.update_xaxes(title_text=x_title, type="log" if log_x else None,
                     exponentformat="power" if x in ("flops", "tokens") else None)
    accuracy = metric.endswith("accuracy") and not log_y
    fig.update_yaxes(title_text=METRIC_TITLES.get(metric, metric), type="log" if log_y else None,
                     tickformat=".0%" if accuracy else None, range=[0, 1.02] if accuracy else None)
    return fig


def placeholder(fig: go.Figure, text: str) -> go.Figure:
    """An empty figure's message alone, without axes (an empty plot's axes read like -1..6 and -100%..400%)."""
    fig.add_annotation(text=text, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       font=dict(size=14, color="#555"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=200)
    return fig


def training_curves(run_dirs, metric: str = "eval/accuracy", x: str = "step", smoothing: float = 0.0,
                    log_y: bool = False, labels: Sequence[str] | None = None) -> go.Figure:
    """One curve per run of `metric` against `x`, overlaid.

    Args:
        run_dirs: one run folder or a list of them.
        metric: a metrics.jsonl key; only rows holding it are plotted (``eval/*``
            metrics exist only on evaluation steps).
        x: "step", "samples", "tokens", "flops" or "wall" (see X_AXES).
        smoothing: exponential-moving-average factor in [0, 1); 0 plots the raw values,
            0.9 averages over roughly the last 10 points.
        log_y: logarithmic y axis (useful for losses and KL).
        labels: legend names, one per run; default the run folder names (run ids).

    Returns:
        A figure with one trace per run that has at least one point.
    """
    x_key, _ = _x_key(x)
    paths = _checked_runs(run_dirs, smoothing, labels)
    fig = go.Figure()
    for index, path in enumerate(paths):
        xs, ys = metric_points(load_metrics(path), x_key, metric)
        if not xs:
            continue
        label = labels[index] if labels is not None else path.name
        hover = f"{label}<br>{x}=%{{x}}<br>{METRIC_TITLES.get(metric, metric)} %{{y:{_y_format(metric)}}}<extra></extra>"
        fig.add_traces(curve_traces(xs, ys, label, method_color(method_of(path)), smoothing, hover))
    title = METRIC_TITLES.get(metric, metric) + (f" (EMA {smoothing:g})" if smoothing else "")
    _layout(fig, title, x, metric, log_y=log_y)
    if not fig.data:
        placeholder(fig, f"no run has {metric!r} yet")
    return fig


def available_metrics(run_dirs) -> list[str]:
    """Every metric key logged by any of the runs (``step`` excluded), sorted."""
    keys = set()
    for path in _as_paths(run_dirs):
        for row in load_metrics(path):
            keys.update(key for key, value in row.items() if _finite(value))
    keys.discard("step")
    return sorted(keys)


def _y_format(metric: str) -> str:
    return ".1%" if metric.endswith("accuracy") or "accuracy/" in metric else ".4g"


def task_curves(run_dir, metric: str = "eval/accuracy", per_task: dict[str, str] | None = None) -> go.Figure:
    """A multi-task run's `metric` (the weighted mean over its tasks) beside each task's
    own key (`per_task`: task -> key, e.g. "eval/accuracy/addition"), against steps: each
    skill of a merged student.

    Example:
        >>> task_curves(run_dir, "eval/accuracy", {"addition": "eval/accuracy/addition"})  # doctest: +SKIP
    """
    fig = training_curves([run_dir], metric, labels=["weighted mean"])
    rows = load_metrics(Path(run_dir))
    for task, key in (per_task or {}).items():
        xs, ys = metric_points(rows, "step", key)
        hover = f"{task}<br>step=%{{x}}<br>{metric} %{{y:{_y_format(metric)}}}<extra></extra>"
        fig.add_traces(curve_traces(xs, ys, task, None, 0.0, hover, dash="dot"))
    fig.update_layout(title=f"{METRIC_TITLES.get(metric, metric)} per task")
    return fig


def method_comparison(run_dirs, x: str = "flops", metric: str = "eval/accuracy",
                      teacher_accuracy: float | None = None, log_x: bool = False,
                      labels: Sequence[str] | None = None, smoothing: float = 0.0, log_y: bool = False) -> go.Figure:
    """OPD vs SFT vs RL on one chart: each run coloured by its config's method.

    Runs of the same method get shades of its colour and differ by dash; `labels`
    (e.g. `opd_lab.report.run_labels`) name them, default "OPD (run_id)".
    `smoothing` and `log_y` as in `training_curves`. With
    `teacher_accuracy`, a dashed horizontal line marks the teacher. With `log_x`, the
    step-0 points (x = 0) drop out, as a logarithmic axis has no 0.

    Returns:
        A figure with one trace per run that has points, named like "OPD (run_id)".
    """
    x_key, _ = _x_key(x)
    paths = _checked_runs(run_dirs, smoothing, labels)
    fig = go.Figure()
    seen: dict[str, int] = {}
    for index, path in enumerate(paths):
        xs, ys = metric_points(load_metrics(path), x_key, metric)
        if not xs:
            continue
        method = method_of(path)
        repeat = seen.get(method, 0)
        seen[method] = repeat + 1
        label = labels[index] if labels is not None else f"{method_name(method)} ({path.name})"
        hover = f"{label}: %{{y:{_y_format(metric)}}}<extra></extra>"
        fig.add_traces(curve_traces(xs, ys, label, _shade(method_color(method), repeat), smoothing, hover,
                                     dash=_DASHES[repeat % len(_DASHES)], group=path.name))
    if teacher_accuracy is not None:
        fig.add_hline(y=teacher_accuracy, line_dash="dash", line_color="#111",
                      annotation_text=f"teacher {teacher_accuracy:.1%}" if metric.endswith("accuracy")
                      else f"teacher {teacher_accuracy:.4g}", annotation_position="bottom right")
    _layout(fig, f"{METRIC_TITLES.get(metric, metric)} by {_x_key(x)[1]}", x, metric, log_x=log_x, log_y=log_y)
    fig.update_layout(hovermode="x unified")
    if not fig.data:
        placeholder(fig, f"no run has {metric!r} yet")
    return fig


# The figure of a compare report (`opd-lab compare`): mean and spread over seeds.
# Runs of one arm are evaluated at the same steps, so by steps the seeds line up; a
# seed that stopped early (it closed 95% of the gap) keeps its last accuracy. By FLOPs
# each seed is interpolated on a common grid. The band is the range over seeds.
#
# Example:
#     >>> seed_band_figure("~/.cache/opd-lab/reports/baseline-20261125-101500")  # doctest: +SKIP

ARM_COLORS = {"opd-full": "#7c3aed"}


def seed_bands(curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean, min and max over seeds on `grid`; a seed holds its last value after its end."""
    values = np.stack([np.interp(grid, xs, ys, right=ys[-1]) for xs, ys in curves])
    return values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def seed_band_figure(folder: str | Path) -> go.Figure:
    """Accuracy (mean and range over seeds) against steps and FLOPs, with the teacher and targets."""
    folder = Path(folder).expanduser()
    data = read_json(folder / "report.json")
    figure = make_subplots(rows=1, cols=2, subplot_titles=("by optimizer steps", "by total FLOPs"),
                           horizontal_spacing=0.08)
    for arm in report.ordered_arms(data["runs"]):
        runs = data["runs"][arm]
        color = ARM_COLORS.get(arm) or method_color(arm)
        rows = [load_metrics(report.run_path(folder, run)) for run in runs]
        for col, x_key in ((1, "step"), (2, "perf/flops")):
            curves = [tuple(np.asarray(v, dtype=float) for v in metric_points(r, x_key, report.ACCURACY)) for r in rows]
            curves = [c for c in curves if len(c[0])]
            if not curves:
                continue
            top = max(xs[-1] for xs, _ in curves)
            grid = np.linspace(0, top, 60) if x_key != "step" else np.unique(np.concatenate([xs for xs, _ in curves]))
            mean, low, high = seed_bands(curves, grid)
            name = report.arm_label(arm)
            figure.add_trace(go.Scatter(x=np.concatenate([grid, grid[::-1]]), y=np.concatenate([high, low[::-1]]),
                                        fill="toself", fillcolor=color, opacity=0.15, line={"width": 0},
                                        hoverinfo="skip", showlegend=False, legendgroup=arm), row=1, col=col)
            figure.add_trace(go.Scatter(x=grid, y=mean, mode="lines", line={"color": color, "width": 2},
                                        name=f"{name} (mean of {len(curves)})", legendgroup=arm,
                                        showlegend=col == 1), row=1, col=col)
    for col in (1, 2):
        figure.add_hline(y=data["teacher_accuracy"], line={"dash": "dash", "color": "#111827"}, row=1, col=col,
                         annotation_text="teacher" if col == 1 else None)
        figure.add_hline(y=report.gap_target(data["base_accuracy"], data["teacher_accuracy"], 0.95),
                         line={"dash": "dot", "color": "#6b7280"}, row=1, col=col,
                         annotation_text="95% of the gap" if col == 1 else None)
    figure.update_yaxes(title_text="held-out accuracy", range=[0, 1.02], tickformat=".0%", row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    figure.update_xaxes(title_text="step", row=1, col=1)
    figure.update_xaxes(title_text="FLOPs (sampling + teacher + training)", row=1, col=2)
    figure.update_layout(title=f"Scenario {data['scenario']}: {data['verdict']['sentence']}", title_font_size=13,
                         template="plotly_white", height=430, margin={"t": 80}, legend={"orientation": "h", "y": -0.2})
    return figure
