"""The Inspect tab: the teacher's verdict on every token the student wrote during training.

A run logs a few rollouts with per-token records every `sample_every` steps
(samples.jsonl). Pick a run, a logged step and a sample: its tokens are coloured by
the OPD advantage, the teacher's verdict on each written token (or by the reverse KL),
on the scale the Playground locks too; hovering a token shows both
models' probabilities and the teacher's alternatives. The heatmap shows every logged
sample of that step, and the last chart the KL over training (smoothed, the viewed step
marked): step through the logged steps to watch it fall.
"""

from __future__ import annotations

import gradio as gr

from app.state import error_text, run_dir_of, run_ids
from opd_lab import plots_kl, runs, tokenview
from opd_lab.run_folder import load_samples, sample_steps

from app.playground_tab import COLOR_CHOICES, DEFAULT_COLOR, color_legend, scale_of

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
    title = f"{run_id}, step {step}, {sample_label(sample)}"
    return tokenview.render_tokens(sample.get("tokens", []), prompt=sample.get("prompt"), color_by=color_by,
                                   title=title, vmax=scale_of(locked))


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


def build() -> dict:
    """The tab's widgets and events (call inside a `gr.Tab`); returns the run picker."""
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
    heatmap = gr.Plot(label="All samples of this step", elem_id="kl-heatmap")
    with gr.Row():
        smoothing = gr.Slider(0.0, 0.99, value=0.9, step=0.01, label="smoothing of the batch KL (EMA)",
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
    run.input(on_run_change, inputs=[run, *look], outputs=[step, *step_outputs], api_visibility="private")
    gr.on([step.input, smoothing.release, log_y.input], on_step, inputs=[run, step, sample, *look],
          outputs=step_outputs, api_visibility="private")
    previous.click(lambda *a: on_move(*a, -1), inputs=[run, step, sample, *look], outputs=[step, *step_outputs],
                   api_visibility="private")
    following.click(lambda *a: on_move(*a, +1), inputs=[run, step, sample, *look], outputs=[step, *step_outputs],
                    api_visibility="private")
    gr.on([sample.input, color.input, locked.input], token_view, inputs=[run, step, sample, color, locked],
          outputs=view, api_name="token_view")
    return {"run": run}
