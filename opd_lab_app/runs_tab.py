"""The Runs tab: every run's state, live curves and log, and Stop / Resume / Delete.

Everything is read from the run folders every couple of seconds (a `gr.Timer`), so the
table is right after a page refresh, an app restart, or a run started from the CLI.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from gradio.components.plot import PlotData

from opd_lab_app.inputs import hide_paths
from opd_lab_app.state import (error_text, file_stamp, forget_runs_list, format_accuracy, format_duration, list_runs,
                       run_dir_of, shared)
from opd_lab_app.users import check_may_act, user_of
from opd_lab import plots, runs
from opd_lab.plot_style import DEFAULT_SMOOTHING
from opd_lab.lab import lab_summary_of
from opd_lab.config import ConfigError, RunConfig, parse_pairs
from opd_lab.run_folder import (LOG_FILE, LOG_LINES, METRICS_FILE, PHASES, STATUS_FILE, launcher_of, load_config,
                                load_metrics, log_tail, task_metric)

TABLE_HEADERS = ["run", "method", "task", "state", "step", "ETA", "accuracy", "message", "owner"]
REFRESH_SECONDS = 2.0
ACCURACY_METRIC = "eval/accuracy"
DEFAULT_METRIC = "train/loss"

INTRO = ("**Follow your runs.** The table refreshes every 2 seconds from the run folders. "
         "Click a row (or pick a run below) to see its held-out accuracy, any other metric, "
         "and the end of its log; stop, resume or delete it with the buttons.")


def progress_bar(step, total, width: int = 10) -> str:
    """The run's progress as text a table cell can hold.

    Example:
        >>> progress_bar(6, 20)
        '▰▰▰▱▱▱▱▱▱▱ 6/20'
    """
    if not isinstance(total, int) or total <= 0 or not isinstance(step, int):
        return f"{step}/{total}"
    filled = round(width * min(max(step / total, 0.0), 1.0))
    return "▰" * filled + "▱" * (width - filled) + f" {step}/{total}"


# What an attendee reads for a state: a run whose process is starting is "starting", and only a
# run in line for a place is "waiting" (the library calls the first "queued").
STATE_WORDS = {"queued": "starting"}


def state_text(run: dict) -> str:
    """The state column: "waiting (#2 in line)" for a run in line, "starting" for one being started."""
    position = run.get("queue_position")
    state = STATE_WORDS.get(run["state"], run["state"])
    return f"{state} (#{position} in line)" if position else state


def run_rows(mine_of: str | None = None) -> list[list]:
    """One table row per run, newest first (see TABLE_HEADERS); with `mine_of`, only that user's runs."""
    rows = []
    for run in list_runs():
        if mine_of is not None and run.get("owner") != mine_of:
            continue
        eta = format_duration(run["eta_s"]) if run["state"] == "running" else "-"
        rows.append([run["id"], run["method"] or "?", run["task"] or "?", state_text(run),
                     progress_bar(run["step"], run["total_steps"]), eta, format_accuracy(run["accuracy"]),
                     run["message"], run.get("owner") or "-"])
    return rows


def run_table() -> pd.DataFrame:
    return pd.DataFrame(run_rows(), columns=TABLE_HEADERS)


def run_summary(run_id: str) -> str:
    """A Markdown line: the run's state, step, ETA, last accuracy and message."""
    try:
        run_dir = run_dir_of(run_id)
    except runs.RunError as error:
        return error_text(error)
    row = next((r for r in list_runs() if r["id"] == run_dir.name), None)
    if row is None:
        return error_text(f"no run named {run_id!r}")
    parts = [f"**{row['id']}**", f"{row['method']} on {teachers_text(run_dir) or row['task']}", f"**{state_text(row)}**",
             f"step {progress_bar(row['step'], row['total_steps'])}", f"accuracy {format_accuracy(row['accuracy'])}"]
    try:
        launcher = launcher_of(run_dir)
    except runs.RunError:  # an unreadable launched_by.json: the summary goes on without it
        launcher = None
    if launcher:
        parts.append(f"launched by {launcher}")
    if row["state"] == "running":
        parts.append(f"ETA {format_duration(row['eta_s'])}")
    split = phase_split(run_dir)
    return hide_paths(" · ".join(parts) + (f"  \n{row['message']}" if row["message"] else "")
                      + (f"  \n{split}" if split else ""))  # a run's task file or teacher may be a server path


