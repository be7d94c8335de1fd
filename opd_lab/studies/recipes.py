"""Recipes on real language models: a config file and one command each.

    opd-lab recipe continual-learning            # the setting for this machine (cpu or gpu)
    opd-lab recipe prune-distill --setting gpu
    opd-lab recipe my-recipe.yaml --quick        # tiny settings: a smoke test in about a minute

A recipe file (YAML) names the recipe and gives one block of settings per machine
(`cpu`, `gpu`, and `quick` for tests). Each stage that trains is an ordinary run
(`RunConfig` fields), so its folder opens in the app's Runs, Compare and Inspect tabs
like any lab run. The recipe's own folder (`<data dir>/recipes/<name>-<setting>-<time>/`) is a study
folder (`opd_lab.studies.stages`): `study.json`, written after every stage, and
`study.md`, the table of results.
Rerunning with `--out FOLDER` skips the stages that folder already finished, so an
interrupted recipe loses at most its current stage.

The recipes (shipped in this folder):

- `continual-learning`: fine-tune SmolLM2-135M-Instruct on a fictional company's
  documents, measure what it forgets of instruction following, and recover it by OPD
  with the original model as teacher (`opd_lab.studies.continual`, which also holds
  its lab setting);
- `prune-distill`: drop a block of layers, then recover by OPD from the full model,
  against SFT on the teacher's answers and RL on the checks (`opd_lab.studies.prune_distill`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from opd_lab.config import ConfigError, RunConfig
from opd_lab.paths import data_dir
from opd_lab.studies.stages import StudyState

RECIPE_DIR = Path(__file__).parent
RECIPES = ("continual-learning", "prune-distill")
SETTINGS = ("auto", "cpu", "gpu", "quick")


@dataclass(frozen=True)
class Recipe:
    """A recipe file: its name, what it shows, and the settings chosen for this machine."""

    name: str
    setting: str
    values: dict
    path: Path
    description: str = ""

    def stage(self, key: str, **fixed) -> RunConfig:
        """The `RunConfig` of the training stage `key`: the file's fields for it, then `fixed`.

        Raises:
            ConfigError: the stage is missing, or has a field RunConfig does not know.
        """
        fields = self.values.get(key)
        if not isinstance(fields, dict):
            raise ConfigError(f"{self.path}: setting {self.setting!r} has no stage {key!r}")
        try:
            return RunConfig.from_dict({**fields, **fixed})
        except ConfigError as error:
            raise ConfigError(f"{self.path}, {self.setting}.{key}: {error}") from None

    def number(self, key: str, default=None):
        """A plain value of the setting (an evaluation count, a share...)."""
        value = self.values.get(key, default)
        if value is None:
            raise ConfigError(f"{self.path}: setting {self.setting!r} needs {key!r}")
        return value


def recipe_path(name_or_path: str) -> Path:
    """The file of a shipped recipe name, or the path given.

    Raises:
        ConfigError: neither a shipped recipe nor an existing file.
    """
    if name_or_path in RECIPES:
        return RECIPE_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    raise ConfigError(f"unknown recipe {name_or_path!r}: use one of {', '.join(RECIPES)} or a recipe file")


def load_recipe(name_or_path: str, setting: str = "auto") -> Recipe:
    """Read a recipe file and pick its settings (`auto`: `gpu` with CUDA, else `cpu`).

    Raises:
        ConfigError: a bad file, an unknown recipe, or a setting the file lacks.
    """
    path = recipe_path(name_or_path)
    if setting not in SETTINGS:
        raise ConfigError(f"setting: must be one of {', '.join(SETTINGS)} (got {setting!r})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a valid YAML recipe ({type(error).__name__})") from None
    if not isinstance(data, dict) or data.get("recipe") not in RECIPES or not isinstance(data.get("settings"), dict):
        raise ConfigError(f"{path}: a recipe file needs 'recipe' (one of {', '.join(RECIPES)}) and 'settings'")
    if setting == "auto":
        import torch

        setting = "gpu" if torch.cuda.is_available() else "cpu"
    values = data["settings"].get(setting)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: no {setting!r} settings (has {', '.join(data['settings'])})")
    return Recipe(name=data["recipe"], setting=setting, values=values, path=path,
                  description=str(data.get("description", "")).strip())


def recipes_dir() -> Path:
    """Where recipe folders go by default: `<data dir>/recipes/`."""
    return data_dir() / "recipes"


def new_recipe_folder(recipe: Recipe) -> Path:
    """A fresh folder for `recipe`: `<data dir>/recipes/<name>-<setting>-<time>`."""
    return recipes_dir() / f"{recipe.name}-{recipe.setting}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_recipe(recipe: Recipe, out: str | Path | None = None) -> StudyState:
    """The recipe's study folder `out` (to go on with it) or a new one.

    Raises:
        ConfigError: `out` holds another recipe or setting.
    """
    return StudyState.open(out if out is not None else new_recipe_folder(recipe), study=recipe.name,
                           setting=recipe.setting, recipe=recipe.name, file=str(recipe.path),
                           settings=recipe.values)


def run_recipe(name_or_path: str, setting: str = "auto", out: str | Path | None = None,
               progress_print=print) -> Path:
    """Run a recipe end to end (or finish one in `out`); returns its folder."""
    from opd_lab.studies import study

    recipe = load_recipe(name_or_path, setting)
    state = open_recipe(recipe, out)
    progress_print(f"recipe {recipe.name} ({recipe.setting}) in {state.folder}")
    study(recipe.name).load()(recipe, state, progress_print)
    return state.folder
