"""Faults a hostile user or a crash can cause (issue 12), each reproduced and checked.

Nothing lost: racing launches, two trainers on one run, a stop while a run starts, a
corrupt checkpoint, Ctrl-C. Nothing stuck: ghost, corrupt and reused-pid runs block
nothing. One clear line: every bad input gives one line on stderr, no traceback, and
no run folder. The token view keeps bidirectional text in order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opd_lab import checkpoints, ownership, run_folder, runs
from opd_lab.cli import error_line, main
from opd_lab.config import ConfigError, RunConfig
from opd_lab.run_folder import load_metrics, load_status
from opd_lab.tokenview import render_tokens
from opd_lab.train import run_training
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(batch_size=4, eval_every=1000, eval_count=8, sample_every=1000, max_new_tokens=8)
SMALL_FLAGS = ["--batch-size", "4", "--eval-every", "1000", "--eval-count", "8", "--sample-every", "1000",
               "--max-new-tokens", "8"]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}




def _state(run_dir) -> str:
    return runs.status_of(run_dir).get("state")


def _steps(run_dir) -> list[int]:
    return [row["step"] for row in load_metrics(run_dir)]


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- one owner per run -------------------------------------------------------------------

@pytest.mark.slow
def test_two_launches_racing_at_the_limit_start_exactly_one(home):
    command = [sys.executable, "-m", "opd_lab", "launch", "--steps", "300", *SMALL_FLAGS]
    racers = [subprocess.Popen(command, env=_env(OPD_LAB_MAX_RUNS="1"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=home) for _ in range(2)]
    results = [(racer.wait(timeout=120), *racer.communicate()) for racer in racers]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    refused = next(stderr for code, _, stderr in results if code == 2)
    assert "the limit is 1" in _one_line(refused)
    assert len(run_folder.run_folders()) == 1  # the refused launch left no folder


@pytest.mark.slow
def test_resume_of_a_running_run_is_refused(home):
    run_dir, _ = runs.start_run(RunConfig(steps=100000, checkpoint_every=5, **SMALL))
    assert wait_for(lambda: load_status(run_dir).get("step", 0) >= 1, interval=0.1), load_status(run_dir)
    with pytest.raises(runs.RunError, match="already running"):
        runs.resume(run_dir)
    with pytest.raises(runs.RunError, match="still running"):
        runs.delete_run(run_dir)
    with pytest.raises(runs.RunError, match="owned by another process"):
        run_training(run_dir, progress=False)
    foreground = subprocess.run([sys.executable, "-m", "opd_lab", "resume", "--foreground", run_dir.name],
                                env=_env(), capture_output=True, text=True, timeout=120)
    assert foreground.returncode == 2 and "already running" in _one_line(foreground.stderr)
    runs.request_stop(run_dir)
    assert wait_for(lambda: _state(run_dir) == "stopped", interval=0.1), runs.status_of(run_dir)
    steps = _steps(run_dir)
    assert steps == list(range(len(steps)))  # one writer: no step twice


@pytest.mark.slow
def test_a_stop_requested_while_queued_stops_the_run(home):
    run_dir, _ = runs.start_run(RunConfig(steps=5, checkpoint_every=5, **SMALL))
    assert runs.request_stop(run_dir).startswith("stop requested")  # before the process even imports torch
    assert wait_for(lambda: _state(run_dir) == "stopped", interval=0.1), runs.status_of(run_dir)
    status = load_status(run_dir)
    assert status["step"] == 0 and "before it started" in status["message"]
    assert checkpoints.latest(run_dir) is None
    runs.resume(run_dir)  # the stop was consumed: a resume trains
    assert wait_for(lambda: _state(run_dir) == "finished", timeout=180, interval=0.1), runs.status_of(run_dir)
    assert _steps(run_dir) == list(range(6))


# --- nothing stuck ------------------------------------------------------------------------

def _fake_run(name: str, status_text: str, lock_file: bool = False) -> Path:
    run_dir = run_folder.runs_dir() / name
    run_dir.mkdir()
    (run_dir / "status.json").write_text(status_text)
    (run_dir / "config.json").write_text(json.dumps(RunConfig(**SMALL).to_dict()))
    if lock_file:
        (run_dir / ownership.LOCK_FILE).touch()
    return run_dir


@pytest.mark.slow
def test_ghost_corrupt_and_reused_pid_runs_block_nothing(home, monkeypatch):
    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "1")
    ghost = _fake_run("ghost", json.dumps({"state": "queued", "pid": None, "created_at": 1}), lock_file=True)
    corrupt = _fake_run("corrupt", "{not json")
    # A live pid (this test's), but another process's start time: the run's process is gone.
    reused = _fake_run("reused", json.dumps({"state": "running", "pid": os.getpid(), "pid_started": 1,
                                             "created_at": 2}))
    rows = {row["id"]: row for row in runs.list_runs()}
    assert rows["ghost"]["state"] == "failed" and "never started" in rows["ghost"]["message"]
    assert rows["reused"]["state"] == "failed"
    assert rows["corrupt"]["state"] == "unreadable" and str(corrupt / "status.json") in rows["corrupt"]["message"]
    assert "ghost" in runs.format_runs(list(rows.values()))
    assert runs.request_stop(ghost).startswith("run ghost is not running")
    run_dir, _ = runs.start_run(RunConfig(steps=3, checkpoint_every=1, **SMALL))  # the limit of 1 is free
    assert wait_for(lambda: _state(run_dir) == "finished", interval=0.1), runs.status_of(run_dir)
    for folder in (ghost, corrupt, reused):
        runs.delete_run(folder)
    assert run_folder.run_folders() == [run_dir]
    listing = subprocess.run([sys.executable, "-m", "opd_lab", "runs"], env=_env(), capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0 and run_dir.name in listing.stdout


# --- nothing lost ---------------------------------------------------------------------------

def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(home):
    run_dir = run_folder.create_run(RunConfig(steps=4, checkpoint_every=1, keep_checkpoints=5, **SMALL))
    assert run_training(run_dir, progress=False) == "finished"
    latest = checkpoints.latest(run_dir)
    assert latest.name == "step_000004"
    (latest / checkpoints.STATE_FILE).write_bytes(b"not a checkpoint")
    run_folder.update_status(run_dir, state="stopped")
    assert run_training(run_dir, progress=False) == "finished"
    assert (run_dir / "checkpoints" / "corrupt-step_000004").is_dir()
    assert "does not load" in run_folder.log_tail(run_dir)
    assert _steps(run_dir) == [0, 1, 2, 3, 4]  # step 4 trained again from step 3, once
    assert checkpoints.latest(run_dir).name == "step_000004"


def test_checkpoints_keep_the_newest_and_the_best(home):
    run_dir = run_folder.create_run(RunConfig(**{**SMALL, "steps": 6, "checkpoint_every": 1, "keep_checkpoints": 2,
                                                 "eval_every": 2}))
    assert run_training(run_dir, progress=False) == "finished"
    accuracy = {row["step"]: row["eval/accuracy"] for row in load_metrics(run_dir) if "eval/accuracy" in row}
    best = max((accuracy[step], -step) for step in (2, 4, 6))
    kept = {checkpoints.step_of(c) for c in checkpoints.checkpoint_dirs(run_dir)}
    assert kept == {5, 6, -best[1]}


@pytest.mark.slow
def test_ctrl_c_in_a_foreground_run_saves_a_checkpoint_and_stops(home):
    process = subprocess.Popen([sys.executable, "-m", "opd_lab", "train", "--steps", "500",
                                "--checkpoint-every", "1000", *SMALL_FLAGS], env=_env(), cwd=home,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: run_folder.run_folders() and load_status(run_folder.run_folders()[0]).get("step", 0) >= 2)
    run_dir = run_folder.run_folders()[0]
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "Ctrl-C again to abort" in stderr
    status = load_status(run_dir)
    assert status["state"] == "stopped"
    assert checkpoints.step_of(checkpoints.latest(run_dir)) == status["step"] == max(_steps(run_dir)) >= 2


def test_a_run_folder_that_becomes_unwritable_reports_the_first_error(home, monkeypatch, capsys):
    from opd_lab import train

    run_dir = run_folder.create_run(RunConfig(steps=3, **SMALL))

    def read_only(*_, **__):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(train, "append_jsonl", lambda *_: (_ for _ in ()).throw(RuntimeError("disk gone")))
    real_update = train.update_status
    monkeypatch.setattr(train, "update_status", lambda run_dir, **fields: (
        read_only() if fields.get("state") == "failed" else real_update(run_dir, **fields)))
    monkeypatch.setattr(train, "append_log", read_only)
    assert run_training(run_dir, progress=False) == "failed"
    err = capsys.readouterr().err.replace("\r", "\n")
    line = _one_line("\n".join(line for line in err.splitlines() if "Loading weights" not in line))
    assert "RuntimeError: disk gone" in line and "could not be written" in line


# --- one clear line for every error ---------------------------------------------------------

def _bad_task_files(folder: Path) -> dict[str, Path]:
    rows = [json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) for i in range(30)]
    files = {"utf8": folder / "latin1.jsonl", "long": folder / "long.jsonl"}
    files["utf8"].write_bytes(("\n".join(rows[:3]) + "\n").encode() + b'{"prompt": "caf\xe9", "answer": "1"}\n')
    files["long"].write_text("\n".join(rows[:5] + [json.dumps({"prompt": "1+" * 2500, "answer": "1"})]) + "\n")
    duplicated = folder / "duplicated.yaml"
    duplicated.write_text("method: opd\nsteps: 10\nsteps: 20\n")
    corrupt_model = folder / "corrupt-model"
    corrupt_model.mkdir()
    for name in os.listdir(Path(os.environ["OPD_LAB_HOME"]) / "lab" / "addition" / "student"):
        source = Path(os.environ["OPD_LAB_HOME"]) / "lab" / "addition" / "student" / name
        (corrupt_model / name).write_bytes(source.read_bytes())
    (corrupt_model / "model.safetensors").write_bytes(b"garbage")
    (folder / "a-file").write_text("")
    return {**files, "yaml": duplicated, "corrupt_model": corrupt_model, "a_file": folder / "a-file"}


BAD_INPUTS = {
    "nan reward coef": (["launch", "--reward-coef", "nan"], "reward_coef: must be a finite number"),
    "inf temperature": (["launch", "--temperature", "inf"], "temperature: must be a finite number"),
    "missing teacher": (["launch", "--teacher", "/no/such/model"], "model path not found: /no/such/model"),
    "unreachable hub id": (["launch", "--student", "nobody-xyz/no-such-model"], "nobody-xyz/no-such-model"),
    "invalid UTF-8": (["launch", "--task", "{utf8}"], "latin1.jsonl, line 4: not valid UTF-8"),
    "too-long prompt": (["launch", "--task", "{long}", "--teacher", "lab:addition", "--student", "lab:addition"],
                        "long.jsonl, line 6: the prompt is"),
    "duplicate YAML key": (["launch", "{yaml}"], "line 3: the key 'steps' appears twice"),
    "non-ASCII name": (["launch", "--name", "ünï"], "name: use ASCII letters"),
    "dot-dot name": (["launch", "--name", ".."], "name: use ASCII letters"),
    "hidden name": (["launch", "--name", ".hidden"], "name: use ASCII letters"),
    "a..b name": (["launch", "--name", "a..b"], "name: use ASCII letters"),
    "long name": (["launch", "--name", "x" * 200], "name: use at most 100 characters"),
    "data dir is a file": (["--data-dir", "{a_file}", "launch"], "a-file: a file is in the way"),
    "data dir in /sys": (["--data-dir", "/sys/opd-lab-x", "launch"], "data dir /sys/opd-lab-x"),
    "eval count 0": (["eval", "lab-student", "--count", "0"], "--count: must be at least 1"),
    "eval corrupt model": (["eval", "{corrupt_model}"], "could not load the model"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_each_bad_input_gives_one_line_and_no_run_folder(home, tmp_path, monkeypatch, capsys, case):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = _bad_task_files(tmp_path)
    argv, expected = BAD_INPUTS[case]
    argv = [part.format(**files) for part in argv]
    before = sorted(run_folder.runs_dir().iterdir())
    code = main(argv)
    monkeypatch.setenv("OPD_LAB_HOME", str(home))  # `--data-dir` set it for the process
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("opd-lab: error: ") and expected in line, line
    assert sorted(run_folder.runs_dir().iterdir()) == before


@pytest.mark.slow
def test_a_bad_run_limit_or_port_is_one_line_before_anything_starts(home):
    bad_limit = subprocess.run([sys.executable, "-m", "opd_lab", "launch", *SMALL_FLAGS], capture_output=True,
                               text=True, env=_env(OPD_LAB_MAX_RUNS="abc"), timeout=120)
    assert bad_limit.returncode == 2 and "OPD_LAB_MAX_RUNS: expected a whole number" in _one_line(bad_limit.stderr)
    assert run_folder.run_folders() == []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for bad_port, expected in ((str(port), "cannot listen on"), ("70000", "between 1 and 65535")):
            started = time.time()
            app = subprocess.run([sys.executable, "-m", "opd_lab_app", "app", "--port", bad_port, "--no-build"],
                                 capture_output=True, text=True, env=_env(), timeout=120)
            assert app.returncode == 2 and expected in _one_line(app.stderr), app.stderr
            assert "app on http" not in app.stdout and time.time() - started < 30


@pytest.mark.slow
def test_relative_paths_are_made_absolute_at_launch(home, tmp_path, monkeypatch):
    task = tmp_path / "mine.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n" for i in range(40)))
    monkeypatch.chdir(tmp_path)
    run_dir, _ = runs.start_run(RunConfig(task="mine.jsonl", teacher="lab:addition", student="lab:addition", steps=2, checkpoint_every=1, **SMALL))
    assert run_folder.load_config(run_dir)["task"] == str(task)
    assert wait_for(lambda: _state(run_dir) == "finished", interval=0.1), (runs.status_of(run_dir), run_folder.log_tail(run_dir))


def test_the_launch_form_refuses_a_model_path_with_one_line_whether_or_not_it_exists(home):
    from opd_lab_app.launch_tab import FORM_FIELDS, launch_run

    answers = set()
    for path in ("/no/such/model", str(home / "lab" / "addition" / "teacher")):  # missing, then a real model
        values = [{"teacher": path}.get(spec.name, spec.default) for spec in FORM_FIELDS]
        message, run_id = launch_run(values)
        assert run_id == "" and "choose one of the models listed" in message and path not in message
        answers.add(message)
    assert len(answers) == 1 and run_folder.run_folders() == []


# --- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ünï", "..", ".hidden", "a..b", "x" * 200, "a b", "a/b", "ok\n"])
def test_one_naming_rule_for_run_names_and_run_ids(home, name):
    with pytest.raises(ConfigError, match="^name: "):
        RunConfig(name=name)
    with pytest.raises(runs.RunError, match="invalid run id"):
        run_folder.run_path(name)


def test_every_accepted_name_makes_a_run_id_the_cli_accepts(home, tmp_path):
    task = tmp_path / "my tâsk file.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"{i}=", "answer": str(i)}) + "\n" for i in range(40)))
    for config in (RunConfig(name="x" * 100), RunConfig(task=str(task)), RunConfig(name="a.b_c-d")):
        run_dir = run_folder.create_run(config)
        assert run_folder.run_path(run_dir.name) == run_dir


def test_error_line_names_the_type_of_unexpected_errors():
    assert error_line(ConfigError("steps: must be at least 1\nmore")) == "steps: must be at least 1"
    assert error_line(KeyError("x")) == "KeyError: 'x'"


# --- the token view -------------------------------------------------------------------------

def test_a_right_to_left_override_in_a_token_does_not_reverse_later_tokens():
    view = render_tokens([{"text": "123\u202e456"}, {"text": "+7=89"}], prompt="\u202eprompt")
    assert "\u202e" not in view and "unicode-bidi:isolate" in view
    body = view[view.index('class="tvb"'):]
    visible = re.sub(r'<span class="tvc".*?</span></span>', "</span>", body)  # drop the hover cards
    visible = re.sub(r"<[^>]+>", "", visible).replace("&gt;", ">")
    assert "123\\u202e456+7=89" in visible
