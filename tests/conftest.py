"""Shared fixtures: a private data directory with a tiny built-in lab (seconds to build), and
one with a small *trained* lab (its teacher right on most problems), cached across test runs.

Also one line at the end of a session whose browser tests were skipped, saying how to
enable them (they need Chromium, which only root can install).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lab_home(tmp_path_factory):
    """A data dir holding a tiny addition lab; OPD_LAB_HOME points at it for the session."""
    home = tmp_path_factory.mktemp("opd-lab-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPD_LAB_HOME", str(home))
        from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab

        summary = build_lab(LabRecipe(**TINY_RECIPE), progress_print=lambda *_: None)
        yield home, summary


# Sources whose change makes a cached trained lab stale, with the recipe and torch's version:
# the vocabulary and the task's text format. (Other code changes leave a trained lab a
# trained lab; its accuracies are checked on every use.)
TRAINED_LAB_SOURCES = ("opd_lab/tokenizer.py", "opd_lab/tasks/addition.py")


def trained_lab_cache_root() -> Path:
    """Where built trained labs are kept between test runs: `$OPD_LAB_TEST_CACHE`, else
    `~/.cache/opd-lab-test-labs` (under `$XDG_CACHE_HOME` when set)."""
    if os.environ.get("OPD_LAB_TEST_CACHE"):
        return Path(os.environ["OPD_LAB_TEST_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "opd-lab-test-labs"


def recipe_key(recipe) -> str:
    """A short hash of what the trained lab depends on: its recipe, torch, and the building code."""
    import torch

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True, default=str).encode())
    digest.update(torch.__version__.encode())
    for source in TRAINED_LAB_SOURCES:
        digest.update((root / source).read_bytes())
    return digest.hexdigest()[:16]


def _usable_lab(folder: Path, recipe) -> dict | None:
    """The summary of a complete lab folder built from `recipe`, else None (missing, partial, stale)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("recipe") != json.loads(json.dumps(recipe.to_dict())):
        return None
    for role in ("teacher", "student"):
        if not (folder / role / "config.json").is_file() or not any((folder / role).glob("model.safetensors*")):
            return None
    return summary


def build_or_reuse_trained_lab(cache_root: Path) -> tuple[Path, dict]:
    """The small trained addition lab's folder in `cache_root/<recipe hash>/`, built when missing.

    `build_lab` writes to a staging folder under a lock and swaps it in when complete, so
    a build killed halfway leaves no lab; a folder that is partial or from another recipe
    anyway (an older build, a hand edit) is rebuilt from scratch.
    """
    from opd_lab.lab import SMALL_TRAINED_RECIPE, LabRecipe, build_lab

    recipe = LabRecipe(**SMALL_TRAINED_RECIPE)
    home = cache_root / recipe_key(recipe)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPD_LAB_HOME", str(home))
        folder = home / "lab" / recipe.lab_name
        summary = _usable_lab(folder, recipe)
        if summary is None:
            summary = build_lab(recipe, force=folder.exists(), progress_print=lambda *_: None)
    return folder, summary


@pytest.fixture(scope="session")
def trained_lab_home(tmp_path_factory):
    """A data dir holding a small *trained* addition lab (teacher right on most held-out
    problems, base student far weaker), for every path that depends on real answers.

    The lab is built once per recipe and code version into a shared cache (see
    `build_or_reuse_trained_lab`; about a minute on 2 cores) and copied into this
    session's own data dir, so runs written by tests never touch the cache. Returns
    `(home, summary)`; point OPD_LAB_HOME at `home` (the `trained_lab` fixture does).
    """
    folder, summary = build_or_reuse_trained_lab(trained_lab_cache_root())
    home = tmp_path_factory.mktemp("opd-lab-trained-home")
    shutil.copytree(folder, home / "lab" / folder.name)
    assert summary["teacher"]["accuracy"] >= 0.85, f"the trained lab's teacher is too weak: {summary['teacher']}"
    assert summary["student"]["accuracy"] <= summary["teacher"]["accuracy"] - 0.3, summary["student"]
    return home, summary


@pytest.fixture()
def trained_lab(trained_lab_home, monkeypatch):
    """OPD_LAB_HOME at the trained lab's data dir for one test; returns `(home, summary)`."""
    home, summary = trained_lab_home
    monkeypatch.setenv("OPD_LAB_HOME", str(home))
    return home, summary


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
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPD_LAB_HOME", str(home))
        from opd_lab.models import load_model

        model, _ = load_model("smollm2")
        first_source = model.config._name_or_path
        del model
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


@pytest.fixture()
def home(lab_home, tmp_path, monkeypatch):
    """A data dir of its own (no runs of other tests count against its limit) sharing the
    session's tiny lab; any training process a test left running is killed at the end."""
    import signal

    from opd_lab import run_folder, runs
    from opd_lab.run_folder import load_status

    root = tmp_path / "home"
    root.mkdir()
    (root / "lab").symlink_to(Path(lab_home[0]) / "lab")
    monkeypatch.setenv("OPD_LAB_HOME", str(root))
    monkeypatch.delenv("OPD_LAB_TASKS_DIR", raising=False)
    yield root
    for run_dir in run_folder.run_folders():
        pid = (load_status(run_dir) or {}).get("pid") if (run_dir / "status.json").exists() else None
        if pid and runs.is_active(run_dir):
            os.kill(pid, signal.SIGKILL)
