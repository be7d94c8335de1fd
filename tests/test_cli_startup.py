"""The command line answers at once: listing, stopping, deleting and refusing load no torch.

Each command runs in a fresh interpreter (an import in one test must not hide one in
another) and reports which heavy modules it ended up with.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic_runs import make_run

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "gradio")
PROBE = """
import contextlib, io, json, sys
from opd_lab_app.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                  "heavy": [name for name in %r if name in sys.modules]}))
""" % (HEAVY,)


def _opd_lab(home: Path, *args: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OPD_LAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture()
def home_with_runs(tmp_path):
    for index in range(3):
        make_run(tmp_path / "runs", f"opd-demo-{index}", steps=10)
    return tmp_path


def test_runs_lists_runs_without_importing_torch(home_with_runs):
    result = _opd_lab(home_with_runs, "runs")
    assert result["code"] == 0
    assert "opd-demo-0" in result["stdout"] and "opd-demo-2" in result["stdout"]
    assert result["heavy"] == []


@pytest.mark.parametrize("args, code, says", [
    (["--help"], 0, "export"),
    (["stop", "opd-demo-1"], 0, "not running"),
    (["delete", "no-such-run"], 2, "no run named"),
    (["resume", "--foreground", "no-such-run"], 2, "no run named"),
    (["train", "--steps", "0"], 2, "steps: must be at least 1"),
    (["train", "--report-to", "comet"], 2, "unknown tracker"),
    (["eval", "lab-teacher", "--count", "0"], 2, "--count"),
    (["compare", "--scenario", "nope"], 2, "invalid choice"),
    (["app", "--port", "70000"], 2, "--port"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_help_and_refusals_import_no_torch(home_with_runs, args, code, says):
    result = _opd_lab(home_with_runs, *args)
    assert result["code"] == code
    assert says in result["stdout"] + result["stderr"]
    assert result["heavy"] == []


def test_delete_removes_a_stopped_run_without_importing_torch(home_with_runs):
    result = _opd_lab(home_with_runs, "delete", "opd-demo-1")
    assert result["code"] == 0 and "deleted opd-demo-1" in result["stdout"]
    assert not (home_with_runs / "runs" / "opd-demo-1").exists()
    assert (home_with_runs / "runs" / "opd-demo-0").exists()
    assert result["heavy"] == []


def test_compare_defaults_to_the_baseline_scenario():
    from opd_lab_app.cli import APP_COMMAND
    from opd_lab.cli import build_parser

    args = build_parser([APP_COMMAND]).parse_args(["compare", "--quick"])
    assert args.scenario == "baseline" and args.quick


def test_silencing_hides_the_bars_of_transformers(tmp_path, capsys, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    from opd_lab.quiet import QUIET_ENVIRONMENT, silence_third_party

    for name in QUIET_ENVIRONMENT:  # restored after the test
        monkeypatch.setenv(name, "")
    verbosity = logging.get_verbosity()
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)

    def save_and_load(folder):
        LlamaForCausalLM(config).save_pretrained(folder)
        LlamaForCausalLM.from_pretrained(folder)
        return capsys.readouterr().err

    logging.enable_progress_bar()
    try:
        loud = save_and_load(tmp_path / "loud")
        silence_third_party()
        quiet = save_and_load(tmp_path / "quiet")
    finally:
        logging.enable_progress_bar()
        logging.set_verbosity(verbosity)
    assert "Writing model shards" in loud and "Loading weights" in loud
    assert "Writing model shards" not in quiet and "Loading weights" not in quiet
