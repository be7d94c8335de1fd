"""The Compare tab's report panel: the verdict, figure and table of an `opd-lab compare` report.

The panel shows a report folder made by `opd_lab.studies.comparison.run_compare` (the CLI's
`opd-lab compare`, or the button here, which starts it in the background): the
verdict computed from the runs, the mean and spread over seeds by steps and FLOPs,
and the compute-to-target table. The browser only names a report; it is looked up
among the report folders.
"""

from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from opd_lab_app.users import refusal, user_of
from opd_lab import report
from opd_lab.studies import background, comparison_report
from opd_lab.studies.claims import ROOT
from opd_lab.studies.handoff import handoff_markdown
from opd_lab.plots import seed_band_figure
from opd_lab.studies.scenarios import SCENARIOS

NO_REPORT = ("No comparison report yet. Start one below (the quick one takes about a minute; a full one "
             "10-20 minutes on 2 cores), or run `opd-lab compare --scenario baseline` in a terminal.")


def report_names() -> list[str]:
    """Local report folders (newest first), then the reports measured for the repository's claims table."""
    return ([folder.name for folder in comparison_report.list_reports()]
            + [folder.name for folder in comparison_report.list_handoff_reports()]
            + [comparison_report.MEASURED_PREFIX + name for name in comparison_report.committed_reports()])


def _find(name: str) -> tuple[dict, bool]:
    """(the report's data, whether it is a measured one shipped with the package) of the report called `name`."""
    committed = comparison_report.committed_reports()
    if name.startswith(comparison_report.MEASURED_PREFIX) and name[len(comparison_report.MEASURED_PREFIX):] in committed:
        return json.loads(committed[name[len(comparison_report.MEASURED_PREFIX):]].read_text()), True
    for folder in comparison_report.list_handoff_reports():
        if folder.name == name:
            return json.loads((folder / "handoff.json").read_text()), False
    return comparison_report.load_report(comparison_report.report_path(name)), False


def handoff_view(data: dict, measured: bool):
    """(markdown, table) of a hand-off report: its stages, fit and ratios; the table is stage 1's points."""
    text = (handoff_markdown(data, data.get("scenario", "?")).replace("\n## ", "\n#### ")
            .replace("# opd-lab compare --protocol handoff", "### The hand-off from SFT's plateau (--protocol handoff)", 1))
    if measured:
        text += "\n*Measured for the repository's claims table (docs/claims.md); its runs are not shipped.*"
    table = pd.DataFrame([{"N (teacher samples)": int(size), "best accuracy": f"{point['accuracy']:.1%}",
                           "at step": point["step"], "training FLOPs": f"{point['flops_training']:.2e}"}
                          for size, point in sorted(data["stage1"].items(), key=lambda item: int(item[0]))])
    return text, table


def show_report(name: str | None):
    """(verdict markdown, figure, table) of the report called `name`."""
    if not name:
        return NO_REPORT, None, pd.DataFrame()
    try:
        data, measured = _find(name)
    except (FileNotFoundError, ValueError) as error:
        return f"**Cannot show this report.** {error}", None, pd.DataFrame()
    if "n_star" in data:
        text, table = handoff_view(data, measured)
        return text, None, table
    folder = None if measured else comparison_report.report_path(name)
    sampled = comparison_report.sampled_lines(data)
    rates = ", ".join(f"{arm} {lr:g}" for arm, lr in data["learning_rates"].items())
    text = (f"### Verdict (greedy accuracy)\n{data['verdict']['sentence']}\n\n"
            + ("\n".join(sampled) + "\n" if sampled else "") + f"*Scenario `{data['scenario']}`"
            f"{' (quick settings)' if data['quick'] else ''}: {data['condition']} Teacher "
            f"{data['teacher_accuracy']:.1%}, base student {data['base_accuracy']:.1%}; "
            + (f"a pilot, not a claim: {data['pilot']}.*" if data.get("pilot") else
               f"each method's learning rate from the same sweep ({rates}).*"))
    text += f"\n\n*{report.GAP_DEFINITION}*"
    if folder is None:
        text += ("\n\n*Measured for the repository's claims table (docs/claims.md); its runs are not shipped, so "
                 "there is no figure: run the comparison to get one. Why it came out this way: "
                 "**Why the measured verdicts came out as they did**, below.*")
    return text, seed_band_figure(folder) if folder else None, pd.DataFrame(comparison_report.target_rows(data))


NOTES_FILE = ROOT / "docs" / "claims-notes.md"
NOTES_SECTION = "## What the numbers say, and the likely causes"


def verdict_notes() -> str:
    """The measured reports' explanations (docs/claims-notes.md, its section on causes), shown in the
    app so the reasons travel with the verdicts; a line saying where they are when the docs are not here."""
    try:
        text = NOTES_FILE.read_text(encoding="utf-8")
    except OSError:
        return "The explanations are in docs/claims-notes.md of the opd-lab repository."
    if NOTES_SECTION not in text:
        return text
    section = text[text.index(NOTES_SECTION) + len(NOTES_SECTION):]
    return section.split("\n## ", 1)[0].strip()


def report_view(name: str | None):
    """`show_report` for the page: the figure's box is hidden when the report has no figure."""
    text, figure, table = show_report(name)
    return text, gr.update(value=figure, visible=figure is not None), table


def start(scenario: str, quick: bool, request: gr.Request | None = None):
    """Start a comparison in the background for the request's user; returns a status line.

    Its runs queue under the run limit like anyone's, recorded as that user's."""
    try:
        background.start_compare(scenario, quick=bool(quick), user=user_of(request))
    except (RuntimeError, ValueError) as error:
        return f"**Not started.** {error}"
    return (f"Started `opd-lab compare --scenario {scenario}{' --quick' if quick else ''}` in the background. "
            "Its runs train in turn with everyone's: at the run limit they wait in line. "
            "Press **Refresh** when it is done.")


def stop(request: gr.Request | None = None, instructor: str | None = None) -> str:
    """Stop the running comparison (its launcher or the instructor): its runs stop with a
    checkpoint and it reports what finished."""
    running = background.running_compare()
    if running is None:
        return "No comparison is running."
    reason = refusal(running.get("user"), user_of(request), instructor)
    if reason:
        return "**Not stopped.** " + reason.replace("this run", "this comparison").replace("stop, resume or delete", "stop")
    return background.stop_compare().capitalize() + "."


def status() -> str:
    running = background.running_compare()
    if running is None:
        return "No comparison is running."
    user = running.get("user")
    return f"A comparison is running (started by {user})." if user else "A comparison is running."


def build(instructor: str | None = None) -> None:
    """The panel's widgets and events (inside the Compare tab); `instructor` may stop any comparison."""
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
        stop_button = gr.Button("Stop the comparison", scale=1, elem_id="stop-compare")
    running = gr.Markdown(status())
    with gr.Accordion("Why the measured verdicts came out as they did", open=False, elem_id="report-why"):
        gr.Markdown(verdict_notes())

    def on_refresh(current):
        choices = report_names()
        value = current if current in choices else (choices[0] if choices else None)
        return gr.update(choices=choices, value=value), status()

    picker.change(report_view, inputs=picker, outputs=[verdict, figure, table], api_name="report")
    refresh.click(on_refresh, inputs=picker, outputs=[picker, running], api_visibility="private")
    run.click(start, inputs=[scenario, quick], outputs=running, api_name="start_compare")

    def on_stop(request: gr.Request):
        return stop(request, instructor)

    stop_button.click(on_stop, outputs=running, api_name="stop_compare")
    return picker, (verdict, figure, table)
