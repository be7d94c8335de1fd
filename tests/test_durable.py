"""Nothing lost (issue 24): a checkpoint that fails to load for a passing reason is never
set aside, set-aside checkpoints are tried again, a run never restarts from step 0
unless asked, and a full disk leaves no partial files and a run that reads `failed`."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest

from opd_lab import checkpoints, run_folder, runs
from opd_lab.config import RunConfig
from opd_lab.files import read_jsonl
from opd_lab.run_folder import load_metrics, load_status
from opd_lab.train import run_training

SMALL = dict(batch_size=4, eval_every=1000, eval_count=8, sample_every=1, samples_to_log=1, max_new_tokens=8)


def _steps(run_dir) -> list[int]:
    return [row["step"] for row in load_metrics(run_dir)]


def _trained(steps: int, **changes) -> Path:
    """A run trained to `steps` then marked stopped, its config asking for `steps + 2`."""
    run_dir = run_folder.create_run(RunConfig(steps=steps, **{**SMALL, **changes}))
    assert run_training(run_dir, progress=False) == "finished"
    config = json.loads((run_dir / "config.json").read_text())
    config["steps"] = steps + 2
    (run_dir / "config.json").write_text(json.dumps(config))
    run_folder.update_status(run_dir, state="stopped", total_steps=steps + 2)
    return run_dir


def _names(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())


def test_corruption_is_only_a_file_that_cannot_be_deserialized():
    assert checkpoints.is_corruption(pickle.UnpicklingError("invalid load key"))
    assert checkpoints.is_corruption(EOFError("Ran out of input"))
    assert checkpoints.is_corruption(FileNotFoundError(errno.ENOENT, "missing"))
    assert checkpoints.is_corruption(RuntimeError("PytorchStreamReader failed reading zip archive"))
    assert not checkpoints.is_corruption(MemoryError())
    assert not checkpoints.is_corruption(OSError(errno.EIO, "Input/output error"))
    assert not checkpoints.is_corruption(PermissionError(errno.EACCES, "Permission denied"))
    assert not checkpoints.is_corruption(RuntimeError("CUDA error: an illegal memory access"))


def test_out_of_memory_while_restoring_renames_nothing_and_a_later_resume_continues(home, monkeypatch):
    run_dir = _trained(3, checkpoint_every=1, keep_checkpoints=5)
    before = _names(run_dir)
    assert before == ["step_000001", "step_000002", "step_000003"]
    rows, samples = _steps(run_dir), len(read_jsonl(run_dir / "samples.jsonl"))

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError("simulated: cannot allocate the checkpoint")

    real_restore = checkpoints.restore
    monkeypatch.setattr(checkpoints, "restore", out_of_memory)
    assert run_training(run_dir, progress=False) == "failed"
    assert "MemoryError" in load_status(run_dir)["message"]
    assert _names(run_dir) == before  # nothing set aside
    assert _steps(run_dir) == rows and len(read_jsonl(run_dir / "samples.jsonl")) == samples

    monkeypatch.setattr(checkpoints, "restore", real_restore)
    assert run_training(run_dir, progress=False) == "finished"
    assert _steps(run_dir) == [0, 1, 2, 3, 4, 5]  # continued from step 3, not from 0


def test_set_aside_checkpoints_are_tried_again_and_get_their_name_back(home):
    run_dir = _trained(2, checkpoint_every=1, keep_checkpoints=5)
    root = run_dir / "checkpoints"
    for name in ("step_000001", "step_000002"):  # what a transient failure did before this fix
        os.replace(root / name, root / f"corrupt-{name}")
    assert run_training(run_dir, progress=False) == "finished"
    assert _steps(run_dir) == [0, 1, 2, 3, 4]
    assert "step_000002" in _names(run_dir) and "loads now" in run_folder.log_tail(run_dir)


def test_a_second_resume_refuses_to_restart_until_asked_and_keeps_the_old_rows(home):
    run_dir = _trained(3, checkpoint_every=3)
    only = checkpoints.latest(run_dir)
    (only / checkpoints.STATE_FILE).write_bytes(b"not a checkpoint")
    rows = _steps(run_dir)
    old_samples = read_jsonl(run_dir / "samples.jsonl")
    for attempt in range(2):  # the first resume and the second one refuse alike
        assert run_training(run_dir, progress=False) == "failed", attempt
        assert "--from-scratch" in load_status(run_dir)["message"]
        assert _steps(run_dir) == rows and read_jsonl(run_dir / "samples.jsonl") == old_samples

    owner = runs.take_for_foreground(run_dir, from_scratch=True)
    assert run_training(run_dir, progress=False, owner=owner) == "finished"
    assert _steps(run_dir) == [0, 1, 2, 3, 4, 5]
    aside = [p for p in run_dir.iterdir() if p.name.startswith(run_folder.HISTORY_PREFIX)]
    assert len(aside) == 1
    assert [row["step"] for row in read_jsonl(aside[0] / "metrics.jsonl")] == rows
    assert read_jsonl(aside[0] / "samples.jsonl") == old_samples
    assert (aside[0] / "checkpoints" / "corrupt-step_000003").is_dir()


def test_rows_of_a_run_that_died_before_its_first_checkpoint_are_kept_aside(home):
    run_dir = _trained(2, checkpoint_every=1000)
    # the last step is always checkpointed: remove it to model a run that died before its first one
    import shutil

    shutil.rmtree(run_dir / "checkpoints")
    assert run_training(run_dir, progress=False) == "finished"
    aside = [p for p in run_dir.iterdir() if p.name.startswith(run_folder.HISTORY_PREFIX)]
    assert len(aside) == 1 and [r["step"] for r in read_jsonl(aside[0] / "metrics.jsonl")] == [0, 1, 2]


# --- a full disk ------------------------------------------------------------------------------

@pytest.fixture()
def small_disk(lab_home, tmp_path, monkeypatch):
    """A data dir on its own 4 MiB tmpfs (needs root, as in CI's container), sharing the tiny lab."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    try:
        (mount / "lab").symlink_to(Path(lab_home[0]) / "lab")
        monkeypatch.setenv("OPD_LAB_HOME", str(mount))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Write a file in `folder` until its filesystem has no byte left."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_save_on_a_full_disk_leaves_no_partial_files_and_the_run_reads_failed(small_disk, monkeypatch):
    from opd_lab import train

    run_dir = run_folder.create_run(RunConfig(steps=4, checkpoint_every=2, **SMALL))
    real_save = train._save_checkpoint
    calls = []

    def save_on_a_full_disk(trainer, folder):
        calls.append(trainer.step_done)
        if len(calls) == 2:  # the first save fits; before the second the disk fills up
            _fill(small_disk)
        return real_save(trainer, folder)

    monkeypatch.setattr(train, "_save_checkpoint", save_on_a_full_disk)
    assert run_training(run_dir, progress=False) == "failed"
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".partial")]
    assert leftovers == []
    assert [p.name for p in checkpoints.checkpoint_dirs(run_dir)] == ["step_000002"]
    assert load_status(run_dir)["state"] == "running"  # what the full disk left in status.json
    status = runs.status_of(run_dir)
    assert status["state"] == "failed" and str(small_disk) in status["message"] and "disk full" in status["message"]
    assert runs.format_runs(runs.list_runs()).count("failed") == 1


