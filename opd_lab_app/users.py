"""Who may stop, resume or delete a run when the app has several users (classroom mode).

With `opd-lab app --auth alice:pw1 --auth bob:pw2 --auth teacher:pw3 --instructor teacher`,
each run launched from the browser records the logged-in user in its folder
(`launched_by.json`, `opd_lab.run_folder.record_launcher`). Stop, Resume and Delete
then follow one rule, `refusal`: the run's launcher and the instructor may act on it,
nobody else. The instructor is `--instructor NAME`, by default the first `--auth` user.
A run with no recorded launcher (started from a terminal, or from an app without
`--auth`) is the instructor's. Without `--auth` there is one user, who may act on every run.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from opd_lab import run_folder


def refusal(launcher: str | None, user: str | None, instructor: str | None) -> str | None:
    """Why `user` may not stop, resume or delete a run launched by `launcher`; None when they may.

    Args:
        launcher: the run's recorded launcher (None: no login recorded it).
        user: the logged-in user asking (None: the app has no `--auth`).
        instructor: the user who may act on every run.

    Example:
        >>> refusal("alice", "alice", "teacher") is None, refusal("alice", "teacher", "teacher") is None
        (True, True)
        >>> refusal("alice", "bob", "teacher")
        'this run belongs to alice: only alice or the instructor (teacher) may stop, resume or delete it'
    """
    if user is None or user == instructor or (launcher is not None and user == launcher):
        return None
    if launcher is None:
        return (f"this run was not launched by a logged-in user of the app: only the instructor ({instructor}) "
                "may stop, resume or delete it")
    return f"this run belongs to {launcher}: only {launcher} or the instructor ({instructor}) may stop, resume or delete it"


def user_of(request: gr.Request | None) -> str | None:
    """The logged-in user of a request; None without `--auth` (or outside a request)."""
    return getattr(request, "username", None) or None


def check_may_act(run_dir: Path, request: gr.Request | None, instructor: str | None) -> None:
    """Raise `run_folder.RunError` with the refusal when the request's user may not act on the run."""
    try:
        launcher = run_folder.launcher_of(run_dir)
    except run_folder.UnreadableFile:
        launcher = None  # an unreadable record: the instructor's, like a run nobody recorded
    reason = refusal(launcher, user_of(request), instructor)
    if reason:
        raise run_folder.RunError(reason)


def record(run_dir: Path, request: gr.Request | None) -> None:
    """Record the request's user as the run's launcher (nothing without a login)."""
    user = user_of(request)
    if user:
        run_folder.record_launcher(run_dir, user)
