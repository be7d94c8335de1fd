"""The Inspect tab: the teacher's verdict on every token the student wrote during training.

A run logs a few rollouts with per-token records every `sample_every` steps
(samples.jsonl). Pick a run, a logged step and a sample: its tokens are coloured by
the OPD advantage, the teacher's verdict on each written token (or by the reverse KL),
on the scale the Playground locks too; hovering a token shows both
models' probabilities and the teacher's alternatives. The heatmap shows every logged
sample of that step, and the last chart the KL over training (smoothed, the viewed step
marked): step through the logged steps to watch it fall.

Two ways to ask "what if" of a logged sample:

* **Side by side**: the same prompt in another run at a logged step (or in this run at
  another step), on one colour scale (`tokenview.render_side_by_side`). Runs with the
  same seed draw the same prompts, so OPD and SFT can be compared token by token.
* **The red pen**: replace a token and let the student of that run re-write the rest,
  through the Playground's one path (`playground_tab.red_pen`, `opd_lab.feedback`). The
  student is the run's checkpoint nearest the one that wrote the sample (`pen_student`).
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from opd_lab_app.playground_tab import (COLOR_CHOICES, DEFAULT_COLOR, clear_pen, color_legend, pen_choices, pen_panel, red_pen,
                                scale_of)
from opd_lab_app.inputs import hide_paths
from opd_lab_app.state import error_text, run_dir_of, run_ids
from opd_lab import model_spec, plots_kl, runs, tokenview
from opd_lab.checkpoints import checkpoint_dirs, step_of
from opd_lab.plot_style import DEFAULT_SMOOTHING
from opd_lab.run_folder import load_config, load_samples, sample_steps, written_by

INTRO = ("**See what the teacher thinks of each token.** Pick a run, a logged step and one of its "
         "samples: red tokens are the ones the teacher would not have written. Hover a token for the "
         "numbers and the teacher's alternatives; use **Previous step** / **Next step** to watch the "
         "KL fall over training (the dotted line marks the step you view).")


def steps_of(run_id: str) -> list[int]:
    try:
        return sample_steps(run_dir_of(run_id))
    except runs.RunError:
        return []


def sample_label(sample: dict) -> str:
    verdict = {True: "✓ correct", False: "✗ wrong"}.get(sample.get("correct"), "")
    return f"#{sample.get('index', '?')} {sample.get('prompt', '')} {verdict}".strip()


def judged_by(sample: dict) -> str:
    """Which teacher scored a logged sample (runs with several teachers log it per sample)."""
    if "teacher" not in sample:
        return ""
    task = f" ({hide_paths(str(sample['task']))})" if sample.get("task") else ""
    return f", judged by teacher {hide_paths(str(sample['teacher']))}{task}"


def sample_choices(run_id: str, step) -> list[tuple[str, int]]:
    """(label, index) of the samples logged at `step`."""
    try:
        samples = load_samples(run_dir_of(run_id), step=int(step))
    except (runs.RunError, TypeError, ValueError):
        return []
    return [(sample_label(sample), position) for position, sample in enumerate(samples)]


def token_view(run_id: str, step, index, color_by: str = DEFAULT_COLOR, locked: bool = True) -> str:
    """The token view (HTML) of one logged sample; an error line if there is none."""
    if color_by not in tokenview.COLOR_KINDS:
        return error_text(f"unknown colouring {color_by!r}")
    try:
        samples = load_samples(run_dir_of(run_id), step=int(step))
        sample = samples[int(index)]
    except runs.RunError as error:
        return error_text(error)
    except (TypeError, ValueError, IndexError):
        return "Choose a logged step and a sample."
    writer = WRITERS.get(writer_of(run_id, sample))
    title = f"{run_id}, step {step}, {sample_label(sample)}" + (f" ({writer})" if writer else "") + judged_by(sample)
    return tokenview.render_tokens(sample.get("tokens", []), prompt=sample.get("prompt"), color_by=color_by,
                                   title=title, vmax=scale_of(locked))


def logged_sample(run_id: str, step, index) -> dict:
    """One logged sample of a run.

    Raises:
        runs.RunError: an unknown run, or no sample `index` logged at `step`.
    """
    try:
        return load_samples(run_dir_of(run_id), step=int(step))[int(index)]
    except (TypeError, ValueError, IndexError):
        raise runs.RunError("choose a logged step and a sample first") from None


def side_by_side(run_id: str, step, index, other_run: str, other_step, color_by: str = DEFAULT_COLOR,
                 locked: bool = True) -> str:
    """The viewed sample beside the same prompt as logged in `other_run` at `other_step` (HTML).

    When that prompt was not logged there, a sentence says so and lists what was.

    Example:
        >>> side_by_side("opd-...", 150, 0, "sft-...", 150)  # doctest: +SKIP
    """
    if not other_run or other_step is None:
        return "<p>Choose a run and a logged step to compare with.</p>"
    try:
        sample = logged_sample(run_id, step, index)
        others = load_samples(run_dir_of(other_run), step=int(other_step))
    except runs.RunError as error:
        return f"<p><b>Error:</b> {html.escape(str(error))}</p>"
    except (TypeError, ValueError):
        return "<p>Choose a run and a logged step to compare with.</p>"
    prompt = sample.get("prompt", "")
    same = [other for other in others if other.get("prompt") == prompt]
    if not same:
        logged = ", ".join(sorted({str(other.get("prompt", "")) for other in others})) or "none"
        return (f"<p>The prompt <code>{html.escape(prompt)}</code> was not logged in <b>{html.escape(other_run)}</b> "
                f"at step {html.escape(str(other_step))} (the prompts logged there: {html.escape(logged)}).</p>")
    other = next((o for o in same if o.get("index") == sample.get("index")), same[0])
    color_by = color_by if color_by in tokenview.COLOR_KINDS else DEFAULT_COLOR
    return tokenview.render_side_by_side(
        sample.get("tokens", []), other.get("tokens", []), _column_title(run_id, step, sample),
        _column_title(other_run, other_step, other), prompt=prompt, color_by=color_by, vmax=scale_of(locked))


WRITERS = {"teacher": "written by the teacher; SFT trained on it",
           "reference": "the task's worked solution; SFT trained on it"}


def writer_of(run_id: str, sample: dict) -> str:
    """Who wrote a logged completion ("student", "teacher", "reference"): the sample's own
    `written_by`, else (runs logged before it existed) inferred from the run's method."""
    if sample.get("written_by") in ("student", "teacher", "reference"):
        return sample["written_by"]
    try:
        config = load_config(run_dir_of(run_id))
    except runs.RunError:
        return "student"
    return written_by(str(config.get("method")), str(config.get("sft_source", "teacher")))


