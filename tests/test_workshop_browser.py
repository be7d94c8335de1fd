"""The red pen in Chromium on the trained lab: a real answer, verified against the prompt's sum.

Drives /usr/bin/chromium through Playwright, as tests/test_app_browser.py does, but on
the small *trained* lab (`trained_lab_home`), whose student writes parseable answers:
the path that crashed with "invalid literal for int()" on the real lab.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_app_browser import CHROMIUM, CHROMIUM_ARGS, _open_tab, _pick, free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium"),
]


@pytest.fixture()
def trained_page(trained_lab):
    playwright_api = pytest.importorskip("playwright.sync_api")
    from opd_lab_app.main import build_app

    demo = build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            # assertions wait as long as actions: a shared 2-core CI machine can take seconds to refresh
            playwright_api.expect.set_options(timeout=30_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#launch-button")
            yield page
            browser.close()
    finally:
        demo.close()


def _disagreement(records: list[dict]) -> int:
    return next(i for i, record in enumerate(records) if record["teacher_top"][0][0] != record["text"])


def test_red_pen_on_the_trained_lab_in_the_playground_and_inspect(trained_page, tmp_path):
    from playwright.sync_api import expect

    from opd_lab_app import playground_tab
    from opd_lab import run_folder
    from opd_lab.config import RunConfig
    from opd_lab.tasks import get_task
    from opd_lab.train import run_training

    page = trained_page
    task = get_task("addition")
    # A held-out prompt on which the base student writes a token the teacher would not.
    problem, records = next((p, r) for p in task.eval_problems(20)
                            for _, _, _, r in [playground_tab.answer("lab:addition", p.prompt, True, 1.0, 0)]
                            if any(t["teacher_top"][0][0] != t["text"] for t in r))
    position = _disagreement(records)
    _open_tab(page, "Playground")
    _pick(page, "playground-model", "base student of the addition lab")
    page.locator("#playground-prompt textarea").fill(problem.prompt)
    page.click("#playground-answer")
    token = page.locator(f"#playground-view .tvt[data-i='{position}']")
    expect(token).to_be_visible()
    token.click()
    page.mouse.move(0, 0)  # no hover now: a tap (phones have no hover) keeps the card open
    expect(token.locator(".tvc")).to_be_visible()
    expect(page.locator("#pen-position input")).to_have_value(str(position))
    expect(page.locator("#pen-choice input")).not_to_have_value("")
    page.click("#pen-rewrite")
    result = page.locator("#pen-result")
    expect(result).to_contain_text(f"Against the true answer {problem.answer}: before, ", timeout=60_000)
    expect(page.locator("#pen-view")).to_contain_text("after the red pen")
    # A new sample on screen clears the pen: no old token, no old verdict.
    page.locator("#playground-prompt textarea").fill(task.eval_problems(30)[-1].prompt)
    page.click("#playground-answer")
    expect(page.locator("#pen-position input")).to_have_value("")
    expect(result).not_to_contain_text("Against the true answer")
    expect(page.locator("#pen-view")).not_to_contain_text("after the red pen")

    # Inspect: a logged sample of an OPD run on the trained lab.
    config = RunConfig(name="browser-pen", steps=2, batch_size=4, eval_every=2, eval_count=8, sample_every=1,
                       checkpoint_every=1, samples_to_log=2)
    run_dir = run_folder.create_run(config)
    assert run_training(run_dir, progress=False) == "finished"
    sample = run_folder.load_samples(run_dir, step=2)[0]
    truth = task.problem_for(sample["prompt"]).answer
    page.reload()
    _open_tab(page, "Inspect")
    _pick(page, "inspect-run", run_dir.name)
    token = page.locator("#token-view .tvt[data-i='1']")
    expect(token).to_be_visible()
    token.click()
    expect(page.locator("#inspect-pen-position input")).to_have_value("1")
    expect(page.locator("#inspect-pen-choice input")).not_to_have_value("")  # the teacher's first choice
    page.click("#inspect-pen-rewrite")
    result = page.locator("#inspect-pen-result")
    expect(result).to_contain_text(f"Against the true answer {truth}", timeout=60_000)
    page.screenshot(path=str(Path(os.environ.get("OPD_LAB_SCREENSHOTS") or tmp_path) / "trained-inspect-pen.png"),
                    full_page=True)