def teachers_text(run_dir) -> str:
    """A multi-task run's tasks with their teachers, e.g. 'addition (teacher lab:addition) + sorting (...)';
    '' for a run of one task."""
    try:
        config = RunConfig.from_dict(load_config(run_dir))
    except (ConfigError, OSError, ValueError):
        return ""
    if not config.task_weights:
        return ""
    teachers = config.teacher_map()
    return " + ".join(f"{task} (teacher {'lab:' + task if teachers[task] == 'lab' else teachers[task]})"
                      for task in config.run_tasks())


def phase_split(run_dir) -> str:
    """Where the last step's time went (`perf/time_*`), e.g. 'sampling 31% · teacher 27% · ...'; '' if not logged."""
    last = next((row for row in reversed(load_metrics(run_dir)) if "perf/time_sampling" in row), None)
    if last is None:
        return ""
    seconds = {phase: last.get(f"perf/time_{phase}", 0.0) for phase in PHASES}
    total = sum(seconds.values())
    if total <= 0:
        return ""
    return "step time: " + " · ".join(f"{phase} {value / total:.0%}" for phase, value in seconds.items())


def metric_choices(run_id: str) -> list[str]:
    try:
        run_dir = run_dir_of(run_id)
    except runs.RunError:
        return []
    return shared(("metric choices", str(run_dir)), file_stamp(run_dir / METRICS_FILE),
                  lambda: plots.available_metrics([run_dir]))


def run_figures(run_id: str, metric: str, smoothing: float = 0.0, log_y: bool = False):
    """(accuracy figure with the teacher line, `metric` figure, last log lines) of one run.

    The figures are built once per change of the run's metrics file and shared by every
    viewer (`opd_lab_app.state.shared`), already serialized for the browser (`gr.Plot` sends them as
    they are).
    """
    run_dir = run_dir_of(run_id)
    metric = metric or DEFAULT_METRIC
    smoothing = min(max(float(smoothing or 0.0), 0.0), 0.99)
    stamp = file_stamp(run_dir / METRICS_FILE)
    accuracy = shared(("accuracy", str(run_dir)), (stamp, file_stamp(run_dir / "config.json")),
                      lambda: _serialized(_accuracy_figure(run_dir)))
    other = shared(("metric", str(run_dir), metric, smoothing, bool(log_y)), stamp,
                   lambda: _serialized(plots.training_curves([run_dir], metric, smoothing=smoothing,
                                                             log_y=bool(log_y))))
    return accuracy, other, log_tail(run_dir)


def _accuracy_figure(run_dir):
    config = load_config(run_dir)
    tasks = list(parse_pairs(config.get("task_weights", ""), "task_weights"))
    if tasks:  # several tasks: each one's accuracy, each task's teacher in the summary line
        per_task = {task: task_metric(ACCURACY_METRIC, task) for task in tasks}
        accuracy, summary = plots.task_curves(run_dir, ACCURACY_METRIC, per_task), None
    else:  # the run's own teacher's line
        accuracy = plots.training_curves([run_dir], ACCURACY_METRIC)
        summary = lab_summary_of(str(config.get("teacher", "lab")), str(config.get("task")))
    if summary is not None and accuracy.data:
        accuracy.add_hline(y=summary["teacher"]["accuracy"], line_dash="dash", line_color="#111",
                           annotation_text=f"teacher {summary['teacher']['accuracy']:.1%}",
                           annotation_position="bottom right")
    return accuracy


def _serialized(figure) -> PlotData:
    return PlotData(type="plotly", plot=figure.to_json())


def run_view(run_id: str, metric: str = DEFAULT_METRIC, smoothing: float = DEFAULT_SMOOTHING,
             log_y: bool = False) -> dict:
    """What one refresh of the Runs tab shows for a run, as data: `{"table", "summary", "accuracy",
    "metric", "log"}` (the table's rows, the figures as plotly JSON). The `/run_view` endpoint, for
    scripts and the classroom bench (`bench/bench_app_viewers.py`); it goes through the same shared
    runs list and figures as the tab's timer.
    """
    table = run_rows()
    try:
        accuracy, other, text = run_figures(run_id, metric, smoothing, log_y)
    except runs.RunError as error:
        return {"table": table, "summary": error_text(error), "accuracy": None, "metric": None, "log": ""}
    return {"table": table, "summary": run_summary(run_id), "accuracy": accuracy.plot, "metric": other.plot,
            "log": text}


