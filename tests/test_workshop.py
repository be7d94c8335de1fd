"""The app as a workshop uses it, on a *trained* lab (the teacher right on most problems).

The tiny lab's untrained teacher never writes a parseable answer, so paths that depend on
real answers (the red pen's verdict, side by side of an SFT run, the app's start with the
labs `opd-lab compare --quick` and `lab build --scenario` leave behind) only run here.
The served app is driven through gradio_client, as a browser would drive it; see
tests/test_workshop_browser.py for Chromium.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from synthetic_runs import make_run

gr = pytest.importorskip("gradio")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _quick_report(home: Path) -> Path:
    """A report folder as `opd-lab compare --scenario baseline --quick` writes it, over synthetic runs."""
    from opd_lab.studies.comparison import CompareSettings, build_report
    from opd_lab.studies.comparison_report import write_report
    from opd_lab.studies.scenarios import get_scenario

    folder = home / "reports" / "baseline-quick"
    runs = {}
    for arm, reach in (("rl", 0.6), ("sft", 0.8), ("opd", 0.85)):
        run_id = f"{arm}-s0"
        make_run(folder / "runs", run_id, method=arm, steps=20, eval_accuracy={0: 0.2, 10: reach - 0.1, 20: reach})
        runs[arm] = [{"seed": 0, "run": run_id, "learning_rate": 1e-3}]
    data = build_report(CompareSettings(scenario="baseline", quick=True, seeds=1), get_scenario("baseline"), {},
                        0.9, 0.2, sweep=[], chosen={arm: 1e-3 for arm in runs}, runs_by_arm=runs, out=folder,
                        seconds=1.0)
    write_report(folder, data)
    return folder


@pytest.fixture(scope="module")
def workshop_home(trained_lab_home, tmp_path_factory):
    """A data dir as a workshop leaves it: the default (trained) lab, `baseline-quick` and
    `weak-teacher` labs (tiny models under the names the CLI gives), a quick compare report,
    and a lab folder a killed copy left without its summary."""
    from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab
    from opd_lab.studies.scenarios import get_scenario

    home = tmp_path_factory.mktemp("workshop-home")
    trained, _ = trained_lab_home
    import shutil

    shutil.copytree(trained / "lab", home / "lab")
    previous = os.environ.get("OPD_LAB_HOME")
    os.environ["OPD_LAB_HOME"] = str(home)
    try:
        build_lab(get_scenario("baseline").recipe(quick=True), progress_print=lambda *_: None)
        weak = get_scenario("weak-teacher")
        build_lab(LabRecipe(name=weak.name, **{**weak.recipe_changes, **TINY_RECIPE}), progress_print=lambda *_: None)
        _quick_report(home)
        (home / "lab" / "half-copied").mkdir()
    finally:
        if previous is None:
            os.environ.pop("OPD_LAB_HOME", None)
        else:
            os.environ["OPD_LAB_HOME"] = previous
    return home


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer at {url}")


def test_the_app_starts_with_every_lab_and_report_a_workshop_leaves(workshop_home):
    """`opd-lab app` on a data dir holding the default lab, `baseline-quick`, `weak-teacher`,
    a quick compare report and a half-copied lab: it starts and serves all five tabs."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "OPD_LAB_HOME": str(workshop_home), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "opd_lab_app", "app", "--no-build", "--port", str(port)], env=env,
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url + "config", process)
        with urllib.request.urlopen(url + "config", timeout=10) as response:
            config = json.load(response)
        components = config["components"]
        tabs = {c["props"].get("id"): c["props"].get("label") for c in components if c.get("type") == "tabitem"}
        assert tabs == {"launch": "Launch", "runs": "Runs", "compare": "Compare", "inspect": "Inspect",
                        "playground": "Playground"}
        header = next(c["props"]["value"] for c in components if c["props"].get("elem_id") == "app-header")
        assert "**addition**: teacher 9" in header  # the trained default lab
        assert "**baseline-quick** (addition): teacher" in header
        assert "**weak-teacher** (addition-careless): teacher" in header
        assert "**half-copied**: cannot be used (no summary.json" in header
        assert str(workshop_home) not in header  # no server paths for attendees

        client = Client(url, verbose=False)
        text, _, table = client.predict("baseline-quick", api_name="/report")
        assert "### Verdict" in text and "quick settings" in text and table["data"]
        for lab in ("baseline-quick", "weak-teacher"):  # the Playground loads every listed lab
            view, about = client.predict(f"lab:{lab}", "12+34=", "1+3+0=04;46", "advantage", True,
                                         api_name="/score")
            assert view.startswith("<style") and f"the {lab} lab" in about, about
        assert "no built lab named 'half-copied'" in client.predict(
            "lab:half-copied", "12+34=", "46", "advantage", True, api_name="/score")[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture()
def served(trained_lab):
    from opd_lab_app.main import build_app

    demo = build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _first_wrong_token(records: list[dict]) -> int:
    """The first position where the teacher's first choice is not the written token."""
    return next(i for i, record in enumerate(records) if record["teacher_top"][0][0] != record["text"])


def test_red_pen_in_the_playground_verifies_against_the_true_answer(served, trained_lab):
    """On the trained lab the student's answers parse; the verdict checks them against the sum itself."""
    from gradio_client import Client

    from opd_lab.tasks import get_task

    from opd_lab_app import playground_tab

    task = get_task("addition")
    client = Client(served, verbose=False)
    for problem in task.eval_problems(20):  # a prompt where the weak student errs somewhere the teacher would not
        completion, _, _, records = playground_tab.answer("lab:addition", problem.prompt, True, 1.0, 0)
        if any(r["teacher_top"][0][0] != r["text"] for r in records):
            break
    served_completion, view, about = client.predict("lab:addition", problem.prompt, True, 1.0, 0, "advantage", True,
                                                    api_name="/answer")  # greedy: the same answer, now on screen
    assert served_completion == completion and "base student of the addition lab" in about
    assert task.verify(problem, completion).parsed is not None  # the student writes a parseable answer
    position = _first_wrong_token(records)
    teacher_choice = records[position]["teacher_top"][0][0]
    pen_view, verdict = client.predict("lab:addition", str(position), teacher_choice, "advantage", True,
                                       api_name="/red_pen")
    before = task.verify(problem, completion)
    words = {True: "right", False: "wrong"}
    assert f"Against the true answer **{problem.answer}**: before, {words[before.correct]}" in verdict, verdict
    assert "after the red pen" in pen_view


def test_red_pen_skips_the_verdict_when_the_task_does_not_know_the_answer(trained_lab):
    from opd_lab_app import playground_tab

    _, _, records = playground_tab.score("lab:addition", "hello", "1+1+0=02;2")
    _, verdict = playground_tab.red_pen("lab:addition", "hello", records, 0, "2")
    assert "does not know the answer to this prompt" in verdict and "Error" not in verdict


@pytest.fixture(scope="module")
def trained_runs(trained_lab_home):
    """An OPD and an SFT run of 2 steps on the trained lab, trained in this process."""
    from opd_lab import run_folder
    from opd_lab.config import RunConfig
    from opd_lab.train import run_training

    home, _ = trained_lab_home
    previous = os.environ.get("OPD_LAB_HOME")
    os.environ["OPD_LAB_HOME"] = str(home)
    try:
        made = {}
        for method in ("opd", "sft"):
            config = RunConfig(name=f"workshop-{method}", method=method, steps=2, batch_size=4, eval_every=2,
                               eval_count=8, sample_every=1, checkpoint_every=1, samples_to_log=2)
            run_dir = run_folder.create_run(config)
            assert run_training(run_dir, progress=False) == "finished"
            made[method] = run_dir.name
    finally:
        if previous is None:
            os.environ.pop("OPD_LAB_HOME", None)
        else:
            os.environ["OPD_LAB_HOME"] = previous
    return made


def test_red_pen_in_inspect_verifies_against_the_true_answer(served, trained_runs):
    from gradio_client import Client

    from opd_lab_app import inspect_tab
    from opd_lab.tasks import get_task

    run_id = trained_runs["opd"]
    sample = inspect_tab.logged_sample(run_id, 2, 0)
    problem = get_task("addition").problem_for(sample["prompt"])
    position = next((i for i, r in enumerate(sample["tokens"]) if r["teacher_top"][0][0] != r["text"]), 0)
    choice = sample["tokens"][position]["teacher_top"][0][0]
    pen_view, verdict = Client(served, verbose=False).predict(run_id, 2, 0, str(position), choice, "advantage", True,
                                                              api_name="/inspect_red_pen")
    assert verdict.startswith("Student: the checkpoint at step 1, the one that wrote this sample.")
    assert f"Against the true answer **{problem.answer}**" in verdict, verdict
    assert "after the red pen" in pen_view


def test_side_by_side_says_an_sft_sample_was_written_by_the_teacher(trained_lab, trained_runs):
    from opd_lab_app import inspect_tab

    opd, sft = trained_runs["opd"], trained_runs["sft"]
    assert all(s["written_by"] == "teacher" for s in inspect_tab.load_samples(inspect_tab.run_dir_of(sft)))
    html = inspect_tab.side_by_side(opd, 2, 0, sft, 2)
    assert f"{sft} at step 2 (written by the teacher; SFT trained on it)" in html
    assert f"{opd} at step 2 (" not in html  # the OPD sample is the student's own
    assert "written by the teacher" in inspect_tab.token_view(sft, 2, 0)