def _column_title(run_id: str, step, sample: dict) -> str:
    """A side-by-side column's title; an SFT sample says it is the teacher's (or the reference's)
    text the student trained on, never the student's own answer."""
    verdict = {True: "✓ correct", False: "✗ wrong"}.get(sample.get("correct"), "")
    writer = WRITERS.get(writer_of(run_id, sample))
    return f"{run_id} at step {step}" + (f" ({writer})" if writer else "") + (f" {verdict}" if verdict else "") + judged_by(sample)


def pen_student(run_dir: Path, step: int) -> tuple[Path, str]:
    """The checkpoint the red pen uses for a sample logged at `step`, and a sentence saying which.

    The sample of step `step` was written before that step's update, by the student of
    step `step - 1`; the run keeps only some checkpoints, so the nearest one stands in
    (the earlier one on a tie).

    Raises:
        runs.RunError: the run has no checkpoint yet.
    """
    saved = checkpoint_dirs(run_dir)
    if not saved:
        raise runs.RunError(f"run {run_dir.name} has no checkpoint yet: the red pen needs the student's weights")
    wrote = step - 1
    chosen = min(saved, key=lambda checkpoint: (abs(step_of(checkpoint) - wrote), step_of(checkpoint)))
    if step_of(chosen) == wrote:
        return chosen, f"Student: the checkpoint at step {wrote}, the one that wrote this sample."
    return chosen, (f"Student: the checkpoint at step {step_of(chosen)}, the nearest kept to the one that wrote "
                    f"this sample (step {wrote}).")


