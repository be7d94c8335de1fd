"""The Compare tab's report panel: the verdict, figure and table of an `opd-lab compare` report.

The panel shows a report folder made by `opd_lab.experiment.run_compare` (the CLI's
`opd-lab compare`, or the button here, which starts it in the background): the
verdict computed from the runs, the mean and spread over seeds by steps and FLOPs,
and the compute-to-target table. The browser only names a report; it is looked up
among the report folders.
"""

from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from opd_lab import experiment
from opd_lab.plots_compare import seed_band_figure
from opd_lab.scenarios import SCENARIOS

NO_REPORT = ("No comparison report yet. Start one below (the quick one takes about a minute; a full one "
             "10-20 minutes on 2 cores), or run `opd-lab compare --scenario baseline` in a terminal.")


def report_names() -> list[str]:
    """Local report folders (newest first), then the reports measured for the repository's claims table."""
    return ([folder.name for folder in experiment.list_reports()]
            + [experiment.MEASURED_PREFIX + name for name in experiment.committed_reports()])


def show_report(name: str | None):
    """(verdict markdown, figure, table) of the report called `name`."""
    if not name:
        return NO_REPORT, None, pd.DataFrame()
    committed = experiment.committed_reports()
    try:
        if name.startswith(experiment.MEASURED_PREFIX) and name[len(experiment.MEASURED_PREFIX):] in committed:
            folder = None
            data = json.loads(committed[name[len(experiment.MEASURED_PREFIX):]].read_text())
        else:
            folder = experiment.report_path(name)
            data = experiment.load_report(folder)
    except (FileNotFoundError, ValueError) as error:
        return f"**Cannot show this report.** {error}", None, pd.DataFrame()
    sampled = experiment.sampled_lines(data)
    text = (f"### Verdict (greedy accuracy)\n{data['verdict']['sentence']}\n\n"
            + ("\n".join(sampled) + "\n" if sampled else "") + f"*Scenario `{data['scenario']}`"
            f"{' (quick settings)' if data['quick'] else ''}: {data['condition']} Teacher "
            f"{data['teacher_accuracy']:.1%}, base student {data['base_accuracy']:.1%}; each method's learning rate "
            f"from the same sweep ({', '.join(f'{arm} {lr:g}' for arm, lr in data['learning_rates'].items())}).*")
    if folder is None:
        text += ("\n\n*Measured for the repository's claims table (docs/claims.md); its runs are not shipped, so "
                 "there is no figure: run the comparison to get one.*")
    return text, seed_band_figure(folder) if folder else None, pd.DataFrame(experiment.target_rows(data))


def report_view(name: str | None):
    """`show_report` for the page: the figure's box is hidden when the report has no figure."""
    text, figure, table = show_report(name)
    return text, gr.update(value=figure, visible=figure is not None), table


def start(scenario: str, quick: bool):
    """Start a comparison in the background; returns a status line."""
    try:
        log = experiment.start_compare(scenario, quick=bool(quick))
    except (RuntimeError, ValueError) as error:
        return f"**Not started.** {error}"
    return (f"Started `opd-lab compare --scenario {scenario}{' --quick' if quick else ''}` in the background "
            f"(log: `{log}`). Press **Refresh** when it is done.")


def status() -> str:
    return "A comparison is running." if experiment.compare_running() else "No comparison is running."


def build() -> None:
    """The panel's widgets and events (inside the Compare tab)."""
    names = report_names()
    with gr.Row():
        picker = gr.Dropdown(names, value=names[0] if names else None, label="Comparison report", scale=4,
                             elem_id="report-picker")
        refresh = gr.Button("Refresh", scale=1)
    verdict = gr.Markdown(elem_id="report-verdict")
    figure = gr.Plot(label="Mean and range over seeds", elem_id="report-plot")
    table = gr.Dataframe(interactive=False, label="Compute to close 50%, 80% and 95% of the gap (median over seeds)",
                         elem_id="report-table")
    with gr.Row():
        scenario = gr.Dropdown(list(SCENARIOS), value=next(iter(SCENARIOS)), label="Scenario", scale=2)
        quick = gr.Checkbox(value=True, label="quick (tiny models, about a minute)", scale=2)
        run = gr.Button("Run a comparison", variant="primary", scale=1)
    running = gr.Markdown(status())

    def on_refresh(current):
        choices = report_names()
        value = current if current in choices else (choices[0] if choices else None)
        return gr.update(choices=choices, value=value), status()

    picker.change(report_view, inputs=picker, outputs=[verdict, figure, table], api_name="report")
    refresh.click(on_refresh, inputs=picker, outputs=[picker, running], api_visibility="private")
    run.click(start, inputs=[scenario, quick], outputs=running, api_name="start_compare")
    return picker, (verdict, figure, table)
