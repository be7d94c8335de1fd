"""Figures and tables built from synthetic run folders, and the forward/reverse KL fits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic_runs import make_run

from opd_lab import divergence_demo, plot_style, plots, plots_kl
from opd_lab.run_folder import load_samples, sample_steps


@pytest.fixture()
def runs(tmp_path):
    """An OPD, an SFT and an RL run of 20 steps, evaluated every 5 steps."""
    opd = make_run(tmp_path, "opd-a", "opd", eval_accuracy={0: 0.1, 5: 0.3, 10: 0.5, 15: 0.6, 20: 0.8})
    sft = make_run(tmp_path, "sft-a", "sft", eval_accuracy={0: 0.1, 5: 0.2, 10: 0.3, 15: 0.35, 20: 0.4},
                   flops_per_step=5e11)
    rl = make_run(tmp_path, "rl-a", "rl", eval_accuracy={0: 0.1, 5: 0.1, 10: 0.2, 15: 0.3, 20: 0.45},
                  flops_per_step=4e12)
    return [opd, sft, rl]


def test_training_curves_one_trace_per_run_only_rows_with_the_metric(runs):
    fig = plots.training_curves(runs, metric="eval/accuracy", x="step")
    assert [trace.name for trace in fig.data] == ["opd-a", "sft-a", "rl-a"]
    assert list(fig.data[0].x) == [0, 5, 10, 15, 20]
    assert list(fig.data[0].y) == [0.1, 0.3, 0.5, 0.6, 0.8]
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text

    loss = plots.training_curves(runs[:1], metric="train/loss", x="flops", log_y=True, labels=["mine"])
    assert loss.data[0].name == "mine" and len(loss.data[0].x) == 20  # step 0 has no loss
    assert loss.data[0].x[0] == 1e12 and loss.layout.yaxis.type == "log"


@pytest.mark.parametrize("x, key", [("samples", "progress/samples"), ("tokens", "progress/tokens"),
                                    ("flops", "perf/flops"), ("wall", "perf/wall_s")])
def test_training_curves_x_axes(runs, x, key):
    fig = plots.training_curves(runs[0], x=x)
    assert list(fig.data[0].x) == [step * {"progress/samples": 8, "progress/tokens": 96,
                                           "perf/flops": 1e12, "perf/wall_s": 0.5}[key]
                                   for step in (0, 5, 10, 15, 20)]


def test_smoothing_is_an_ema_and_bad_arguments_raise(runs):
    fig = plots.training_curves(runs[0], smoothing=0.5)
    raw, smoothed = fig.data  # the raw curve drawn faintly behind the EMA, as in TensorBoard
    assert list(smoothed.y) == pytest.approx([0.1, 0.2, 0.35, 0.475, 0.6375])
    assert list(raw.y) == pytest.approx([0.1, 0.3, 0.5, 0.6, 0.8]) and raw.opacity < 0.5 and not raw.showlegend
    with pytest.raises(ValueError, match="unknown x 'epochs'.*step, samples, tokens, flops, wall"):
        plots.training_curves(runs, x="epochs")
    with pytest.raises(ValueError, match="smoothing"):
        plots.training_curves(runs, smoothing=1.0)
    with pytest.raises(ValueError, match="labels"):
        plots.training_curves(runs, labels=["only one"])


def test_missing_metric_gives_an_empty_figure_with_a_note(runs):
    fig = plots.training_curves(runs, metric="eval/nothing")
    assert len(fig.data) == 0 and "eval/nothing" in fig.layout.annotations[0].text
    assert fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False  # no -100%..400% axes


def test_available_metrics(runs):
    metrics = plots.available_metrics(runs)
    assert "eval/accuracy" in metrics and "train/reverse_kl" in metrics and "perf/flops" in metrics
    assert "step" not in metrics and metrics == sorted(metrics)


def test_method_comparison_colours_by_method_and_draws_the_teacher(runs):
    extra = make_run(runs[0].parent, "opd-b", "opd")
    fig = plots.method_comparison(runs + [extra], x="flops", teacher_accuracy=0.9)
    assert [trace.name for trace in fig.data] == ["OPD (opd-a)", "SFT (sft-a)", "RL (rl-a)", "OPD (opd-b)"]
    colors = [trace.line.color for trace in fig.data]
    assert colors[:3] == [plot_style.METHOD_COLORS[m] for m in ("opd", "sft", "rl")]
    assert colors[3] != colors[0] and colors[3].startswith("#")  # a second OPD run: another shade of blue
    assert fig.data[0].line.dash != fig.data[3].line.dash  # same method, told apart by dash too
    assert fig.layout.hovermode == "x unified"
    assert list(fig.data[2].x) == [step * 4e12 for step in (0, 5, 10, 15, 20)]
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].line.dash == "dash"
    assert fig.layout.shapes[0].y0 == 0.9
    with pytest.raises(ValueError, match="unknown x"):
        plots.method_comparison(runs, x="gpu_hours")


def test_plots_define_no_cost_to_target_of_their_own():
    """The cost of reaching a target is `opd_lab.report`'s gap-based one, and only that."""
    assert not [name for name in dir(plots) if "target" in name.lower()]


