"""Plotly figures about KL: where in a completion the student departs from the teacher,
and how that changes over training.

The per-token figures read the records of samples.jsonl (`opd_lab.run_folder.load_samples`);
their colours match the token view's (`opd_lab.tokenview`): white for 0, red for high KL.

Example:
    >>> kl_heatmap(load_samples(run_dir, step=10))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import os

import numpy as np
import plotly.graph_objects as go

from opd_lab.plot_style import FIGURE_LAYOUT, METRIC_TITLES
from opd_lab.plots import curve_traces, placeholder
from opd_lab.run_folder import load_metrics, load_samples
from opd_lab.tokenview import color_for

KL_COLORSCALE = [[0.0, color_for(0.0)], [1.0, color_for(math.inf)]]  # the token view's white -> red
KL_AXIS_TITLE = METRIC_TITLES["train/reverse_kl"]


def _token_kl(token: dict) -> float:
    value = token.get("reverse_kl")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def _hover_text(text: str) -> str:
    # Plotly renders hover text as a small subset of HTML, so the token is escaped.
    visible = text.replace(" ", "·").replace("\t", "→").replace("\n", "↵") or "∅"
    return html.escape(visible, quote=True)


def _sample_label(sample: dict, row: int) -> str:
    verdict = {True: " ✓", False: " ✗"}.get(sample.get("correct"), "")
    return f"step {sample.get('step', '?')} #{sample.get('index', row)}{verdict}"


def kl_heatmap(samples: list[dict], title: str | None = None) -> go.Figure:
    """Reverse KL at every position of every sample: rows = samples, columns = token positions.

    Args:
        samples: rows of samples.jsonl (usually one step's, `load_samples(run, step)`).
        title: the figure title; default says how many samples.

    Returns:
        One heatmap trace of shape (samples, longest completion); shorter completions
        are padded with NaN (blank). Hovering a cell shows the token's text.
    """
    fig = go.Figure()
    fig.update_layout(template="plotly_white", height=max(260, 60 + 28 * len(samples)),
                      margin=dict(l=110, r=20, t=50, b=50),
                      title=title or f"per-token reverse KL of {len(samples)} samples")
    if not samples:
        return placeholder(fig, "no samples logged")
    width = max((len(sample.get("tokens", [])) for sample in samples), default=0)
    kl_ST = np.full((len(samples), width), np.nan)  # (samples, positions)
    text_ST = [[""] * width for _ in samples]
    for row, sample in enumerate(samples):
        for position, token in enumerate(sample.get("tokens", [])):
            kl_ST[row, position] = _token_kl(token)
            text_ST[row][position] = _hover_text(str(token.get("text", "")))
    fig.add_trace(go.Heatmap(
        z=kl_ST, text=text_ST, x=list(range(width)), y=list(range(len(samples))),
        colorscale=KL_COLORSCALE, zmin=0, hoverongaps=False, colorbar=dict(title="nats"),
        hovertemplate="sample %{y}, position %{x}<br>token %{text}<br>reverse KL %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="token position in the completion")
    fig.update_yaxes(autorange="reversed", tickvals=list(range(len(samples))),
                     ticktext=[_sample_label(sample, row) for row, sample in enumerate(samples)])
    return fig


def kl_histogram(samples: list[dict], bins: int = 40) -> go.Figure:
    """Histogram of the per-token reverse KL of all tokens of `samples` (one trace)."""
    values = [kl for sample in samples for token in sample.get("tokens", [])
              if math.isfinite(kl := _token_kl(token))]
    fig = go.Figure()
    title = (f"per-token reverse KL of {len(values)} tokens (mean {sum(values) / len(values):.3f} nats)"
             if values else "per-token reverse KL")
    fig.update_layout(template="plotly_white", height=360, title=title, bargap=0.05,
                      margin=dict(l=60, r=20, t=50, b=50))
    fig.update_xaxes(title_text=KL_AXIS_TITLE)
    fig.update_yaxes(title_text="tokens")
    if not values:
        return placeholder(fig, "no tokens with a reverse KL")
    fig.add_trace(go.Histogram(x=values, nbinsx=bins, marker_color=color_for(math.inf), name="tokens"))
    return fig


def kl_over_training(run_dir: str | os.PathLike, smoothing: float = 0.0, step: int | None = None,
                     log_y: bool = False) -> go.Figure:
    """Mean per-token reverse KL of the logged samples at each sample step, and the
    ``train/reverse_kl`` metric (every step's whole batch) when the run logged it.

    The sample means are token-weighted (total KL over total tokens) like the metric,
    but over a handful of rollouts, so they are noisier.

    Args:
        smoothing: EMA factor in [0, 1) for the training-batch curve, drawn over its
            faint raw values (the batch KL is noisy: ±0.3 around a trend of 0.03).
        step: the step being viewed, marked by a vertical line.
        log_y: a logarithmic y axis.
    Returns:
        The "logged samples" trace and, if present, the "training batch" traces.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1) (got {smoothing})")
    totals: dict[int, list[float]] = {}
    for sample in load_samples(run_dir):
        kls = [kl for token in sample.get("tokens", []) if math.isfinite(kl := _token_kl(token))]
        if "step" in sample and kls:
            total = totals.setdefault(sample["step"], [0.0, 0])
            total[0] += sum(kls)
            total[1] += len(kls)
    fig = go.Figure()
    steps = sorted(totals)
    if steps:
        fig.add_trace(go.Scatter(x=steps, y=[totals[step][0] / totals[step][1] for step in steps],
                                 mode="lines+markers", name="logged samples", line=dict(color=color_for(math.inf)),
                                 hovertemplate="step %{x}<br>mean KL %{y:.4f} nats<extra></extra>"))
    rows = [row for row in load_metrics(run_dir)
            if isinstance(row.get("train/reverse_kl"), (int, float)) and math.isfinite(row["train/reverse_kl"])]
    if rows:
        label = "training batch (train/reverse_kl" + (f", EMA {smoothing:g})" if smoothing else ")")
        fig.add_traces(curve_traces([row["step"] for row in rows], [row["train/reverse_kl"] for row in rows], label,
                                    "#6b7280", smoothing, "step %{x}<br>train/reverse_kl %{y:.4f} nats<extra></extra>"))
    if step is not None and fig.data:
        fig.add_vline(x=step, line_dash="dot", line_color="#111", annotation_text=f"viewing step {step}",
                      annotation_position="top left")
    fig.update_layout(**FIGURE_LAYOUT, height=380, title="reverse KL to the teacher over training")
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text=METRIC_TITLES["train/reverse_kl"], type="log" if log_y else "linear")
    if not fig.data:
        placeholder(fig, "no reverse KL logged yet")
    return fig
