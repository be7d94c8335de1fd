"""The figure of a compare report: mean and spread over seeds, by steps and by FLOPs.

Runs of one arm are evaluated at the same steps, so by steps the seeds line up; a
seed that stopped early (it closed 95% of the gap) keeps its last accuracy. By FLOPs
each seed is interpolated on a common grid. The band is the range over seeds.

Example:
    >>> seed_band_figure("~/.cache/opd-lab/reports/baseline-20261125-101500")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from opd_lab import report
from opd_lab.plot_style import method_color
from opd_lab.plots import metric_points
from opd_lab.files import read_json
from opd_lab.run_folder import load_metrics

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
        rows = [load_metrics(folder / "runs" / run["run"]) for run in runs]
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