def inspect_red_pen(run_id: str, step, index, position, replacement: str, color_by: str = DEFAULT_COLOR,
                    locked: bool = True, trust_remote_code: bool = False) -> tuple[str, str]:
    """The red pen on a logged sample: `(before/after HTML, verdict)`, as in the Playground."""
    try:
        sample = logged_sample(run_id, step, index)
        checkpoint, student = pen_student(run_dir_of(run_id), int(step))
    except runs.RunError as error:
        return "", error_text(error)
    view, verdict = red_pen(model_spec.checkpoint_spec(run_id, checkpoint.name), sample.get("prompt", ""),
                            sample.get("tokens", []), position, replacement, color_by, trust_remote_code, locked)
    if verdict.startswith("**Error:**"):
        return view, verdict
    logged = {True: "right", False: "wrong"}.get(sample.get("correct"))
    known = f"  \nDuring training the run's verifier judged the old completion **{logged}**." if logged else ""
    return view, f"{student}  \n{verdict}{known}"


def step_figures(run_id: str, step, smoothing: float = 0.0, log_y: bool = False):
    """(per-position KL heatmap of the step's samples, KL over training with the step marked)."""
    run_dir = run_dir_of(run_id)
    samples = load_samples(run_dir, step=int(step)) if step is not None else []
    smoothing = min(max(float(smoothing or 0.0), 0.0), 0.99)
    return (plots_kl.kl_heatmap(samples, title=f"per-token reverse KL at step {step}"),
            plots_kl.kl_over_training(run_dir, smoothing=smoothing, step=int(step) if step is not None else None,
                                      log_y=bool(log_y)))


def _neighbour(run_id: str, step, offset: int):
    steps = steps_of(run_id)
    if not steps:
        return None
    if step not in steps:
        return steps[-1]
    return steps[min(max(steps.index(step) + offset, 0), len(steps) - 1)]


