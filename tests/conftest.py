"""Shared fixtures: a private data directory with a tiny built-in lab (seconds to build).

Also one line at the end of a session whose browser tests were skipped, saying how to
enable them (they need Chromium, which only root can install).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def lab_home(tmp_path_factory):
    """A data dir holding a tiny addition lab; OPD_LAB_HOME points at it for the session."""
    home = tmp_path_factory.mktemp("opd-lab-home")
    previous = os.environ.get("OPD_LAB_HOME")
    os.environ["OPD_LAB_HOME"] = str(home)
    from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab

    summary = build_lab(LabRecipe(**TINY_RECIPE), progress_print=lambda *_: None)
    yield home, summary
    if previous is None:
        os.environ.pop("OPD_LAB_HOME", None)
    else:
        os.environ["OPD_LAB_HOME"] = previous


@pytest.fixture()
def lab_pair(lab_home):
    """(teacher, student, tokenizer) of the tiny lab."""
    from opd_lab.models import load_pair

    return load_pair("lab", "lab", task="addition")


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory):
    """A data dir whose model cache holds SmolLM2, de-quantized once per test session.

    Returns `(home, source_of_first_load)`; tests point OPD_LAB_HOME at `home` with monkeypatch.
    """
    home = tmp_path_factory.mktemp("smollm2-home")
    previous = os.environ.get("OPD_LAB_HOME")
    os.environ["OPD_LAB_HOME"] = str(home)
    try:
        from opd_lab.models import load_model

        model, _ = load_model("smollm2")
        first_source = model.config._name_or_path
        del model
    finally:
        if previous is None:
            os.environ.pop("OPD_LAB_HOME", None)
        else:
            os.environ["OPD_LAB_HOME"] = previous
    return home, first_source


@pytest.fixture()
def smollm2_cached(smollm2_home, monkeypatch):
    """OPD_LAB_HOME at the session's data dir with SmolLM2 cached, and the hub offline."""
    home, _ = smollm2_home
    monkeypatch.setenv("OPD_LAB_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


SLOW_FIXTURES = ("smollm2_home", "smollm2_cached")  # a real 135M model: tens of seconds per test


def pytest_collection_modifyitems(items):
    """Every test that loads SmolLM2, drives a browser or soaks is in the slow tier too
    (`pytest -m "not slow"` is the fast one; README, "Tests")."""
    for item in items:
        if (item.get_closest_marker("browser") or item.get_closest_marker("soak")
                or set(SLOW_FIXTURES) & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)


BROWSER_SKIP_LINE = ("{count} browser tests skipped: they drive Chromium at /usr/bin/chromium; enable them with "
                     "`sudo apt-get install -y chromium chromium-driver` (or set OPD_LAB_CHROMIUM to a Chromium binary)")


def pytest_terminal_summary(terminalreporter):
    """Name the skipped browser tests once, with the command that enables them."""
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if "browser" in report.keywords]
    if skipped:
        terminalreporter.write_line(BROWSER_SKIP_LINE.format(count=len(skipped)))
