"""The Compare tab: runs overlaid on one chart, and what each paid to reach the teacher.

Curves are coloured by method (OPD, SFT, RL) and can be drawn against steps, samples,
tokens, FLOPs or wall-clock time; the compute-to-target table reads the teacher's
accuracy from the built lab's summary. One button starts the textbook experiment: RL,
SFT and OPD on the lab with the same budget.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app import report_panel
from app.state import error_text, run_dir_of, run_ids
from opd_lab import plots, runs
from opd_lab.compare import method_configs
from opd_lab.config import RL_SAMPLES_PER_PROMPT, ConfigError, RunConfig
from opd_lab.lab import lab_summary
from opd_lab.run_folder import load_config

X_CHOICES = list(plots.X_AXES)
DEFAULT_METRIC = "eval/accuracy"

INTRO = ("**Compare runs.** Choose runs, an x-axis and a metric: curves are coloured by method "
         "(OPD blue, SFT orange, RL green). The table says when each run first reached a share of the "
         "teacher's held-out accuracy, and what that cost. The button below starts RL, SFT and OPD on "
         "the lab with the same budget.")


def _teacher_accuracy(run_dirs) -> tuple[float | None, str]:
    """The lab teacher's accuracy for the runs' task, and a note when there is none."""
    tasks = sorted({str(load_config(run_dir).get("task")) for run_dir in run_dirs})
    if len(tasks) != 1:
        return None, f"The runs use different tasks ({', '.join(tasks)}): compare runs of one task."
    summary = lab_summary(tasks[0])
    if summary is None:
        return None, f"No built lab for task {tasks[0]!r}, so no teacher accuracy to aim at."
    return summary["teacher"]["accuracy"], ""


def comparison(selected: list[str], x: str, metric: str):
    """(figure, compute-to-target table, note) for the chosen runs."""
    empty_table = pd.DataFrame(columns=plots.TARGET_TABLE_HEADERS)
    if not selected:
        return None, empty_table, "Choose at least one run."
    if x not in plots.X_AXES:
        return None, empty_table, error_text(f"unknown x-axis {x!r}")
    try:
        run_dirs = [run_dir_of(run_id) for run_id in selected]
    except runs.RunError as error:
        return None, empty_table, error_text(error)
    metric = metric or DEFAULT_METRIC
    teacher, note = _teacher_accuracy(run_dirs)
    figure = plots.method_comparison(run_dirs, x=x, metric=metric,
                                     teacher_accuracy=teacher if metric.endswith("accuracy") else None)
    if teacher is None:
        return figure, empty_table, note
    if teacher <= 0:
        return figure, empty_table, "The lab's teacher has 0% held-out accuracy: there is no target to reach."
    table = plots.compute_to_target_table(run_dirs, teacher)
    note = (f"Targets are shares of the lab teacher's held-out accuracy, {teacher:.1%}. "
            "FLOPs count sampling, teacher scoring and training.")
    return figure, pd.DataFrame(table["data"], columns=table["headers"]), note


def launch_three(steps, batch_size) -> tuple[str, list[str]]:
    """Create and launch the RL/SFT/OPD trio: `(message, run ids)`; all three or none."""
    try:
        configs = method_configs(int(steps or 0), int(batch_size or 0))
    except (ConfigError, ValueError) as error:
        return f"**Not launched.** {error}", []
    try:
        launched = [run_dir.name for run_dir, _ in runs.start_runs(configs)]
    except runs.RunError as error:
        return f"**Not launched.** {error}", []
    return (f"Launched {', '.join(f'**{run}**' for run in launched)}: {steps} steps each, "
            f"{batch_size} sampled sequences per step. They are selected above; the chart fills in "
            "as they evaluate (press **Update**)."), launched


def build() -> dict:
    """The tab's widgets and events (call inside a `gr.Tab`); returns the run picker."""
    with gr.Accordion("RL vs SFT vs OPD on a lab scenario: several seeds and a verdict", open=True):
        report_picker, report_outputs = report_panel.build()
    gr.Markdown(INTRO, elem_classes="tab-intro")
    with gr.Row():
        chosen = gr.Dropdown(run_ids(), value=[], multiselect=True, label="Runs", scale=4, elem_id="compare-runs",
                             allow_custom_value=True)
        x = gr.Radio(X_CHOICES, value="step", label="x-axis", scale=3)
        metric = gr.Dropdown([DEFAULT_METRIC], value=DEFAULT_METRIC, label="Metric", allow_custom_value=True,
                             scale=2)
    update = gr.Button("Update", variant="primary")
    figure = gr.Plot(label="Runs compared", elem_id="compare-plot")
    note = gr.Markdown()
    table = gr.Dataframe(headers=plots.TARGET_TABLE_HEADERS, interactive=False, label="Compute to reach the target",
                         elem_id="compare-table")
    with gr.Accordion("RL vs SFT vs OPD on the lab, one click", open=True):
        gr.Markdown("Three runs with the same steps and the same number of sampled sequences per step "
                    f"(RL samples {RL_SAMPLES_PER_PROMPT} per prompt, so it gets "
                    f"1/{RL_SAMPLES_PER_PROMPT} of the prompts). Other settings are the defaults.")
        with gr.Row():
            defaults = RunConfig()
            steps = gr.Number(defaults.steps, label="steps", precision=0, minimum=1)
            batch = gr.Number(defaults.batch_size, label="sequences per step", precision=0, minimum=1,
                              step=RL_SAMPLES_PER_PROMPT)
            start = gr.Button("Launch RL, SFT and OPD", variant="primary")
        launched = gr.Markdown()

    def on_metrics(selected):
        try:
            names = plots.available_metrics([run_dir_of(run_id) for run_id in selected or []])
        except runs.RunError:
            names = []
        return gr.update(choices=names or [DEFAULT_METRIC])

    def on_three(steps_value, batch_value):
        text, ids = launch_three(steps_value, batch_value)
        picker = gr.update(choices=run_ids(), value=ids) if ids else gr.skip()
        return text, picker

    update.click(comparison, inputs=[chosen, x, metric], outputs=[figure, table, note], api_name="compare")
    gr.on([chosen.change, x.input, metric.input], comparison, inputs=[chosen, x, metric],
          outputs=[figure, table, note], api_visibility="private")
    chosen.change(on_metrics, inputs=chosen, outputs=metric, api_visibility="private")
    start.click(on_three, inputs=[steps, batch], outputs=[launched, chosen], api_name="launch_three")
    return {"chosen": chosen, "report_picker": report_picker, "report_outputs": report_outputs}