def _signature(run_id: str, metric: str):
    """What the figures depend on: when it is unchanged, the tick redraws nothing."""
    try:
        run_dir = run_dir_of(run_id)
    except runs.RunError:
        return None
    return (run_id, metric, tuple(file_stamp(run_dir / name) for name in (METRICS_FILE, LOG_FILE, STATUS_FILE)))


def stop_run(run_id: str, request: gr.Request | None = None, instructor: str | None = None) -> str:
    """Ask the run to stop; `request` and `instructor` decide whether this user may (`opd_lab_app.users`)."""
    try:
        run_dir = run_dir_of(run_id)
        check_may_act(run_dir, request, instructor)
    except runs.RunError as error:
        return error_text(error)
    active = runs.status_of(run_dir).get("state") in runs.ACTIVE_STATES
    message = runs.request_stop(run_dir)
    forget_runs_list()
    return message + (" (it stops after the current step, with a checkpoint)" if active else "")


def resume_run(run_id: str, request: gr.Request | None = None, instructor: str | None = None) -> str:
    try:
        run_dir = run_dir_of(run_id)
        check_may_act(run_dir, request, instructor)
        pid = runs.submit_resume(run_dir)
    except runs.RunError as error:
        return error_text(error)
    forget_runs_list()
    if pid is None:  # at the run limit: in line, like a launch
        position = runs.queue_positions().get(run_id, "?")
        return (f"Queued **{run_id}**: the run limit is reached, so it is **#{position} in line** and resumes "
                "from its last checkpoint by itself when a place frees.")
    return f"Resumed **{run_id}** from its last checkpoint (process {pid})."


def delete_run(run_id: str, confirmed: bool, request: gr.Request | None = None, instructor: str | None = None) -> str:
    if not confirmed:
        return "Tick **I am sure** first: deleting removes the run's folder, checkpoints included."
    try:
        run_dir = run_dir_of(run_id)
        check_may_act(run_dir, request, instructor)
        runs.delete_run(run_dir)
    except runs.RunError as error:
        return error_text(error)
    forget_runs_list()
    return f"Deleted **{run_id}**."


