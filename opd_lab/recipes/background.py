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

import time
from pathlib import Path

from opd_lab import launcher
from opd_lab.paths import data_dir
from opd_lab.recipes import STATE_FILE, load_recipe
from opd_lab.files import read_json

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
