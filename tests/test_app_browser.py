"""The app in a real browser: launch a run, follow it, stop it, inspect its tokens.

Drives Chromium (the Debian package at /usr/bin/chromium, or $OPD_LAB_CHROMIUM; never a downloaded one)
through Playwright against the app served on a free port, on the tiny lab. Every tab
is screenshot into $OPD_LAB_SCREENSHOTS (or the test's tmp_path) for a person to look at.
"""

from __future__ import annotations

import os
import re
import time
import socket
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("OPD_LAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Chromium at {CHROMIUM} "
                                                     "(apt-get install -y chromium chromium-driver)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def app_url(lab_home):
    from opd_lab_app.main import build_app
    from opd_lab_app.state import start_queue_worker, stop_queue_worker

    demo = build_app()
    port = free_port()
    start_queue_worker(interval_s=0.5)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
    stop_queue_worker()


@pytest.fixture()
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("OPD_LAB_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def page(app_url):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        # assertions wait as long as actions: a shared 2-core CI machine can take seconds to refresh
        playwright_api.expect.set_options(timeout=30_000)
        page.goto(app_url)
        page.wait_for_selector("#launch-button")
        yield page
        browser.close()


def _set_number(page, field: str, value) -> None:
    box = page.locator(f"#field-{field} input")
    box.fill(str(value))
    box.press("Tab")


def _pick(page, dropdown_id: str, option: str) -> None:
    """Choose `option` in a Gradio dropdown by typing it and clicking the match."""
    box = page.locator(f"#{dropdown_id} input")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option).first.click()


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_launch_follow_stop_and_inspect_a_run(page, screenshots, lab_home):
    from playwright.sync_api import expect

    from opd_lab import run_folder, runs

    # Launch: a bad value is refused next to the form, then a small run starts.
    _set_number(page, "learning_rate", 5)
    expect(page.locator("#form-check")).to_contain_text("learning_rate: must be in (0, 1)")
    page.click("#launch-button")
    expect(page.locator("#launch-message")).to_contain_text("learning_rate")
    _set_number(page, "learning_rate", 0.001)
    page.locator("#field-name input").fill("browser")
    for field, value in (("steps", 6), ("batch_size", 4), ("eval_every", 3), ("sample_every", 2),
                         ("checkpoint_every", 3), ("eval_count", 16)):
        _set_number(page, field, value)
    expect(page.locator("#launch-command")).to_contain_text(
        "opd-lab launch --name browser --steps 6 --batch-size 4 --learning-rate 0.001 --eval-every 3 --eval-count 16 "
        "--sample-every 2 --checkpoint-every 3")
    page.screenshot(path=str(screenshots / "1-launch.png"), full_page=True)
    page.click("#launch-button")
    expect(page.locator("#launched-run input, #launched-run textarea")).to_have_value(re.compile(r"^browser-"))
    run_id = page.locator("#launched-run input, #launched-run textarea").input_value()
    expect(page.locator("#launch-message")).to_contain_text("Launched")

    # Runs: Launch has switched to it with the new run selected; a reload keeps the tab and the run.
    expect(page.get_by_role("tab", name="Runs")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#run-summary")).to_contain_text(run_id)
    expect(page).to_have_url(re.compile(r"tab=runs"))
    page.reload()
    expect(page.get_by_role("tab", name="Runs")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#run-summary")).to_contain_text(run_id)
    table = page.locator("#runs-table")
    expect(table.locator("[role=row]", has_text=run_id)).to_contain_text(re.compile(r"\b[1-6]/6\b"),
                                                                          timeout=90_000)  # step > 0
    expect(page.locator("#run-accuracy-plot .js-plotly-plot").first).to_be_visible()
    page.click("#stop-button")
    expect(page.locator("#run-action")).to_contain_text(re.compile(r"stop requested|not running"))
    expect(page.locator("#run-summary")).to_contain_text(re.compile(r"stopped|finished"), timeout=90_000)
    expect(page.locator("#run-log textarea")).not_to_have_value("")
    page.screenshot(path=str(screenshots / "2-runs.png"), full_page=True)
    assert runs.status_of(run_folder.run_path(run_id))["state"] in ("stopped", "finished")

    # Compare: the run's curve.
    _open_tab(page, "Compare")
    _pick(page, "compare-runs", run_id)
    page.keyboard.press("Escape")
    expect(page.locator("#compare-plot .js-plotly-plot").first).to_be_visible()
    expect(page.locator("#compare-plot")).to_contain_text("held-out accuracy")
    # The verdict is computed from the table's one row.
    expect(page.locator("#compare-verdict")).to_contain_text("Verdict")
    expect(page.locator("#compare-table")).to_contain_text(run_id)
    final = page.locator("#compare-table [role=gridcell]").nth(2).inner_text().strip()
    assert final.endswith("%")
    verdict = page.locator("#compare-verdict").inner_text()
    # (The tiny lab's teacher is untrained, so this verdict may well be "no gap to close";
    # tests/test_app.py checks a verdict's winner against its table.)
    assert "closed" in verdict or "no gap to close" in verdict
    # The smoothing slider (on by default, as in every tab) draws the EMA over a faint raw curve;
    # at 0 only the raw curve is left: one trace fewer.
    traces = page.locator("#compare-plot .scatterlayer .trace").count()
    slider = page.locator("#compare-smoothing input[type=number]")
    slider.fill("0")
    slider.press("Enter")
    page.locator("#compare-smoothing input[type=range]").dispatch_event("pointerup")
    expect(page.locator("#compare-plot .scatterlayer .trace")).to_have_count(traces - 1)
    page.wait_for_timeout(500)  # let the chart finish drawing before the screenshot
    page.screenshot(path=str(screenshots / "3-compare.png"), full_page=True)

    # Inspect: a sample's tokens, coloured, with a hover card.
    _open_tab(page, "Inspect")
    _pick(page, "inspect-run", run_id)
    token = page.locator("#token-view .tvt").first
    expect(token).to_be_visible()
    expect(page.locator("#kl-heatmap .js-plotly-plot").first).to_be_visible()
    token.hover()
    expect(token.locator(".tvc")).to_be_visible()
    expect(token.locator(".tvc")).to_contain_text("teacher p")
    page.click("#inspect-previous")
    expect(page.locator("#token-view")).to_contain_text(re.compile(r"step [24],"))
    page.screenshot(path=str(screenshots / "4-inspect.png"), full_page=True)

    # Playground: the base student answers, every token coloured.
    _open_tab(page, "Playground")
    page.click("#playground-answer")
    expect(page.locator("#playground-view .tvt").first).to_be_visible()
    page.screenshot(path=str(screenshots / "5-playground.png"), full_page=True)


def test_playground_marks_the_typed_mistakes_and_the_red_pen_rewrites(page, screenshots, monkeypatch):
    """The field report's deliberate mistake, with the full lab's scores (the tiny lab's teacher is untrained)."""
    from playwright.sync_api import expect

    from opd_lab_app import playground_tab
    from tests.test_app import darkest, field_report_records

    monkeypatch.setattr(playground_tab.feedback, "score_completions", lambda *a, **k: [field_report_records()])
    _open_tab(page, "Playground")
    expect(page).to_have_url(re.compile(r"tab=playground"))
    page.locator("#playground-prompt textarea").fill("347+285=")
    page.locator("#playground-completion textarea").fill("7+5+0=12;4+8+1=13;3+2+1=07;732")
    page.click("#playground-score")
    view = page.locator("#playground-view")
    expect(view.locator(".tvt").first).to_be_visible()
    assert sorted(darkest(view.inner_html())[:2]) == [25, 27]  # both wrong 7s, by default
    expect(page.locator("#playground-legend")).to_contain_text("whole next-token distribution")
    # The hover card of the wrong 7 stays inside the window and names the teacher's choice.
    page.set_viewport_size({"width": 1400, "height": 900})
    wrong = view.locator(".tvt[data-i='25']")
    wrong.scroll_into_view_if_needed()
    wrong.hover()
    card = wrong.locator(".tvc")
    expect(card).to_contain_text("The teacher would write 6 (99.9%) instead of 7")
    box = card.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 900 and box["x"] + box["width"] <= 1400
    page.screenshot(path=str(screenshots / "6-playground-card.png"))
    # The red pen: click the wrong 7, the teacher's 6 is preselected, the student re-writes the rest.
    wrong.click()
    expect(page.locator("#pen-position input")).to_have_value("25")
    expect(page.locator("#pen-choice input")).to_have_value(re.compile(r"^6"))
    page.click("#pen-rewrite")
    expect(page.locator("#pen-result")).to_contain_text("token 25 7 → 6")
    expect(page.locator("#pen-result")).to_contain_text("3+2+1=06")
    expect(page.locator("#pen-view")).to_contain_text("after the red pen")
    page.screenshot(path=str(screenshots / "7-red-pen.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(screenshots / "8-playground-phone.png"), full_page=True)


def test_a_queued_run_starts_when_a_place_frees(page, screenshots, lab_home, monkeypatch):
    from playwright.sync_api import expect

    from opd_lab import runs
    from opd_lab.config import RunConfig

    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "1")
    small = dict(steps=4, batch_size=4, eval_every=4, eval_count=8, sample_every=4, checkpoint_every=4)
    first, _ = runs.start_run(RunConfig(**small, name="holder", learning_rate=0.001))
    page.locator("#field-name input").fill("queued")
    for field, value in small.items():
        _set_number(page, field, value)
    page.click("#launch-button")
    expect(page.locator("#launch-message")).to_contain_text("#1 in line")
    run_id = page.locator("#launched-run input, #launched-run textarea").input_value()
    row = page.locator("#runs-table [role=row]", has_text=run_id)
    if runs.status_of(first)["state"] in runs.ACTIVE_STATES:  # the holder may already be done on a fast machine
        expect(row).to_contain_text("waiting", timeout=30_000)
        page.screenshot(path=str(screenshots / "7-queued.png"), full_page=True)
    expect(row).to_contain_text(re.compile(r"running|finished"), timeout=120_000)
    expect(page.locator("#run-log textarea")).to_have_value(re.compile(r"step \d+/4  loss"), timeout=120_000)
    assert runs.status_of(first)["state"] == "finished"


def _train(name: str, method: str):
    """A 2-step run of the tiny lab trained in this process: samples logged at both steps, a checkpoint at 2."""
    from opd_lab import run_folder
    from opd_lab.config import RunConfig
    from opd_lab.train import run_training

    config = RunConfig(name=name, method=method, steps=2, batch_size=4, eval_every=2, eval_count=8, sample_every=1,
                       checkpoint_every=2, samples_to_log=2)
    run_dir = run_folder.create_run(config)
    assert run_training(run_dir, progress=False) == "finished"
    return run_dir.name


def test_inspect_red_pen_and_side_by_side(page, screenshots, lab_home):
    from playwright.sync_api import expect

    opd, sft = _train("pen-opd", "opd"), _train("pen-sft", "sft")  # one seed: the same prompts at each step
    _open_tab(page, "Inspect")
    _pick(page, "inspect-run", opd)
    token = page.locator("#token-view .tvt[data-i='1']")
    expect(token).to_be_visible()
    # The red pen: click a token, the teacher's first choice is preselected, the run's student re-writes the rest.
    token.click()
    expect(page.locator("#inspect-pen-position input")).to_have_value("1")
    expect(page.locator("#inspect-pen-choice input")).not_to_have_value("")
    page.click("#inspect-pen-rewrite")
    result = page.locator("#inspect-pen-result")
    expect(result).to_contain_text("Student: the checkpoint at step 2", timeout=60_000)
    expect(result).to_contain_text("Red pen: token 1")
    expect(page.locator("#inspect-pen-view")).to_contain_text("after the red pen")
    # Side by side: the same prompt in the SFT run at the same step, both panes on one scale.
    _pick(page, "inspect-other-run", sft)
    side = page.locator("#inspect-side-view")
    expect(side.locator(".tvcol")).to_have_count(2)
    expect(side.locator(".tvcol").first).to_contain_text(f"{opd} at step 2")
    expect(side.locator(".tvcol").nth(1)).to_contain_text(f"{sft} at step 2")
    expect(side.locator(".tvcol").nth(1).locator(".tvt").first).to_be_visible()
    page.screenshot(path=str(screenshots / "9-inspect-pen-side.png"), full_page=True)


def test_the_runs_table_shows_state_step_and_accuracy_on_a_phone(page, screenshots, lab_home, app_url):
    from playwright.sync_api import expect

    from opd_lab.paths import runs_dir
    from synthetic_runs import make_run

    from opd_lab.run_folder import update_status

    run_dir = make_run(runs_dir(), "phone-opd-with-a-long-name", method="opd", steps=20)
    # The newest run is the table's first row: with the session's many runs, a synthetic run
    # without a creation time would sort last, below the rows the grid renders.
    update_status(run_dir, created_at=time.time())
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(app_url + "?tab=runs")
    row = page.locator("#runs-table [role=row]", has_text="phone-opd-with-a-long-name")
    expect(row).to_be_visible()
    for column, text in ((3, "finished"), (4, "20/20"), (6, "80.0%")):
        cell = row.locator(f"[data-col='{column}']")
        expect(cell).to_be_visible()
        expect(cell).to_contain_text(text)
        box = cell.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (column, box)
    expect(row.locator("[data-col='7']")).to_be_hidden()  # the message is in the run's summary instead
    page.screenshot(path=str(screenshots / "10-runs-phone.png"), full_page=True)


def test_the_launch_form_starts_a_two_teacher_run_and_inspect_names_each_teacher(page, screenshots, lab_home,
                                                                                 trained_lab_home, tmp_path,
                                                                                 monkeypatch):
    """Several teachers from the browser: a task mix and a teacher per task, typed into the
    Launch form; the Runs summary names each task's teacher and Inspect the sample's. (In a
    data dir of its own: the trained addition lab, whose teacher answers right, and a tiny
    sorting lab; a trained sorting lab takes minutes to build.)"""
    import shutil

    from playwright.sync_api import expect

    from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path / "home"))
    shutil.copytree(trained_lab_home[0] / "lab" / "addition", tmp_path / "home" / "lab" / "addition")
    build_lab(LabRecipe(task="sorting", **TINY_RECIPE), progress_print=lambda *_: None)
    page.locator("#field-name input").fill("browser-experts")
    page.locator("#field-task_weights input").fill("addition=0.5,sorting=0.5")
    page.locator("#field-teachers input").fill("addition=lab:addition,sorting=lab:sorting")
    for field, value in (("steps", 2), ("batch_size", 4), ("eval_every", 2), ("sample_every", 1),
                         ("checkpoint_every", 2), ("eval_count", 8)):
        _set_number(page, field, value)
    expect(page.locator("#form-check")).to_contain_text("Ready", timeout=60_000)
    expect(page.locator("#launch-command")).to_contain_text(
        "--teachers addition=lab:addition,sorting=lab:sorting --task-weights addition=0.5,sorting=0.5")
    page.screenshot(path=str(screenshots / "experts-1-launch.png"), full_page=True)
    page.click("#launch-button")
    expect(page.locator("#launched-run input, #launched-run textarea")).to_have_value(re.compile(r"^browser-experts-"))
    run_id = page.locator("#launched-run input, #launched-run textarea").input_value()
    summary = page.locator("#run-summary")
    expect(summary).to_contain_text("finished", timeout=120_000)
    expect(summary).to_contain_text("addition (teacher lab:addition) + sorting (teacher lab:sorting)")
    page.screenshot(path=str(screenshots / "experts-2-runs.png"), full_page=True)
    _open_tab(page, "Inspect")
    _pick(page, "inspect-run", run_id)
    expect(page.locator("#token-view")).to_contain_text(re.compile(r"judged by teacher lab:(addition|sorting)"))
    page.screenshot(path=str(screenshots / "experts-3-inspect.png"), full_page=True)
