"""How figures look: one colour and one name per method, one title per metric, one layout.

Shared by every figure (`opd_lab.plots` for runs, `opd_lab.plots_kl` for per-token KL,
`opd_lab.divergence_demo` for the teaching figure), so an OPD curve is the same blue in
every chart of the app and the notebooks. Only constants and tiny lookups: no module
of opd_lab is imported here.

Example:
    >>> method_name("opd"), method_color("opd")
    ('OPD', '#2563eb')
"""

from __future__ import annotations

METHOD_COLORS = {"opd": "#2563eb", "sft": "#d97706", "rl": "#16a34a"}
METHOD_NAMES = {"opd": "OPD", "sft": "SFT", "rl": "RL"}
OTHER_COLOR = "#6b7280"

# The layout every single figure starts from (`fig.update_layout(**FIGURE_LAYOUT, height=...)`):
# a white template, room for axis titles, and the legend in one row above the plot.
FIGURE_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
                 "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0}}

METRIC_TITLES = {
    "eval/accuracy": "held-out accuracy",
    "eval/completion_len": "held-out completion length (tokens)",
    "train/loss": "training loss",
    "train/reverse_kl": "reverse KL(student ‖ teacher) per token (nats)",
    "train/reward": "mean reward of the student's samples",
    "train/accuracy": "accuracy of the student's samples",
    "train/completion_len": "completion length (tokens)",
    "train/grad_norm": "gradient norm (before clipping)",
    "train/zero_advantage_fraction": "RL: share of samples in groups with equal rewards (no signal)",
}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method.upper())


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, OTHER_COLOR)


# The smoothing (EMA factor) every chart of the app starts with, the same in every tab;
# the raw curve stays drawn faintly under the smoothed one.
DEFAULT_SMOOTHING = 0.6
