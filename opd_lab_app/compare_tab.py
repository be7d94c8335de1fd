"""The Compare tab: runs overlaid on one chart, and what each paid to reach the teacher.

Curves are coloured by method (OPD, SFT, RL) and can be drawn against steps, samples,
tokens, FLOPs or wall-clock time; the compute-to-target table reads the teacher's
accuracy from the built lab's summary. One button starts the textbook experiment: RL,
SFT and OPD on the lab with the same budget.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from opd_lab_app import report_panel
from opd_lab_app.inputs import hide_paths
from opd_lab_app.state import error_text, file_stamp, forget_runs_list, run_dir_of, run_ids
from opd_lab_app.users import record
from opd_lab import plots, report, runs
from opd_lab.cli import error_line
from opd_lab.studies.arms import method_configs
from opd_lab.config import RL_SAMPLES_PER_PROMPT, RunConfig
from opd_lab.lab import lab_summary_of
from opd_lab.plot_style import DEFAULT_SMOOTHING
from opd_lab.preflight import check_run_inputs
from opd_lab.run_folder import METRICS_FILE, STATUS_FILE, load_config

X_CHOICES = list(plots.X_AXES)
DEFAULT_METRIC = "eval/accuracy"

INTRO = ("**Compare runs.** Choose runs, an x-axis and a metric: curves are coloured by method "
         "(OPD blue, SFT orange, RL green; shades tell runs of one method apart) and named by what differs "
         "between their settings. The table gives one row per run: its final and best accuracy, and what it "
         "paid to close 50%, 80% and 95% of the gap from the base student to the teacher; the verdict above "
         "it is computed from those numbers. The chart follows the chosen runs while they train.")


def _lab_accuracies(run_dirs) -> tuple[float | None, float | None, str]:
    """(base student, teacher) held-out accuracy of the runs' lab, and a note when there are none.

    The lab is the one the runs' teacher names (`lab` is the task's lab, `lab:NAME` is NAME).
    """
    configs = [load_config(run_dir) for run_dir in run_dirs]
    pairs = sorted({(str(c.get("teacher", "lab")), str(c.get("task"))) for c in configs})
    if len({task for _, task in pairs}) != 1:
        tasks = sorted({task for _, task in pairs})
        return None, None, f"The runs use different tasks ({', '.join(tasks)}): compare runs of one task."
    if len(pairs) != 1:
        return None, None, (f"The runs have different teachers ({', '.join(t for t, _ in pairs)}): "
                            "compare runs of one teacher.")
    teacher, task = pairs[0]
    summary = lab_summary_of(teacher, task)
    if summary is None:
        return None, None, f"The teacher {teacher!r} is not a built lab, so there is no teacher accuracy to aim at."
    return summary["student"]["accuracy"], summary["teacher"]["accuracy"], ""


def comparison(selected: list[str], x: str, metric: str, smoothing: float = 0.0, log_y: bool = False):
    """(figure, one-row-per-run table, verdict and note) for the chosen runs."""
    empty_table = pd.DataFrame()
    if not selected:
        return None, empty_table, "Choose at least one run."
    if x not in plots.X_AXES:
        return None, empty_table, error_text(f"unknown x-axis {x!r}")
    try:
        run_dirs = [run_dir_of(run_id) for run_id in selected]
    except runs.RunError as error:
        return None, empty_table, error_text(error)
    metric = metric or DEFAULT_METRIC
    base, teacher, note = _lab_accuracies(run_dirs)
    labels = report.run_labels([load_config(run_dir) for run_dir in run_dirs])
    figure = plots.method_comparison(run_dirs, x=x, metric=metric, labels=labels,
                                     smoothing=min(max(float(smoothing or 0.0), 0.0), 0.99), log_y=bool(log_y),
                                     teacher_accuracy=teacher if metric.endswith("accuracy") else None)
    if teacher is None:
        return figure, empty_table, note
    found = report.compare_runs(run_dirs, base, teacher)
    note = (f"### Verdict\n{found['verdict']['sentence']}\n\n*{report.GAP_DEFINITION} Here it runs from the base "
            f"student's {base:.1%} to the lab teacher's {teacher:.1%}. FLOPs count sampling, teacher scoring and "
            "training; \"> x\" is the whole budget of a run that did not get there.*")
    return figure, pd.DataFrame(found["rows"], columns=found["headers"]), note


def refresh_signature(selected: list[str]) -> tuple:
    """What the chart of `selected` is drawn from: each run's metrics and status file stamps.

    The chart redraws when this changes, so it follows a training run and draws once more
    after the run ends (its last evaluation and final state land after the last step).
    """
    stamps = []
    for run_id in selected or []:
        try:
            run_dir = run_dir_of(run_id)
        except runs.RunError:
            stamps.append((run_id,))
            continue
        stamps.append((run_id, file_stamp(run_dir / METRICS_FILE), file_stamp(run_dir / STATUS_FILE)))
    return tuple(stamps)


def launch_three(steps, batch_size, request: gr.Request | None = None) -> tuple[str, list[str]]:
    """Create the RL/SFT/OPD trio and launch each run, or queue it at the run limit
    (`runs.submit_run`, like the Launch tab): `(message, run ids)`. A bad input
    creates none of them."""
    try:
        configs = [check_run_inputs(config) for config in method_configs(int(steps or 0), int(batch_size or 0))]
    except (ValueError, OSError) as error:
        return f"**Not launched.** {hide_paths(error_line(error))}", []
    submitted = []
    for config in configs:
        run_dir, pid = runs.submit_run(config)
        record(run_dir, request)
        submitted.append((run_dir.name, pid))
    forget_runs_list()
    positions = runs.queue_positions()
    waiting = [f"**{run}** (#{positions.get(run, '?')} in line)" for run, pid in submitted if pid is None]
    started = [f"**{run}**" for run, pid in submitted if pid is not None]
    text = f"{steps} steps each, {batch_size} sampled sequences per step. "
    if started:
        text += f"Launched {', '.join(started)}. "
    if waiting:
        text += f"At the run limit, so queued: {', '.join(waiting)}; each starts by itself when a place frees. "
    return text + "They are selected above; the chart fills in as they evaluate.", [run for run, _ in submitted]


def build(instructor: str | None = None) -> dict:
    """The tab's widgets and events (call inside a `gr.Tab`); returns the run picker."""
    with gr.Accordion("RL vs SFT vs OPD on a lab scenario: several seeds and a verdict", open=True):
        report_picker, report_outputs = report_panel.build(instructor)
    gr.Markdown(INTRO, elem_classes="tab-intro")
    with gr.Row():
        chosen = gr.Dropdown(run_ids(), value=[], multiselect=True, label="Runs", scale=4, elem_id="compare-runs",
                             allow_custom_value=True)
        x = gr.Radio(X_CHOICES, value="step", label="x-axis", scale=3)
        metric = gr.Dropdown([DEFAULT_METRIC], value=DEFAULT_METRIC, label="Metric", allow_custom_value=True,
                             scale=2)
    with gr.Row():
        smoothing = gr.Slider(0.0, 0.99, value=DEFAULT_SMOOTHING, step=0.01, label="smoothing (EMA; the raw curve stays faint)",
                              scale=3, elem_id="compare-smoothing")
        log_y = gr.Checkbox(False, label="log y axis", scale=1)
        update = gr.Button("Update", variant="primary", scale=1)
    figure = gr.Plot(label="Runs compared", elem_id="compare-plot")
    note = gr.Markdown(elem_id="compare-verdict")
    table = gr.Dataframe(interactive=False, label="One row per run: accuracy, and the cost of closing the gap",
                         elem_id="compare-table", wrap=True)
    timer = gr.Timer(5.0)
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

    def on_three(steps_value, batch_value, request: gr.Request):
        text, ids = launch_three(steps_value, batch_value, request)
        picker = gr.update(choices=run_ids(), value=ids) if ids else gr.skip()
        return text, picker

    drawn = gr.State(None)  # the chosen runs' files when the chart was last drawn

    def on_tick(selected, x_value, metric_value, smoothing_value, log_value, last):
        signature = refresh_signature(selected)
        if signature == last:
            return gr.skip(), gr.skip(), gr.skip(), last
        return (*comparison(selected, x_value, metric_value, smoothing_value, log_value), signature)

    inputs = [chosen, x, metric, smoothing, log_y]
    update.click(comparison, inputs=inputs, outputs=[figure, table, note], api_name="compare")
    gr.on([chosen.change, x.input, metric.input, smoothing.release, log_y.input], comparison, inputs=inputs,
          outputs=[figure, table, note], api_visibility="private")
    timer.tick(on_tick, inputs=[*inputs, drawn], outputs=[figure, table, note, drawn], show_progress="hidden",
               api_visibility="private")
    chosen.change(on_metrics, inputs=chosen, outputs=metric, api_visibility="private")
    start.click(on_three, inputs=[steps, batch], outputs=[launched, chosen], api_name="launch_three")
    return {"chosen": chosen, "report_picker": report_picker, "report_outputs": report_outputs}