def test_launching_onto_a_full_disk_is_one_line_naming_the_data_dir_and_leaves_no_folder(small_disk, capsys):
    from opd_lab.cli import main

    (small_disk / "runs").mkdir()
    _fill(small_disk)
    assert main(["launch", "--steps", "2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no space left in the data dir" in err[0] and str(small_disk) in err[0], err
    assert list((small_disk / "runs").iterdir()) == []


def test_an_interrupt_while_a_run_folder_is_made_removes_it(home, monkeypatch):
    from opd_lab import ownership

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ownership, "write_new_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ownership.create_owned_run(RunConfig(steps=2))
    assert list(runs.runs_dir().iterdir()) == []


# --- smaller hardening -------------------------------------------------------------------------

def _rows(path: Path, key: str, count: int = 30) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", key: str(2 * i)}) + "\n" for i in range(count)))
    return path


def test_the_lab_hint_for_a_task_file_says_what_to_do_and_creates_nothing(home, tmp_path, monkeypatch, capsys):
    from opd_lab.cli import main

    (tmp_path / "in").mkdir()
    task = _rows(tmp_path / "in" / "my.jsonl", "answer")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "in/my.jsonl", "--steps", "2"]) == 2
    line = capsys.readouterr().err.strip()
    assert "built for the built-in tasks only" in line and "--teacher and --student" in line
    assert "lab build --task" not in line
    assert main(["lab", "build", "--task", "in/my.jsonl"]) == 2
    assert "built-in tasks only" in capsys.readouterr().err
    assert sorted(p.name for p in (home / "lab").iterdir()) == sorted(
        p.name for p in Path(os.path.realpath(home / "lab")).iterdir())  # nothing new in the lab folder
    assert not (home / "lab" / "in").exists() and not (tmp_path / "lab").exists() and task.exists()


def test_an_rl_run_on_rows_without_answers_is_refused_and_a_partial_file_warned(home, tmp_path, capsys):
    from opd_lab.config import ConfigError
    from opd_lab.preflight import check_run_inputs

    misspelled = _rows(tmp_path / "misspelled.jsonl", "anwser")
    pair = dict(teacher="lab:addition", student="lab:addition")
    with pytest.raises(ConfigError, match='no row has an "answer".*anwser.*reward 0'):
        check_run_inputs(RunConfig(method="rl", samples_per_prompt=4, task=str(misspelled), **pair))
    check_run_inputs(RunConfig(method="opd", task=str(misspelled), **pair))  # OPD needs no answers
    partial = tmp_path / "partial.jsonl"
    partial.write_text(_rows(tmp_path / "a.jsonl", "answer").read_text()
                       + json.dumps({"prompt": "99+99=", "anwser": "198"}) + "\n")
    check_run_inputs(RunConfig(method="rl", samples_per_prompt=4, task=str(partial), **pair))
    assert "1 of 31 rows have no" in capsys.readouterr().err


def test_a_host_that_is_not_this_machines_is_named_as_the_problem():
    from opd_lab_app.cli import check_port

    with pytest.raises(ValueError, match="--host 10.255.255.1: not an address of this machine"):
        check_port("10.255.255.1", 7860)
