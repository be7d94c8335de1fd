"""The opd-lab web app: launch, follow, compare and inspect OPD, SFT and RL runs.

Run:
    opd-lab app                                  # http://127.0.0.1:7860, builds the lab first if needed
    opd-lab app --host 0.0.0.0 --auth me:secret  # reachable from other machines, with a password
    opd-lab app --host 0.0.0.0 --auth teacher:pw0 --auth ana:pw1 --auth ben:pw2   # classroom: one login each
    opd-lab app --max-runs 2 --no-build

Classroom mode (one machine, a room of attendees): serve on 0.0.0.0 with --auth (the app
warns without it); at the run limit a launch waits in line with its place shown and
starts when a place frees (`opd_lab.runs.submit_run`); every viewer's polling shares one
scan of the runs folder per second (`opd_lab_app.state.list_runs`). With several `--auth` users, each
run records who launched it, and only that user or the instructor (`--instructor`, by default
the first `--auth` user) may stop, resume or delete it (`opd_lab_app.users`).

Five tabs, each a thin view over the library: **Launch** (a form generated from
`RunConfig`), **Runs** (live table, curves, log, stop/resume/delete), **Compare**
(curves by method and compute to reach the teacher), **Inspect** (the teacher's verdict
on each logged token) and **Playground** (any student checkpoint on your own prompt).
Everything lives in the run folders, so closing the app never stops a run and a new
app shows it again.

For tests and embedding, `build_app()` returns the `gr.Blocks` without serving it.
"""

from __future__ import annotations

import os
import sys

import gradio as gr

from opd_lab_app import compare_tab, inspect_tab, launch_tab, playground_tab, runs_tab
from opd_lab_app.page_script import PAGE_SCRIPT, remember
from opd_lab_app.security import MAX_UPLOAD_BYTES, LoginGuard, UploadGuard
from opd_lab_app.state import run_ids, start_queue_worker
from opd_lab.lab import built_labs, lab_summary
from opd_lab.paths import data_dir
from opd_lab.tasks import DEFAULT_TASK

TITLE = "opd-lab: on-policy distillation"
TAB_IDS = ("launch", "runs", "compare", "inspect", "playground")


def header() -> str:
    """The page's first lines: what the app is, and the labs in the data dir.

    Every lab folder is listed: a lab that cannot be used (a half-built or corrupt one)
    with a one-line reason, never an error. Server paths are not shown to attendees.
    """
    lines = [f"# {TITLE}",
             "A **student** model samples answers, a stronger **teacher** scores every token, and the "
             "student learns from the per-token reverse KL. Launch runs (OPD, and SFT and RL to compare), "
             "follow them, and look at what the teacher says about each token.",
             ""]
    labs = built_labs()
    if labs:
        described = [f"**{lab.name}**{lab.describe()[len(lab.name):]}" for lab in labs]
        lines.append(f"Labs (held-out accuracy): {'; '.join(described)}.")
    else:
        lines.append("No lab is built yet: run `opd-lab lab build` (a few minutes) before launching runs on "
                     "the lab.")
    return "\n".join(lines)


def build_app(trust_remote_code: bool = False, instructor: str | None = None) -> gr.Blocks:
    """The whole app as a `gr.Blocks`, not yet served.

    Args:
        trust_remote_code: whether runs launched from the browser (and the Playground)
            may load models that ship their own Python code. Only the command line sets
            it; the browser cannot.
        instructor: with a login, the user who may stop, resume and delete every run;
            the others only their own (`opd_lab_app.users`).
    """
    with gr.Blocks(title="opd-lab", analytics_enabled=False) as demo:
        gr.Markdown(header(), elem_id="app-header")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Launch", id="launch") as launch:
                launch_parts = launch_tab.build(trust_remote_code)
            with gr.Tab("Runs", id="runs") as runs_page:
                runs_parts = runs_tab.build(instructor)
            with gr.Tab("Compare", id="compare") as compare:
                compare_parts = compare_tab.build(instructor)
            with gr.Tab("Inspect", id="inspect") as inspect:
                inspect_parts = inspect_tab.build(trust_remote_code)
            with gr.Tab("Playground", id="playground") as playground:
                playground_parts = playground_tab.build(trust_remote_code)

        demo.load(None, js=PAGE_SCRIPT)
        for tab, name in zip((launch, runs_page, compare, inspect, playground), TAB_IDS):
            tab.select(None, js=remember("tab", name))
        runs_parts["selected"].change(None, inputs=runs_parts["selected"], js=remember("run"))

        def restore(request: gr.Request):
            """The run named in the URL (`?run=...`), after a reload or an app restart (the page script opens the tab)."""
            run = dict(request.query_params).get("run") if request is not None else None
            return run if run in run_ids() else gr.skip()

        demo.load(restore, outputs=runs_parts["selected"], api_visibility="private").then(
            **runs_parts["load"])
        # After Launch, follow the new run in the Runs tab.
        launch_parts["launched"].change(
            lambda run: (gr.Tabs(selected="runs"), run) if run else (gr.skip(), gr.skip()),
            inputs=launch_parts["launched"], outputs=[tabs, runs_parts["selected"]], api_visibility="private",
        ).then(**runs_parts["load"]).then(None, js=remember("tab", "runs"))
        demo.load(compare_tab.report_panel.report_view, inputs=compare_parts["report_picker"],
                  outputs=list(compare_parts["report_outputs"]), api_visibility="private")
        # Pickers list the runs that exist when their tab is opened.
        def keep(current, choices):
            values = [value for _, value in choices] if choices and isinstance(choices[0], tuple) else choices
            if isinstance(current, list):
                return gr.update(choices=choices, value=[value for value in current if value in values])
            return gr.update(choices=choices, value=current if current in values else None)

        compare.select(lambda current: keep(current, run_ids()), inputs=compare_parts["chosen"],
                       outputs=compare_parts["chosen"], api_visibility="private")
        for picker in (inspect_parts["run"], inspect_parts["other_run"]):
            inspect.select(lambda current: keep(current, run_ids()), inputs=picker, outputs=picker,
                           api_visibility="private")
        playground.select(lambda current: keep(current, playground_tab.model_choices()),
                          inputs=playground_parts["model"], outputs=playground_parts["model"],
                          api_visibility="private")
    return demo


