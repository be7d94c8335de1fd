"""Studies started in the background from the app, and what their folders say.

Both go through `opd_lab.launcher` (the detached `python -m opd_lab ...`, its log, its
pid and start time, so a finished study never reads as running because its pid was
reused or is an unreaped zombie):

- a **recipe** (the Launch tab) is `python -m opd_lab recipe NAME --setting S --out
  FOLDER`, writing `recipe.log` in its folder; the folder's `study.json` says which
  stages are done. Its training stages are ordinary runs, listed in the Runs tab;
- a **comparison** (the Compare tab) is `python -m opd_lab compare --scenario NAME`,
  one at a time, writing `compare-log.txt` in the reports folder.

Example:
    >>> folder = start_recipe("prune-distill", "cpu")  # doctest: +SKIP
    >>> describe(folder)["state"]  # doctest: +SKIP
    'running'
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from opd_lab import launcher
from opd_lab.files import read_json
from opd_lab.run_folder import RunError
from opd_lab.studies.comparison import CompareSettings
from opd_lab.studies.comparison_report import reports_dir
from opd_lab.studies.recipes import load_recipe, new_recipe_folder, recipes_dir
from opd_lab.studies.stages import STATE_FILE

LOG_FILE = "recipe.log"
PROCESS_FILE = "process.json"
COMPARE_LOG = "compare-log.txt"
COMPARE_PROCESS_FILE = ".compare.json"  # the comparison started from the app: its process and who asked


def start_recipe(name: str, setting: str = "auto") -> Path:
    """Start a recipe in a detached process; returns its folder at once.

    Raises:
        ConfigError: an unknown recipe or setting (checked before anything starts).
    """
    recipe = load_recipe(name, setting)
    folder = new_recipe_folder(recipe)
    folder.mkdir(parents=True, exist_ok=False)
    started, _ = launcher.start(["recipe", str(recipe.path), "--setting", recipe.setting, "--out", str(folder)],
                                log=folder / LOG_FILE)
    launcher.record(folder / PROCESS_FILE, started)
    return folder


def describe(folder: str | Path) -> dict:
    """A recipe folder at a glance: recipe, setting, finished stages, and its state
    (`running`, `finished`, or `stopped` when its process is gone before the end)."""
    folder = Path(folder)
    data = read_json(folder / STATE_FILE, default={}) or {}
    process = launcher.recorded(folder / PROCESS_FILE)
    if data.get("finished"):
        state = "finished"
    elif process is not None and process.alive():
        state = "running"
    else:
        state = "stopped"
    log = (folder / LOG_FILE).read_text(errors="replace").strip().splitlines() if (folder / LOG_FILE).exists() else []
    return {"folder": folder.name, "recipe": data.get("recipe", ""), "setting": data.get("setting", ""),
            "stages": list(data.get("stages", {})), "state": state,
            "last_line": log[-1][-200:] if log else ""}


def recipe_folders() -> list[Path]:
    """Recipe folders under the data dir, newest first."""
    root = recipes_dir()
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)


def running_compare() -> dict | None:
    """The comparison started by `start_compare` while its process runs: its record
    (pid, start time, user, scenario, log), else None. A finished one reads as finished
    even while its pid is an unreaped zombie or belongs to another process now."""
    path = reports_dir() / COMPARE_PROCESS_FILE
    process = launcher.recorded(path)
    if process is None or not process.alive():
        return None
    return read_json(path, default=None)


def compare_running() -> bool:
    """Whether a comparison started by `start_compare` is still running."""
    return running_compare() is not None


def start_compare(scenario: str, quick: bool = False, seeds: int = 3, user: str | None = None) -> Path:
    """Start `opd-lab compare` as a detached background process (`opd_lab.launcher`); returns its log.

    One at a time: a comparison trains two runs side by side. Its runs go through the
    run limit and the queue like any run, recorded as launched by `user`.

    Raises:
        RunError: a comparison is already running.
    """
    CompareSettings(scenario=scenario, seeds=seeds, quick=quick)  # validates before starting anything
    if compare_running():
        raise RunError("a comparison is already running; wait for its report")
    log = reports_dir() / COMPARE_LOG
    log.write_text("")
    process, _ = launcher.start(["compare", "--scenario", scenario, "--seeds", str(seeds),
                                 *(["--quick"] if quick else []), *(["--launched-by", user] if user else [])], log=log)
    launcher.record(reports_dir() / COMPARE_PROCESS_FILE, process, user=user, scenario=scenario, quick=quick,
                    at=time.time())
    return log


def stop_compare() -> str:
    """Ask the running comparison to stop (SIGTERM: its runs stop with a checkpoint and
    it writes the report of what finished); a message."""
    process = launcher.recorded(reports_dir() / COMPARE_PROCESS_FILE)
    if process is None or not process.signal(signal.SIGTERM):
        return "no comparison is running"
    return "stop requested: the comparison stops its runs with a checkpoint and reports what finished"