def build(instructor: str | None = None) -> dict:
    """The tab's widgets and events (call inside a `gr.Tab`); returns the run picker.

    Args:
        instructor: with `--auth`, the user who may stop, resume or delete every run (`opd_lab_app.users`).
    """
    gr.Markdown(INTRO, elem_classes="tab-intro")
    table = gr.Dataframe(run_table(), headers=TABLE_HEADERS, interactive=False, label="Runs",
                         elem_id="runs-table", max_height=320, wrap=True)
    with gr.Row():
        ids = [row[0] for row in run_rows()]
        selected = gr.Dropdown(ids, value=ids[0] if ids else None, label="Run", scale=3, elem_id="runs-selected",
                               allow_custom_value=True)
        mine = gr.Checkbox(False, label="only my runs", scale=1, elem_id="runs-mine",
                           info="with a login: the runs you launched")
        refresh = gr.Button("Refresh", scale=1)
    summary = gr.Markdown(elem_id="run-summary")
    with gr.Row():
        stop = gr.Button("Stop", elem_id="stop-button")
        resume = gr.Button("Resume", elem_id="resume-button")
        sure = gr.Checkbox(label="I am sure", value=False, elem_id="delete-sure")
        delete = gr.Button("Delete", variant="stop", elem_id="delete-button")
    action = gr.Markdown(elem_id="run-action")
    with gr.Row():
        accuracy_plot = gr.Plot(label="Held-out accuracy", elem_id="run-accuracy-plot")
        with gr.Column():
            with gr.Row():
                metric = gr.Dropdown([DEFAULT_METRIC], value=DEFAULT_METRIC, label="Metric", allow_custom_value=True,
                                     scale=2)
                smoothing = gr.Slider(0.0, 0.99, value=DEFAULT_SMOOTHING, step=0.01, label="smoothing (EMA)", scale=2,
                                      elem_id="runs-smoothing")
                log_y = gr.Checkbox(False, label="log y", scale=1)
            metric_plot = gr.Plot(label="Metric", elem_id="run-metric-plot")
    log = gr.Textbox(label=f"Last {LOG_LINES} lines of log.txt", lines=10, max_lines=30, interactive=False,
                     elem_id="run-log", autoscroll=True)
    memory = gr.State({"ids": ids, "rows": None, "signature": None})
    timer = gr.Timer(REFRESH_SECONDS)

    def show(run_id, metric_name, smoothing_value, log_value, state, only_mine=False, request=None, force=False):
        """Outputs: table, picker, summary, accuracy plot, metric picker, metric plot, log, state."""
        state = dict(state or {})
        current = run_rows(mine_of=(user_of(request) or "") if only_mine else None)
        current_ids = [row[0] for row in current]
        if run_id not in current_ids:
            run_id = current_ids[0] if current_ids else None
        picker = gr.update(choices=current_ids, value=run_id) if current_ids != state.get("ids") or force else gr.skip()
        state["ids"] = current_ids
        # Redrawing an unchanged table would reset its scroll position every tick.
        changed = current != state.get("rows") or force
        table_value = pd.DataFrame(current, columns=TABLE_HEADERS) if changed else gr.skip()
        state["rows"] = current
        if run_id is None:
            state["signature"] = None
            return (table_value, picker, "No runs yet: start one in the **Launch** tab.", None,
                    gr.skip(), None, "", state)
        signature = (_signature(run_id, metric_name), smoothing_value, log_value)
        if signature == state.get("signature") and not force:
            return table_value, picker, run_summary(run_id), gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        state["signature"] = signature
        try:
            accuracy, other, text = run_figures(run_id, metric_name, smoothing_value, log_value)
        except runs.RunError as error:
            return table_value, picker, error_text(error), None, gr.skip(), None, "", state
        choices = metric_choices(run_id) or [DEFAULT_METRIC]
        text = text or "(no log.txt: this run was not launched in the background, e.g. `opd-lab train`)"
        return (table_value, picker, run_summary(run_id), accuracy,
                gr.update(choices=choices), other, text, state)

    outputs = [table, selected, summary, accuracy_plot, metric, metric_plot, log, memory]

    def on_tick(run_id, metric_name, smoothing_value, log_value, state, only_mine, request: gr.Request):
        return show(run_id, metric_name, smoothing_value, log_value, state, only_mine, request)

    def on_select(run_id, metric_name, smoothing_value, log_value, state, only_mine, request: gr.Request):
        return show(run_id, metric_name, smoothing_value, log_value, state, only_mine, request, force=True)

    def on_row(evt: gr.SelectData):
        row = evt.row_value
        return row[0] if row else gr.skip()

    inputs = [selected, metric, smoothing, log_y, memory, mine]
    redraw = dict(fn=on_select, inputs=inputs, outputs=outputs, show_progress="hidden", api_visibility="private")
    timer.tick(on_tick, inputs=inputs, outputs=outputs, show_progress="hidden", api_visibility="private", queue=False)
    gr.on([selected.input, metric.input, smoothing.release, log_y.input, mine.input], **redraw)
    table.select(on_row, outputs=selected, api_visibility="private").then(**redraw)
    refresh.click(run_table, outputs=table, api_name="list_runs").then(**redraw)
    def on_stop(run_id, request: gr.Request):
        return stop_run(run_id, request, instructor)

    def on_resume(run_id, request: gr.Request):
        return resume_run(run_id, request, instructor)

    def on_delete(run_id, confirmed, request: gr.Request):
        return delete_run(run_id, confirmed, request, instructor)

    stop.click(on_stop, inputs=selected, outputs=action, api_name="stop").then(**redraw)
    resume.click(on_resume, inputs=selected, outputs=action, api_name="resume").then(**redraw)
    delete.click(on_delete, inputs=[selected, sure], outputs=action, api_name="delete").then(
        lambda: False, outputs=sure, api_visibility="private").then(**redraw)
    gr.api(run_view, api_name="run_view", queue=False)  # like the tick: no queue in front of a read
    return {"selected": selected, "load": redraw}