def parse_auth(auth: str | list[str] | None) -> list[tuple[str, str]]:
    """Each "user:password" -> ("user", "password"); None gives [] (no login).

    Raises:
        ValueError: without a ':', with an empty user or password, or a user named twice.

    Example:
        >>> parse_auth(["alice:pw1", "bob:pw:2"])
        [('alice', 'pw1'), ('bob', 'pw:2')]
    """
    pairs = []
    for item in [auth] if isinstance(auth, str) else auth or []:
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ValueError("--auth: expected user:password")
        if user in dict(pairs):
            raise ValueError(f"--auth: user {user!r} is given twice")
        pairs.append((user, password))
    return pairs


def choose_instructor(credentials: list[tuple[str, str]], instructor: str | None) -> str | None:
    """The user who may stop, resume and delete every run: `instructor`, else the first `--auth` user.

    Raises:
        ValueError: `--instructor` without `--auth`, or naming no `--auth` user.
    """
    users = [user for user, _ in credentials]
    if not users:
        if instructor:
            raise ValueError("--instructor: needs --auth (without a login everyone may act on every run)")
        return None
    if instructor is None:
        return users[0]
    if instructor not in users:
        raise ValueError(f"--instructor {instructor}: not one of the --auth users ({', '.join(users)})")
    return instructor


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
AUTH_MESSAGE = ("opd-lab: log in with the user name and password your instructor gave you. "
                "Runs launched here keep training after you close the page.")


def exposure_warning(host: str, auth: str | None) -> str | None:
    """A warning when the app is reachable from other machines without a password, else None.

    Example:
        >>> exposure_warning("127.0.0.1", None) is None, exposure_warning("0.0.0.0", "me:pw") is None
        (True, True)
    """
    if auth or host in LOOPBACK_HOSTS:
        return None
    return (f"WARNING: --host {host} without --auth: anyone who can reach this machine can launch, stop "
            "and delete runs. Add --auth user:password (attendees then log in), or serve on 127.0.0.1.")


def serve(host: str = "127.0.0.1", port: int = 7860, auth: str | list[str] | None = None,
          max_runs: int | None = None, trust_remote_code: bool = False, build: bool = True,
          instructor: str | None = None) -> None:
    """Build the lab if it is missing (with `build`), then serve the app until interrupted.

    Args:
        host, port: where to listen ("0.0.0.0" to be reachable from other machines).
        auth: "user:password", or several, to require a login; each user's runs are their own.
        instructor: the `auth` user who may stop, resume and delete every run (default: the first).
        max_runs: most runs training at once (sets `$OPD_LAB_MAX_RUNS` for this process).
        trust_remote_code: allow models that ship their own code (see `build_app`).
        build: build the default lab first when it is not built.
    """
    credentials = parse_auth(auth)
    instructor = choose_instructor(credentials, instructor)
    if max_runs is not None:
        if max_runs < 1:
            raise ValueError(f"--max-runs: must be at least 1 (got {max_runs})")
        os.environ["OPD_LAB_MAX_RUNS"] = str(max_runs)
    if build and lab_summary(DEFAULT_TASK) is None:
        from opd_lab.lab import LabRecipe, build_lab, format_summary

        print(f"Building the {DEFAULT_TASK} lab first (a few minutes on 2 cores; cached afterwards)...")
        print(format_summary(build_lab(LabRecipe.for_task(DEFAULT_TASK))))
    warning = exposure_warning(host, auth)
    if warning:
        print(warning, file=sys.stderr)
    print(f"opd-lab app on http://{host}:{port} (data in {data_dir()})")
    start_queue_worker()  # runs queued at the run limit start when a place frees
    if instructor:
        print(f"Classroom mode: {len(credentials)} users; each may stop, resume or delete only their own runs, "
              f"{instructor} (the instructor) every run.")
    build_app(trust_remote_code, instructor).launch(server_name=host, server_port=port, footer_links=["api"],
                                                    show_error=True, **guarded(credentials))


def guarded(credentials: list[tuple[str, str]]) -> dict:
    """The `launch` settings that guard the app's doors (`opd_lab_app.security`): logins checked
    with throttling, and uploads refused on the server (with gradio's own size limit too)."""
    from starlette.middleware import Middleware

    return {"auth": LoginGuard(credentials).check if credentials else None,
            "auth_message": AUTH_MESSAGE if credentials else None,
            "max_file_size": MAX_UPLOAD_BYTES, "app_kwargs": {"middleware": [Middleware(UploadGuard)]}}
