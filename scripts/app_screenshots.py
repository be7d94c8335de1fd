"""Screenshots of every tab of the app, at 1400x900 and at phone width (390x844).

Builds (or reuses) the real addition lab (`opd-lab lab build`: a trained teacher, so the
red pen's verdict and the accuracies are real) and two finished 12-step runs (OPD and
SFT, one seed, so Inspect's side by side has the same prompts), serves the app,
and drives Debian's Chromium (/usr/bin/chromium) with Playwright. Desktop shots are
one screen; phone shots are the whole page. PNGs are reduced to 128 colours.

Run (about a minute on 2 cores once the lab is built):
    OMP_NUM_THREADS=1 OPD_LAB_HOME=/tmp/opd-lab-shots python scripts/app_screenshots.py docs/screenshots
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from opd_lab_app.main import build_app
from opd_lab_app.state import run_ids
from opd_lab import run_folder
from opd_lab.config import RunConfig
from opd_lab.lab import LabRecipe, build_lab
from opd_lab.train import run_training
from tests.test_app_browser import CHROMIUM, CHROMIUM_ARGS, free_port

SIZES = {"desktop": (1400, 900), "phone": (390, 844)}
TABS = ("launch", "runs", "compare", "inspect", "playground")
SCROLL_TO = {"compare": "#compare-runs", "inspect": "#inspect-run"}  # desktop: the part worth a screen


def prepare() -> tuple[str, str]:
    """The real lab and an OPD and an SFT run, unless they exist: `(opd run id, sft run id)`."""
    build_lab(LabRecipe.for_task("addition"), progress_print=lambda *_: None)
    for method in ("opd", "sft"):
        if not any(run.startswith(f"shots-{method}-") for run in run_ids()):
            config = RunConfig(name=f"shots-{method}", method=method, steps=12, batch_size=4, eval_every=4,
                               eval_count=64, sample_every=4, checkpoint_every=4)
            run_training(run_folder.create_run(config), progress=False)
    from opd_lab_app.state import forget_runs_list

    forget_runs_list()
    ids = run_ids()
    return next(r for r in ids if r.startswith("shots-opd-")), next(r for r in ids if r.startswith("shots-sft-"))


def _pick(page, dropdown: str, option: str) -> None:
    box = page.locator(f"#{dropdown} input")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option).first.click()


def show(page, tab: str, opd: str, sft: str) -> None:
    """Put the tab in a state worth showing."""
    if tab == "compare":
        for run in (opd, sft):
            _pick(page, "compare-runs", run)
        page.keyboard.press("Escape")
        page.locator("#compare-plot .js-plotly-plot").first.wait_for()
    elif tab == "inspect":
        _pick(page, "inspect-run", opd)
        page.locator("#token-view .tvt[data-i='2']").click()
        page.click("#inspect-pen-rewrite")
        page.locator("#inspect-pen-view .tvcol").first.wait_for()
        _pick(page, "inspect-other-run", sft)
        page.locator("#inspect-side-view .tvcol").first.wait_for()
    elif tab == "playground":
        page.click("#playground-answer")
        page.locator("#playground-view .tvt").first.wait_for()
    page.wait_for_timeout(1500)  # charts finish drawing


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    opd, sft = prepare()
    demo = build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for size_name, (width, height) in SIZES.items():
                page = browser.new_page(viewport={"width": width, "height": height})
                page.set_default_timeout(60_000)
                for tab in TABS:
                    page.goto(f"http://127.0.0.1:{port}/?tab={tab}" + (f"&run={opd}" if tab == "runs" else ""))
                    page.wait_for_selector(f"[role=tab][data-tab-id={tab}][aria-selected=true]", state="attached")
                    show(page, tab, opd, sft)
                    if size_name == "desktop" and tab in SCROLL_TO:
                        page.locator(SCROLL_TO[tab]).evaluate("element => element.scrollIntoView()")
                    path = out / f"{tab}-{size_name}.png"
                    page.screenshot(path=str(path), full_page=size_name == "phone")
                    Image.open(path).convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE,
                                                             dither=Image.Dither.NONE).save(path, optimize=True)
                    print(path)
                page.close()
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