def test_kl_heatmap_pads_shorter_samples_and_escapes_hover_text(runs):
    samples = load_samples(runs[0], step=10)
    samples[0]["tokens"][0]["text"] = "<script>x</script>"
    fig = plots_kl.kl_heatmap(samples)
    assert len(fig.data) == 1
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape == (2, 12)  # two samples; the second has 9 tokens, padded with NaN
    assert np.isnan(z[1, 9:]).all() and not np.isnan(z[1, :9]).any()
    assert z[0, 0] == pytest.approx(0.1)
    assert fig.data[0].text[0][0] == "&lt;script&gt;x&lt;/script&gt;"
    assert fig.data[0].text[0][2] == "·the"
    assert len(plots_kl.kl_heatmap([]).data) == 0


def test_kl_histogram_counts_every_token(runs):
    samples = load_samples(runs[0])
    fig = plots_kl.kl_histogram(samples)
    assert len(fig.data) == 1 and len(fig.data[0].x) == sum(len(sample["tokens"]) for sample in samples)


def test_kl_over_training_has_sample_means_and_the_metric(runs):
    fig = plots_kl.kl_over_training(runs[0])
    assert sample_steps(runs[0]) == [10, 20]
    assert len(fig.data) == 2
    assert list(fig.data[0].x) == [10, 20] and list(fig.data[0].y) == pytest.approx([0.1, 0.05])
    assert len(fig.data[1].x) == 20 and fig.data[1].y[0] == pytest.approx(0.5 * math.exp(-0.1))


def test_kl_over_training_smooths_the_batch_curve_and_marks_the_viewed_step(runs):
    fig = plots_kl.kl_over_training(runs[0], smoothing=0.9, step=10, log_y=True)
    raw, smoothed = fig.data[1], fig.data[2]
    assert raw.opacity < 0.5 and list(raw.y) != list(smoothed.y)
    assert smoothed.y[0] == raw.y[0] and "EMA 0.9" in smoothed.name
    assert [shape.x0 for shape in fig.layout.shapes] == [10]
    assert fig.layout.yaxis.type == "log"


def test_fit_gaussian_reverse_is_mode_seeking_forward_is_mode_covering():
    mu, sigma, kl = divergence_demo.fit_gaussian("reverse", separation=8.0, mode_sigma=1.0)
    assert abs(abs(mu) - 4.0) < 0.1 and abs(sigma - 1.0) < 0.1
    assert kl == pytest.approx(math.log(2), abs=0.01)  # q covers half of p's mass
    mu, sigma, kl = divergence_demo.fit_gaussian("forward", separation=8.0, mode_sigma=1.0)
    assert abs(mu) < 0.1 and sigma == pytest.approx(math.sqrt(1 + 16), abs=0.05)  # moment matching
    # Close modes: covering both is cheaper than log 2, so the reverse fit is broad too.
    mu, sigma, _ = divergence_demo.fit_gaussian("reverse", separation=4.0)
    assert abs(mu) < 0.1 and sigma > 1.5
    with pytest.raises(ValueError, match="divergence"):
        divergence_demo.fit_gaussian("jsd")


@pytest.mark.parametrize("divergence", ["reverse", "forward"])
def test_divergence_teaching_figure(divergence):
    fig = divergence_demo.divergence_teaching_figure(divergence)
    assert len(fig.data) == 2
    p, q = (np.asarray(trace.y, dtype=float) for trace in fig.data)
    dx = fig.data[0].x[1] - fig.data[0].x[0]
    assert p.sum() * dx == pytest.approx(1.0, abs=1e-3) and q.sum() * dx == pytest.approx(1.0, abs=1e-2)
    assert fig.data[1].line.color == plot_style.METHOD_COLORS["opd" if divergence == "reverse" else "sft"]


def test_divergence_explorer_slider_shows_one_separation_at_a_time():
    fig = divergence_demo.divergence_explorer(separations=(2.0, 8.0), start=8.0)
    assert len(fig.data) == 6 and len(fig.layout.sliders[0].steps) == 2
    assert fig.layout.sliders[0].active == 1
    assert [trace.visible for trace in fig.data] == [False] * 3 + [True] * 3
    close, far = (step.args[0]["visible"] for step in fig.layout.sliders[0].steps)
    assert close == [True] * 3 + [False] * 3 and far == [False] * 3 + [True] * 3
    # Far modes: the reverse fit sits on one mode, the forward fit straddles both.
    reverse, forward = fig.data[4], fig.data[5]
    x = np.asarray(reverse.x, dtype=float)
    assert abs(abs(x[np.argmax(reverse.y)]) - 4.0) < 0.2 and abs(x[np.argmax(forward.y)]) < 0.2
    assert "OPD" in reverse.name and "SFT" in forward.name
    with pytest.raises(ValueError, match="separations"):
        divergence_demo.divergence_explorer(separations=())


def test_summarize_run_reads_start_end_best_and_cost(tmp_path):
    from opd_lab.run_folder import summarize_run

    run = make_run(tmp_path, "sft-demo", method="sft", steps=20, eval_accuracy={0: 0.3, 10: 0.9, 20: 0.7},
                   batch_size=8, flops_per_step=2e12, seconds_per_step=0.5)
    summary = summarize_run(run)
    assert summary["run"] == "sft-demo" and summary["method"] == "sft" and summary["steps"] == 20
    assert (summary["accuracy_start"], summary["accuracy_end"], summary["accuracy_best"]) == (0.3, 0.7, 0.9)
    assert summary["samples"] == 160 and summary["flops"] == pytest.approx(4e13)
    assert summary["wall_s"] == pytest.approx(10.0)
