"""Recipes started in the background (the app's Launch tab), and what their folders say.

A background recipe is `python -m opd_lab recipe NAME --setting S --out FOLDER` in its
own session, writing `recipe.log` in its folder; the folder's `recipe.json` says which
stages are done. Its training stages are ordinary runs, listed in the Runs tab while
they train.

Example:
    >>> folder = start_recipe("prune-distill", "cpu")  # doctest: +SKIP
    >>> describe(folder)["state"]  # doctest: +SKIP
    'running'
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from opd_lab import ownership
from opd_lab.paths import child_environment, data_dir
from opd_lab.recipes import STATE_FILE, load_recipe
from opd_lab.files import read_json, write_json_atomic

LOG_FILE = "recipe.log"
PROCESS_FILE = "process.json"


def recipes_dir() -> Path:
    return data_dir() / "recipes"


def start_recipe(name: str, setting: str = "auto") -> Path:
    """Start a recipe in a detached process; returns its folder at once.

    Raises:
        ConfigError: an unknown recipe or setting (checked before anything starts).
    """
    recipe = load_recipe(name, setting)
    folder = recipes_dir() / f"{recipe.name}-{recipe.setting}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    env = child_environment()
    with (folder / LOG_FILE).open("a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "opd_lab", "recipe", str(recipe.path), "--setting", recipe.setting,
             "--out", str(folder)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    write_json_atomic(folder / PROCESS_FILE, {"pid": process.pid,
                                              "started": ownership.process_start_time(process.pid)})
    threading.Thread(target=process.wait, daemon=True).start()  # reap it: no zombie
    return folder


def describe(folder: str | Path) -> dict:
    """A recipe folder at a glance: recipe, setting, finished stages, and its state
    (`running`, `finished`, or `stopped` when its process is gone before the end)."""
    folder = Path(folder)
    data = read_json(folder / STATE_FILE, default={}) or {}
    process = read_json(folder / PROCESS_FILE, default={}) or {}
    if data.get("finished"):
        state = "finished"
    elif ownership.process_alive(process.get("pid"), process.get("started")):
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
