"""Nothing exposed (issue 24): the app names no server path, opens no file a browser
names, takes no upload, slows down password guessing, and runs an attendee's
comparison in line with everyone's, stoppable from the app (issue 20, item 5)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from opd_lab import ownership, run_folder, runs
from opd_lab.studies import background, comparison_report
from opd_lab.config import RunConfig
from waiting import wait_for

gr = pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")


def _form(**changes) -> list:
    from opd_lab_app.launch_tab import FORM_FIELDS

    return [changes.pop(spec.name, spec.default) for spec in FORM_FIELDS]


def _task_file(path: Path, rows: int = 30, key: str = "answer") -> Path:
    path.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", key: str(2 * i)}) + "\n" for i in range(rows)))
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def served(home):
    """The app served as `opd-lab app` serves it (guarded), with an instructor and two attendees."""
    from opd_lab_app.main import build_app, guarded

    demo = build_app(instructor="teacher")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **guarded([("teacher", "t"), ("ana", "a"), ("ben", "b")]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


# --- paths --------------------------------------------------------------------------------

def test_a_task_or_model_outside_the_choices_is_refused_with_one_answer(home, tmp_path):
    from opd_lab_app.inputs import browser_fields, refusal_of, resolve_task, task_choices

    secret = _task_file(tmp_path / "secret.jsonl")
    for value in (str(secret), str(tmp_path / "missing.jsonl"), "../secret.jsonl", "tasks/../../secret.jsonl"):
        with pytest.raises(ValueError) as refused:
            browser_fields({"task": value})
        assert str(refused.value) == refusal_of("task", value) == refusal_of("task", "x")
    for value in (str(tmp_path), "HuggingFaceTB/SmolLM2-135M", "lab:no-such-lab", "run:nope/step_000001"):
        with pytest.raises(ValueError, match="choose one of the models listed"):
            browser_fields({"teacher": value})

    tasks = home / "tasks"
    tasks.mkdir()
    _task_file(tasks / "mine.jsonl")
    assert "mine.jsonl" in task_choices() and "addition" in task_choices()
    assert resolve_task("mine.jsonl") == str(tasks / "mine.jsonl")


def test_launch_and_preview_through_the_served_app_reveal_no_server_file(served, home, tmp_path):
    from gradio_client import Client

    secret = _task_file(tmp_path / "secret.jsonl")
    ana = Client(served, auth=("ana", "a"), verbose=False)
    message, run_id = ana.predict(*_form(task=str(secret), steps=2), api_name="/launch")
    assert run_id == "" and "Not launched" in message and str(tmp_path) not in message
    assert list(runs.runs_dir().iterdir()) == []

    answers = []
    for path in (secret, tmp_path / "missing.jsonl", tmp_path):  # a file, nothing, a folder
        command, check = ana.predict(*_form(task=str(path)), api_name="/preview")
        answers.append(check)
        assert str(tmp_path) not in check
    assert len(set(answers)) == 1, answers
    _, check = ana.predict(*_form(), api_name="/preview")
    assert check.startswith("Ready")


def test_messages_and_the_header_name_no_server_path(home):
    from opd_lab_app.inputs import hide_paths
    from opd_lab_app.main import header

    assert str(home) not in header()
    text = hide_paths(f"{home}/tasks/x.jsonl, line 3: not valid JSON; see {home}/runs")
    assert str(home) not in text and "tasks/x.jsonl, line 3" in text


# --- uploads -------------------------------------------------------------------------------

def test_uploads_are_refused_by_the_server_whatever_the_browser_sends(served):
    client = httpx.Client(base_url=served, timeout=60)
    assert client.post("/login", data={"username": "ana", "password": "a"}).status_code == 200
    big = client.post("/gradio_api/upload", files={"files": ("weights.bin", b"\0" * (20 * 2**20))})
    assert big.status_code == 413
    small = client.post("/gradio_api/upload", files={"files": ("notes.bin", b"hello")})
    assert small.status_code == 415
    config = client.post("/gradio_api/upload", files={"files": ("run.yaml", b"steps: 3\n")})
    assert config.status_code == 415
    for answer in (big, small, config):
        assert "/" not in answer.text.replace("file types", "")  # no server path comes back


# --- logins --------------------------------------------------------------------------------

def test_repeated_wrong_passwords_lock_the_user_out_for_a_while():
    from opd_lab_app import security

    now = [1000.0]
    waited = []

    async def sleep(seconds):
        waited.append(seconds)
        now[0] += seconds

    guard = security.LoginGuard([("ana", "pw"), ("ben", "pw2")], clock=lambda: now[0], sleep=sleep)
    login = lambda user, password: asyncio.run(guard.check(user, password))  # noqa: E731
    assert login("ana", "pw")
    results = [login("ana", f"guess{i}") for i in range(20)]
    assert not any(results)
    assert sum(waited) >= 5  # the first 5 guesses take seconds, then the user is locked out
    assert not login("ana", "pw")  # locked out: the right password too
    assert login("ben", "pw2")  # the others are not
    now[0] += security.LOCKOUT_S + security.WINDOW_S
    assert login("ana", "pw")


def test_the_served_app_refuses_the_right_password_after_a_burst_of_wrong_ones(served):
    client = httpx.Client(base_url=served, timeout=60)
    for attempt in range(5):
        assert client.post("/login", data={"username": "ben", "password": f"x{attempt}"}).status_code == 400
    assert client.post("/login", data={"username": "ben", "password": "b"}).status_code == 400
    assert client.post("/login", data={"username": "teacher", "password": "t"}).status_code == 200


def test_auth_file_keeps_passwords_off_the_command_line(tmp_path, monkeypatch):
    import opd_lab_app.main
    from opd_lab_app.cli import main
    from opd_lab_app.security import read_auth_file

    logins = tmp_path / "logins.txt"
    logins.write_text("# the workshop\nteacher:pw0\n\nana:p:w1\n")
    assert read_auth_file(logins) == ["teacher:pw0", "ana:p:w1"]
    served = {}
    monkeypatch.setattr(opd_lab_app.main, "serve", lambda **kwargs: served.update(kwargs))
    assert main(["app", "--auth-file", str(logins), "--port", str(_free_port()), "--no-build"]) == 0
    assert served["auth"] == ["teacher:pw0", "ana:p:w1"]
    (tmp_path / "bad.txt").write_text("teacher\n")
    with pytest.raises(ValueError, match="bad.txt, line 1: expected user:password"):
        read_auth_file(tmp_path / "bad.txt")


# --- comparisons from the app ----------------------------------------------------------------

def test_an_attendees_comparison_at_the_limit_waits_in_line_and_stops_from_the_app(home, monkeypatch):
    from opd_lab_app import report_panel

    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "1")
    other, owner = ownership.create_owned_run(RunConfig(steps=2, name="holds-the-place"))
    ana, ben = SimpleNamespace(username="ana"), SimpleNamespace(username="ben")
    try:
        message = report_panel.start("baseline", True, ana)
        assert message.startswith("Started") and "wait in line" in message and str(home) not in message
        assert report_panel.status() == "A comparison is running (started by ana)."
        log = comparison_report.reports_dir() / background.COMPARE_LOG
        assert wait_for(lambda: "waiting for a free place" in log.read_text(), timeout=240), log.read_text()
        time.sleep(2)
        assert [folder.name for folder in run_folder.run_folders()] == [other.name]  # nothing started past the limit
        assert report_panel.stop(ben, "teacher").startswith("**Not stopped.** this comparison belongs to ana")
        assert report_panel.stop(ana, "teacher").startswith("Stop requested")
        assert wait_for(lambda: not background.compare_running(), timeout=10, interval=0.1)
    finally:
        owner.release()
        background.stop_compare()
    stopped = [json.loads(path.read_text()) for path in comparison_report.reports_dir().glob(f"*/{comparison_report.STOPPED_FILE}")]
    assert len(stopped) == 1 and stopped[0]["stopped"] == "SIGTERM" and stopped[0]["finished"] == []


def test_attendees_see_no_server_path_in_run_views(tmp_path, monkeypatch):
    """A run trained from a terminal on files anywhere on the server: the app's views show
    the files' names, never their folders."""
    from opd_lab_app.inputs import hide_paths

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path / "home"))
    assert hide_paths("Teacher: `/opt/models/teacher-7b` (the run's teacher)") == "Teacher: `teacher-7b` (the run's teacher)"
    assert hide_paths(f"task {tmp_path / 'home' / 'tasks' / 'qa.jsonl'}") == "task tasks/qa.jsonl"
    assert hide_paths("judged by teacher /srv/a/b/c.gguf (/data/x/qa.jsonl)") == "judged by teacher c.gguf (qa.jsonl)"
    assert hide_paths("server http://10.0.0.1:8000/v1 and lab:addition") == "server http://10.0.0.1:8000/v1 and lab:addition"
