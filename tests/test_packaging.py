"""The installed package: a wheel built from this checkout, installed (not editable) in a
fresh virtualenv and run from outside the repository, serves the app with the measured
reports listed in the Compare tab (they are package data, not files of the checkout)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _source_files() -> list[str]:
    """The checkout's files as git sees them (tracked and new, without ignored build outputs)."""
    found = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip("not a git checkout: cannot tell source files from build outputs")
    return [name for name in found.stdout.splitlines() if (REPO / name).is_file()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`(python, bin folder, environment)` of a virtualenv holding the wheel built from this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in _source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((root / "dist").glob("opd_lab-*.whl"))
    # The system's torch, gradio... are reused (--system-site-packages); opd_lab itself comes from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], check=True)
    bin_dir = root / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(OPD_LAB_HOME=str(root / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return bin_dir / "python", bin_dir, env, root


def test_the_wheel_ships_the_measured_results(installed):
    python, _, env, root = installed
    code = ("import opd_lab, opd_lab_app, json; from opd_lab_app.report_panel import report_names, show_report; "
            "from opd_lab.studies.recipes import RECIPES, load_recipe; "
            "names = report_names(); text, figure, table = show_report('measured: baseline'); "
            "recipes = [str(load_recipe(name, 'cpu').path) for name in RECIPES]; "
            "print(json.dumps({'file': opd_lab.__file__, 'app': opd_lab_app.__file__, 'names': names, 'text': text, "
            "'rows': len(table), 'recipes': recipes}))")
    found = subprocess.run([str(python), "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-3000:]
    data = json.loads(found.stdout.strip().splitlines()[-1])
    for module in (data["file"], data["app"], *data["recipes"]):  # the installed copies, not a checkout's
        assert module.startswith(str(root / "venv")), module
    assert {"measured: baseline", "measured: weak-teacher", "measured: no-foundation"} <= set(data["names"])
    assert data["text"].startswith("### Verdict") and data["rows"] > 0
    assert len(data["recipes"]) == 2  # the recipe files are package data of opd_lab.studies


def test_the_installed_app_serves_the_measured_reports(installed):
    _, bin_dir, env, root = installed
    port = _free_port()
    server = subprocess.Popen([str(bin_dir / "opd-lab"), "app", "--no-build", "--port", str(port)], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def config() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return ""

    try:
        assert wait_for(lambda: config() or server.poll() is not None, timeout=240, interval=1)
        assert server.poll() is None, server.stdout.read()[-3000:]
        assert "measured: baseline" in config()
    finally:
        server.terminate()
        server.wait(timeout=30)
