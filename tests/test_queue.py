"""The run queue (classroom mode): at the run limit a run waits with its place in line,
and starts, through `runs.launch`'s locks and limit, when a place frees."""

from __future__ import annotations

import time

import pytest

from opd_lab import runs
from opd_lab.config import RunConfig
from opd_lab.run_folder import load_status

SMALL = dict(steps=3, batch_size=4, eval_every=3, eval_count=8, sample_every=3, samples_to_log=1,
             checkpoint_every=3, max_new_tokens=12)


def _wait(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_runs_past_the_limit_wait_in_line_and_start_when_a_place_frees(lab_home, monkeypatch):
    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "1")
    first, pid = runs.submit_run(RunConfig(**SMALL, name="queue-a"))
    assert pid is not None
    second, second_pid = runs.submit_run(RunConfig(**SMALL, name="queue-b"))
    third, third_pid = runs.submit_run(RunConfig(**SMALL, name="queue-c"))
    assert second_pid is None and third_pid is None
    assert runs.queue_positions() == {second.name: 1, third.name: 2}
    assert runs.status_of(second)["state"] == runs.WAITING
    assert runs.start_waiting() == []  # the place is taken while the first run trains

    # A waiting run can leave the line; it starts only when resumed.
    assert "left the queue" in runs.request_stop(third)
    assert runs.status_of(third)["state"] == "stopped" and runs.queue_positions() == {second.name: 1}

    _wait(lambda: runs.status_of(first)["state"] == "finished")
    started = runs.start_waiting()
    assert [run_dir for run_dir, _ in started] == [second]
    assert runs.start_waiting() == []  # started once, even when asked again
    _wait(lambda: runs.status_of(second)["state"] == "finished")
    assert runs.queue_positions() == {}
    assert load_status(third)["state"] == "stopped"
    runs.delete_run(third)


def test_a_bad_input_is_refused_before_anything_is_queued(lab_home, monkeypatch):
    from opd_lab.config import ConfigError

    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "0")
    before = set(runs.runs_dir().iterdir())
    with pytest.raises(ConfigError):
        runs.submit_run(RunConfig(**{**SMALL, "task": "no-such-task"}))
    assert set(runs.runs_dir().iterdir()) == before