def build(trust_remote_code: bool = False) -> dict:
    """The tab's widgets and events (call inside a `gr.Tab`); returns the run pickers."""
    gr.Markdown(INTRO, elem_classes="tab-intro")
    with gr.Row():
        run = gr.Dropdown(run_ids(), value=None, label="Run", scale=3, elem_id="inspect-run", allow_custom_value=True)
        step = gr.Dropdown([], label="Logged step", scale=1, elem_id="inspect-step", allow_custom_value=True)
        sample = gr.Dropdown([], label="Sample", scale=3, elem_id="inspect-sample", allow_custom_value=True)
    with gr.Row():
        previous = gr.Button("◀ Previous step", elem_id="inspect-previous")
        following = gr.Button("Next step ▶", elem_id="inspect-next")
        color = gr.Radio(COLOR_CHOICES, value=DEFAULT_COLOR, label="Colour tokens by", scale=3,
                         elem_id="inspect-color")
        locked = gr.Checkbox(True, label="lock the colour scale", scale=1, elem_id="inspect-locked",
                             info=f"±{tokenview.LOCKED_VMAX:g} nats in every view, step and run")
    with gr.Row():
        view = gr.HTML(elem_id="token-view", padding=True)
        gr.Markdown(color_legend(), elem_id="inspect-legend")
    pen_position, pen_text, pen, pen_result, pen_view = pen_panel(
        "inspect-", "**Red pen.** Click a token of the sample above, choose what to write instead (the "
                    "teacher's first choice is preselected), and this run's student re-writes the rest from there.")
    with gr.Accordion("Side by side: this prompt in another run, or at another step", open=True):
        with gr.Row():
            other_run = gr.Dropdown(run_ids(), value=None, label="Compare with run", scale=3,
                                    elem_id="inspect-other-run", allow_custom_value=True)
            other_step = gr.Dropdown([], label="at logged step", scale=1, elem_id="inspect-other-step",
                                     allow_custom_value=True)
        side_view = gr.HTML(elem_id="inspect-side-view", padding=True)
    heatmap = gr.Plot(label="All samples of this step", elem_id="kl-heatmap")
    with gr.Row():
        smoothing = gr.Slider(0.0, 0.99, value=DEFAULT_SMOOTHING, step=0.01, label="smoothing of the batch KL (EMA)",
                              elem_id="inspect-smoothing", scale=3)
        log_y = gr.Checkbox(False, label="log y", scale=1)
    over_training = gr.Plot(label="KL over training", elem_id="kl-over-training")

    def on_step(run_id, step_value, index, color_by, lock=True, smoothing_value=0.0, log_value=False):
        """Outputs: sample picker, token view, heatmap, KL over training."""
        if not run_id or step_value is None:
            return gr.update(choices=[], value=None), "", None, None
        try:
            heat, curve = step_figures(run_id, step_value, smoothing_value, log_value)
        except runs.RunError as error:
            return gr.update(choices=[], value=None), error_text(error), None, None
        choices = sample_choices(run_id, step_value)
        index = index if isinstance(index, int) and index < len(choices) else 0
        return (gr.update(choices=choices, value=index if choices else None),
                token_view(run_id, step_value, index, color_by, lock), heat, curve)

    def on_run_change(run_id, color_by, lock, smoothing_value, log_value):
        steps = steps_of(run_id)
        if not steps:
            message = "This run has not logged samples yet." if run_id else ""
            return gr.update(choices=[], value=None), gr.update(choices=[], value=None), message, None, None
        return (gr.update(choices=steps, value=steps[-1]),
                *on_step(run_id, steps[-1], 0, color_by, lock, smoothing_value, log_value))

    def on_move(run_id, step_value, index, color_by, lock, smoothing_value, log_value, offset):
        target = _neighbour(run_id, step_value, offset)
        if target is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (gr.update(value=target), *on_step(run_id, target, index, color_by, lock, smoothing_value, log_value))

    step_outputs = [sample, view, heatmap, over_training]
    look = [color, locked, smoothing, log_y]

    def cleared_then(trigger, **render):
        """On `trigger`, empty the red pen, then render the new sample: its tokens appear only
        once the pen is cleared, so a click on them cannot be undone by a late clear."""
        trigger(clear_pen, outputs=[pen_position, pen_text, pen_result, pen_view], api_visibility="private",
                queue=False).then(**render, api_visibility="private")

    cleared_then(run.input, fn=on_run_change, inputs=[run, *look], outputs=[step, *step_outputs])
    cleared_then(step.input, fn=on_step, inputs=[run, step, sample, *look], outputs=step_outputs)
    gr.on([smoothing.release, log_y.input], on_step, inputs=[run, step, sample, *look],
          outputs=step_outputs, api_visibility="private")
    cleared_then(previous.click, fn=lambda *a: on_move(*a, -1), inputs=[run, step, sample, *look],
                 outputs=[step, *step_outputs])
    cleared_then(following.click, fn=lambda *a: on_move(*a, +1), inputs=[run, step, sample, *look],
                 outputs=[step, *step_outputs])
    cleared_then(sample.input, fn=token_view, inputs=[run, step, sample, color, locked], outputs=view)
    gr.on([color.input, locked.input], token_view, inputs=[run, step, sample, color, locked],
          outputs=view, api_name="token_view")

    def on_other_run(other, step_value):
        steps = steps_of(other)
        return gr.update(choices=steps, value=step_value if step_value in steps else (steps[-1] if steps else None))

    def on_position(run_id, step_value, index, position):
        try:
            choices = pen_choices(logged_sample(run_id, step_value, index).get("tokens", []), position)
        except runs.RunError:
            choices = []
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def on_pen(run_id, step_value, index, position, replacement, color_by, lock):
        return inspect_red_pen(run_id, step_value, index, position, replacement, color_by, lock, trust_remote_code)

    side = dict(fn=side_by_side, inputs=[run, step, sample, other_run, other_step, color, locked], outputs=side_view,
                api_visibility="private")
    other_run.input(on_other_run, inputs=[other_run, step], outputs=other_step, api_visibility="private").then(**side)
    gr.on([other_step.input, view.change], **side)
    pen_position.change(on_position, inputs=[run, step, sample, pen_position], outputs=pen_text,
                        api_visibility="private")
    pen.click(on_pen, inputs=[run, step, sample, pen_position, pen_text, color, locked],
              outputs=[pen_view, pen_result], api_name="inspect_red_pen")
    return {"run": run, "other_run": other_run}
