"""Every multi-run study, in one shape: settings, named stages, one folder, resume by stage.

A study runs several trainings and measurements towards one question and writes one
folder (`stages.StudyState`): its settings (a dataclass, or a recipe file's block),
then each named stage's result in `study.json` as the stage ends. Rerunning a study on
its folder skips the finished stages, so a killed study loses at most the stage it was
in. The studies, by name (`STUDIES`, the one place the CLI and the app look them up):

    compare             opd-lab compare --scenario NAME          RL, SFT and OPD from the base student (`comparison`)
    handoff             opd-lab compare --protocol handoff       SFT to a plateau, then hand off (`handoff`)
    two-experts         opd-lab compare --scenario two-experts   several teachers, one student (`two_experts`)
    continual-learning  opd-lab recipe continual-learning        learn, forget, recover; lab and SmolLM2 (`continual`)
    prune-distill       opd-lab recipe prune-distill             drop layers, recover by OPD (`prune_distill`)

Beside them: `arms` (a `RunConfig` per method), `scenarios` (the lab's seed conditions
and the claims each tests), `claims` (which claims hold, from the measured results),
`recipes` (recipe files), `scoring` (what a recipe measures), `background` (studies
started from the app).

This module imports nothing heavy: a study's module is imported when it is used.

Example:
    >>> study("prune-distill").module
    'opd_lab.studies.prune_distill'
    >>> run = study("compare").load()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Study:
    """A study by name: its module, the function that runs it, and its settings."""

    name: str
    module: str
    """The module, e.g. `opd_lab.studies.comparison`."""
    function: str
    """The function that runs it: `(settings, out=None, ...)` for the lab studies,
    `(recipe, state, progress_print)` for a recipe's stages."""
    settings: str | None
    """The settings dataclass in `module`; None for a recipe (its settings are a recipe file)."""
    command: str
    """The command line that runs it."""

    def load(self):
        """The function that runs the study (imports its module)."""
        return getattr(importlib.import_module(self.module), self.function)

    def settings_class(self):
        """The study's settings dataclass (imports its module).

        Raises:
            TypeError: a recipe, whose settings are a recipe file (`studies.recipes.load_recipe`).
        """
        if self.settings is None:
            raise TypeError(f"{self.name} is a recipe: its settings are a recipe file")
        return getattr(importlib.import_module(self.module), self.settings)


STUDIES = {study.name: study for study in (
    Study("compare", "opd_lab.studies.comparison", "run_compare", "CompareSettings",
          "opd-lab compare --scenario NAME"),
    Study("handoff", "opd_lab.studies.handoff", "run_handoff", "HandoffSettings", "opd-lab compare --protocol handoff"),
    Study("two-experts", "opd_lab.studies.two_experts", "run_two_experts", "TwoExpertsSettings",
          "opd-lab compare --scenario two-experts"),
    Study("continual-learning", "opd_lab.studies.continual", "run_recipe_stages", None,
          "opd-lab recipe continual-learning"),
    Study("prune-distill", "opd_lab.studies.prune_distill", "run", None, "opd-lab recipe prune-distill"),
)}


def study(name: str) -> Study:
    """The study called `name`.

    Raises:
        KeyError: no study has that name.
    """
    if name not in STUDIES:
        raise KeyError(f"no study {name!r}: one of {', '.join(STUDIES)}")
    return STUDIES[name]


def compare_study(scenario: str, protocol: str = "from-base") -> Study:
    """The study `opd-lab compare` runs for a scenario and protocol."""
    if scenario == "two-experts":  # several teachers: its own study
        return study("two-experts")
    return study("handoff" if protocol == "handoff" else "compare")
