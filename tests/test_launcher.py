"""One detached launcher (issue 22, item 2) and comparisons that stop when told and wait
in line (issue 24, item 4; issue 20, item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opd_lab import files, launcher, ownership, run_batch, run_folder, runs
from opd_lab.studies import background, comparison_report
from opd_lab.config import RunConfig
from opd_lab.run_folder import load_status
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(batch_size=4, eval_every=1000, eval_count=8, sample_every=1000, max_new_tokens=8)


def _state_letter(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return ""


def test_a_finished_comparison_reads_finished_while_its_pid_is_a_zombie_or_reused(home):
    record = comparison_report.reports_dir() / background.COMPARE_PROCESS_FILE
    started, process = launcher.start(["runs"], log=home / "quick.log", reap=False)  # exits at once, unreaped
    launcher.record(record, started, user="ana")
    assert wait_for(lambda: _state_letter(started.pid) == "Z", timeout=60, interval=0.1)
    assert os.path.exists(f"/proc/{started.pid}")  # the pid still answers os.kill(pid, 0)
    assert not started.alive() and not background.compare_running()
    process.wait()

    # A pid given to another process since: this test's own pid, with another start time.
    launcher.record(record, launcher.Launched(os.getpid(), ownership.process_start_time(os.getpid()) - 1))
    assert not background.compare_running()
    launcher.record(record, launcher.Launched(os.getpid(), ownership.process_start_time(os.getpid())))
    assert background.compare_running()  # the very process recorded: running


def test_the_launcher_gives_children_the_data_dir_and_reaps_them(home):
    started, process = launcher.start(["runs"], log=home / "runs.log")
    assert wait_for(lambda: process.returncode is not None, timeout=60, interval=0.1)  # reaped by its thread
    assert f"no runs in {home / 'runs'}" in (home / "runs.log").read_text()


def test_a_worker_dies_with_its_parent(home, tmp_path):
    """A process started with die_with_parent gets SIGTERM when its parent is killed."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\nfrom pathlib import Path\nfrom opd_lab import launcher\n"
        "started, _ = launcher.start(['compare', '--scenario', 'baseline', '--quick', '--out', sys.argv[2]], "
        "log=Path(sys.argv[1]), detached=False, die_with_parent=True)\n"
        "print(started.pid, started.started, flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "child.log"), str(tmp_path / "out")],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    pid, start_time = parent.stdout.readline().split()
    child = launcher.Launched(int(pid), int(start_time))
    assert child.alive()
    parent.kill()
    parent.wait()
    assert wait_for(lambda: not child.alive(), timeout=10, interval=0.1)


def test_a_comparison_at_the_run_limit_waits_in_line(home, monkeypatch):
    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "1")
    other, owner = ownership.create_owned_run(RunConfig(steps=2, name="someone-else"))  # holds the only place
    stop = run_batch.StopRequest()
    said = []
    config = RunConfig(steps=2, name="cmp-wait", **SMALL)

    import threading

    results = {}
    thread = threading.Thread(target=lambda: results.update(
        dirs=run_batch.train_all([config], 2, "test", stop, launched_by="ana", progress_print=said.append)))
    thread.start()
    try:
        assert wait_for(lambda: said, timeout=60, interval=0.1)
        time.sleep(1.5)
        assert [p.name for p in run_folder.run_folders()] == [other.name]  # nothing of the comparison started
        assert "waiting for a free place" in said[0]
    finally:
        owner.release()
    run_folder.update_status(other, state="stopped")
    thread.join(timeout=120)
    assert not thread.is_alive()
    (run_dir,) = results["dirs"]
    assert runs.status_of(run_dir)["state"] == "finished"
    assert run_folder.launcher_of(run_dir) == "ana"


def _training_pids(home: Path) -> list[int]:
    """Training processes of runs in `home` still alive (by pid and start time)."""
    alive = []
    for folder in (home / "runs").glob("*"):
        status = load_status(folder) if (folder / "status.json").exists() else {}
        if status.get("pid") and ownership.process_alive(status["pid"], status.get("pid_started")):
            alive.append(status["pid"])
    return alive


