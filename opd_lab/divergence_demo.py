"""Forward vs reverse KL on one picture: the Gaussian teaching demo (notebook 1).

`divergence_teaching_figure` is the textbook picture behind OPD's choice of divergence:
fit one Gaussian q to a two-mode target p. Minimizing the forward KL(p ‖ q), which is
what SFT on the teacher's samples does (cross-entropy on samples of p), spreads q over
both modes, putting mass between them where p has almost none. Minimizing the reverse
KL(q ‖ p), OPD's objective, locks q onto one mode, because q is penalized wherever it
puts mass that p lacks and not for ignoring a mode. Locking costs log 2 nats with two
equal modes (q misses half of p), so it only wins once the modes are far enough apart
for the gap between them to cost more: beyond about 6 mode widths. Closer modes make
even the reverse fit a broad one, a good thing to try with `separation`.

Example:
    >>> mu, sigma, kl = fit_gaussian("reverse", separation=8.0)
    >>> round(abs(mu), 1), round(sigma, 1), round(kl, 2)
    (4.0, 1.0, 0.69)
    >>> mu, sigma, kl = fit_gaussian("forward", separation=8.0)
    >>> round(abs(mu), 1), round(sigma, 1)
    (0.0, 4.1)
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from opd_lab.plot_style import FIGURE_LAYOUT, METHOD_COLORS


KL_DIRECTIONS = ("reverse", "forward")  # KL(q ‖ p) and KL(p ‖ q)
_GRID_POINTS = 1201


def _normal_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)


def _target_grid(separation: float, mode_sigma: float, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """The grid x on [-half_width, half_width] and log p(x) of
    p = ½ N(-separation/2, mode_sigma) + ½ N(+separation/2, mode_sigma)."""
    half = separation / 2
    x_G = np.linspace(-half_width, half_width, _GRID_POINTS)
    log_p_G = np.logaddexp(_normal_logpdf(x_G, -half, mode_sigma), _normal_logpdf(x_G, half, mode_sigma)) + math.log(0.5)
    return x_G, log_p_G


def _logsumexp(values: np.ndarray) -> np.ndarray:
    """log(sum(exp(values))) over the last axis, kept as a size-1 axis."""
    peak = values.max(axis=-1, keepdims=True)
    return peak + np.log(np.exp(values - peak).sum(axis=-1, keepdims=True))


def _kl_table(divergence: str, x_G, log_p_G, mu_M, sigma_S) -> np.ndarray:
    """KL between p and every candidate N(mu, sigma), as distributions on the grid. (M, S)"""
    log_q_MSG = _normal_logpdf(x_G[None, None, :], mu_M[:, None, None], sigma_S[None, :, None])
    log_q_MSG -= _logsumexp(log_q_MSG)
    log_p_G = log_p_G - _logsumexp(log_p_G)
    if divergence == "forward":  # KL(p || q) = sum p (log p - log q)
        return (np.exp(log_p_G) * (log_p_G - log_q_MSG)).sum(-1)
    return (np.exp(log_q_MSG) * (log_q_MSG - log_p_G)).sum(-1)  # KL(q || p)


def fit_gaussian(divergence: str = "reverse", separation: float = 8.0,
                 mode_sigma: float = 1.0) -> tuple[float, float, float]:
    """The single Gaussian q = N(mu, sigma) closest to the two-mode p under one KL.

    A coarse-to-fine grid search over (mu, log sigma) on a discretized line: no
    gradients, deterministic, a few tens of milliseconds. With two equal modes the
    reverse fit has two equally good answers; the search returns either.

    Args:
        divergence: "reverse" minimizes KL(q ‖ p) (mode-seeking, OPD); "forward"
            minimizes KL(p ‖ q) (mode-covering; its optimum matches p's mean and
            variance: mu = 0, sigma = sqrt(mode_sigma² + separation² / 4)).
        separation: the distance between the two modes of p (below about
            6 * mode_sigma the reverse fit covers both modes too).
        mode_sigma: the standard deviation of each mode.

    Returns:
        (mu, sigma, kl) with kl in nats.
    """
    if divergence not in KL_DIRECTIONS:
        raise ValueError(f"divergence must be one of {', '.join(KL_DIRECTIONS)} (got {divergence!r})")
    if not (separation >= 0 and mode_sigma > 0):
        raise ValueError(f"need separation >= 0 and mode_sigma > 0 (got {separation}, {mode_sigma})")
    half = separation / 2
    # Wide enough that even the widest candidate q keeps its tails on the grid: a
    # truncated q would have a smaller variance than its sigma says, biasing the fit.
    x_G, log_p_G = _target_grid(separation, mode_sigma, half_width=4 * (half + 2 * mode_sigma))
    mu_M = np.linspace(-half - 2 * mode_sigma, half + 2 * mode_sigma, 61)
    sigma_S = np.geomspace(0.2 * mode_sigma, half + 2 * mode_sigma, 40)
    for _ in range(4):
        kl_MS = _kl_table(divergence, x_G, log_p_G, mu_M, sigma_S)
        m, s = np.unravel_index(np.argmin(kl_MS), kl_MS.shape)
        best = float(mu_M[m]), float(sigma_S[s]), float(kl_MS[m, s])
        mu_step, sigma_ratio = mu_M[1] - mu_M[0], sigma_S[1] / sigma_S[0]
        mu_M = np.linspace(best[0] - mu_step, best[0] + mu_step, 21)
        sigma_S = np.geomspace(best[1] / sigma_ratio, best[1] * sigma_ratio, 21)
    return best


def divergence_teaching_figure(divergence: str = "reverse", separation: float = 8.0,
                               mode_sigma: float = 1.0) -> go.Figure:
    """The two-mode target p and its best single-Gaussian fit q under one KL (two traces).

    Reverse KL(q ‖ p) is drawn in OPD's colour and forward KL(p ‖ q) in SFT's, since
    those are the divergences the two methods minimize.
    """
    mu, sigma, kl = fit_gaussian(divergence, separation, mode_sigma)
    half_width = max(separation / 2 + 4 * mode_sigma, abs(mu) + 3 * sigma)
    x_G, log_p_G = _target_grid(separation, mode_sigma, half_width)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x_G, y=np.exp(log_p_G), name="target p (two modes)", mode="lines",
                             fill="tozeroy", line=dict(color="#6b7280"), fillcolor="rgba(107,114,128,0.25)"))
    color = METHOD_COLORS["opd"] if divergence == "reverse" else METHOD_COLORS["sft"]
    fig.add_trace(go.Scatter(x=x_G, y=np.exp(_normal_logpdf(x_G, mu, sigma)), mode="lines",
                             name=f"best Gaussian q: μ = {mu:.2f}, σ = {sigma:.2f}", line=dict(color=color, width=3)))
    if divergence == "reverse":
        title = f"Reverse KL(q ‖ p) = {kl:.3f} nats: mode-seeking, q locks onto one mode"
    else:
        title = f"Forward KL(p ‖ q) = {kl:.3f} nats: mode-covering, q spreads over both modes"
    fig.update_layout(**FIGURE_LAYOUT, height=380, title=title)
    fig.update_xaxes(title_text="x")
    fig.update_yaxes(title_text="density")
    return fig


def divergence_explorer(separations=(0.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0),
                        mode_sigma: float = 1.0, start: float = 8.0) -> go.Figure:
    """Both fits at once, with a slider over the distance between p's two modes.

    The interactive version of `divergence_teaching_figure` for notebooks and the app:
    the slider lives in the figure itself (no widget library, no kernel callback), so
    it works in JupyterLab, in Gradio and in an exported HTML file. Each slider
    position shows p, the reverse-KL fit (OPD's, mode-seeking) and the forward-KL fit
    (SFT's, mode-covering), with both KL values in the legend.

    Args:
        separations: the distances between the modes offered by the slider.
        mode_sigma: the standard deviation of each mode.
        start: the separation shown first (the nearest offered one).
    """
    separations = [float(s) for s in separations]
    if not separations or any(not (s >= 0) for s in separations):
        raise ValueError(f"separations must be a non-empty list of numbers >= 0 (got {separations!r})")
    half_width = max(separations) / 2 + 4 * mode_sigma
    fig = go.Figure()
    for separation in separations:
        x_G, log_p_G = _target_grid(separation, mode_sigma, half_width)
        fig.add_trace(go.Scatter(x=x_G, y=np.exp(log_p_G), name="target p (two modes)", mode="lines",
                                 fill="tozeroy", line=dict(color="#6b7280"), fillcolor="rgba(107,114,128,0.25)",
                                 visible=False))
        for divergence, label, method in (("reverse", "reverse KL(q ‖ p), OPD", "opd"),
                                          ("forward", "forward KL(p ‖ q), SFT", "sft")):
            mu, sigma, kl = fit_gaussian(divergence, separation, mode_sigma)
            fig.add_trace(go.Scatter(x=x_G, y=np.exp(_normal_logpdf(x_G, mu, sigma)), mode="lines", visible=False,
                                     name=f"{label}: μ = {mu:.1f}, σ = {sigma:.1f}, KL = {kl:.2f}",
                                     line=dict(color=METHOD_COLORS[method], width=3,
                                               dash="solid" if divergence == "reverse" else "dash")))
    first = min(range(len(separations)), key=lambda i: abs(separations[i] - start))
    for trace in fig.data[3 * first: 3 * first + 3]:
        trace.visible = True
    steps = []
    for index, separation in enumerate(separations):
        visible = [3 * index <= trace < 3 * index + 3 for trace in range(3 * len(separations))]
        steps.append(dict(method="update", label=f"{separation:g}", args=[{"visible": visible}]))
    fig.update_layout(**{**FIGURE_LAYOUT, "margin": {**FIGURE_LAYOUT["margin"], "b": 40}}, height=460,
                      title="Best single Gaussian q for a two-mode p: reverse vs forward KL",
                      sliders=[dict(active=first, steps=steps, pad=dict(t=50),
                                    currentvalue=dict(prefix="distance between the modes: "))])
    fig.update_xaxes(title_text="x")
    fig.update_yaxes(title_text="density")
    return fig