def test_a_killed_comparison_leaves_no_run_training(home):
    """`kill -9` of `opd-lab compare`: no handler runs, yet its runs stop (with a checkpoint)."""
    command = [sys.executable, "-m", "opd_lab", "compare", "--scenario", "baseline", "--quick", "--seeds", "1",
               "--out", str(home / "report")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    compare = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: any(runs.is_active(f) and load_status(f).get("pid") for f in run_folder.run_folders()),
                    timeout=240, interval=0.1)
    compare.kill()
    compare.wait()
    # no handler of the comparison runs: each run stops by itself, after loading its models at worst
    assert wait_for(lambda: not _training_pids(home), timeout=30, interval=0.1)
    states = {f.name: runs.status_of(f) for f in run_folder.run_folders()}
    started = [status for status in states.values() if status.get("pid_started")]
    assert started and all(status["state"] in ("finished", "stopped") for status in started), states
    # a run the comparison was creating at the kill never had a process: it says so
    assert all("never started" in status["message"] for status in states.values() if not status.get("pid_started"))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_a_signalled_comparison_stops_its_runs_and_reports_what_finished(home, how):
    out = home / "report"
    command = [sys.executable, "-m", "opd_lab", "compare", "--scenario", "baseline", "--quick", "--seeds", "1",
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    compare = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def some_finished_and_some_training() -> bool:
        folders = run_folder.run_folders()
        states = [runs.status_of(folder).get("state") for folder in folders]
        return "finished" in states and any(runs.is_active(folder) for folder in folders)

    assert wait_for(some_finished_and_some_training, timeout=240, interval=0.1), compare.stderr
    finished_before = {f.name for f in run_folder.run_folders() if runs.status_of(f).get("state") == "finished"}
    training = [f for f in run_folder.run_folders() if runs.is_active(f)]
    compare.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    signalled = time.monotonic()
    stdout, stderr = compare.communicate(timeout=60)
    assert wait_for(lambda: not _training_pids(home), timeout=10, interval=0.1)
    assert time.monotonic() - signalled < 10, "the comparison and its runs took more than 10 s to stop"
    assert compare.returncode == (143 if how == "SIGTERM" else 130), stderr
    assert "Traceback" not in stderr

    stopped = files.read_json(out / comparison_report.STOPPED_FILE)
    assert stopped["stopped"] == how.replace("SIGINT", "Ctrl-C")
    reported = {row["run"] for row in stopped["finished"]}
    assert finished_before <= reported  # every run finished before the signal is in the report
    assert all(Path(row["path"]).is_dir() and Path(row["path"]).parent == runs.runs_dir()
               for row in stopped["finished"])  # the runs stay in the runs folder, their paths recorded
    for folder in training:  # a run training at the signal: finished in time, or stopped with a checkpoint
        if folder.name not in reported:
            assert load_status(folder)["state"] == "stopped"
    assert "runs finished" in (out / "report.md").read_text()
    accounted = len(reported) + len(stopped["unfinished"]) + stopped["never_started"]
    assert accounted in (6, 6 + 3)  # the quick sweep (3 methods x 2 rates), then one seed per method
    assert len(reported) < accounted
    if how == "SIGTERM":  # rerun with the same --out: it goes on by stage, and trains only what had not finished
        from opd_lab.studies.comparison import CompareSettings, run_compare

        finished = [f for f in run_folder.run_folders() if runs.status_of(f).get("state") == "finished"]
        before = set(run_folder.run_folders())
        run_compare(CompareSettings(scenario="baseline", quick=True, seeds=1), out=out, progress_print=lambda *_: None)
        trained = [f for f in run_folder.run_folders() if f not in before]
        assert len(trained) == 9 - len(finished)  # the 6 sweep runs and 3 reported runs, less those already done
        assert {run_folder.load_config(f)["name"] for f in trained}.isdisjoint(
            run_folder.load_config(f)["name"] for f in finished)
        data = files.read_json(out / comparison_report.REPORT_FILE)
        assert data["verdict"]["sentence"] and not (out / comparison_report.STOPPED_FILE).exists()
