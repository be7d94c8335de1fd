"""A study's folder and its named stages: what every multi-run study shares.

A study (a comparison, a recipe, continual learning, ...) runs in one folder. The
folder's `study.json` names the study and its setting, holds the settings used, and
records each stage's result when the stage ends. Rerunning the study on the same folder
skips every stage already recorded, so an interrupted study loses at most the stage it
was in; a stage made of many runs (a sweep) can record each finished run as it goes
(`StudyState.record_part`), so its rerun trains only the runs still missing.

Example:
    >>> state = StudyState.open(tmp_path, study="comparison", setting="baseline")  # doctest: +SKIP
    >>> state.run_stage("lab", lambda: {"teacher": 0.93})  # doctest: +SKIP
    {'teacher': 0.93, 'seconds': 12.0}
    >>> StudyState.open(tmp_path, study="comparison", setting="baseline").done("lab")  # doctest: +SKIP
    {'teacher': 0.93, 'seconds': 12.0}
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from opd_lab.config import ConfigError
from opd_lab.files import read_json, write_json_atomic, write_text_atomic

STATE_FILE = "study.json"
RESULTS_FILE = "study.md"


@dataclass
class StudyState:
    """What a study has done so far in its folder, saved after every stage (`study.json`).

    `data` holds `study` and `setting` (which study this folder belongs to), whatever the
    study recorded with them (`settings`, ...), `stages` (stage name -> its result),
    `parts` (stage name -> {part key -> result} for stages recorded piece by piece),
    `started`, `seconds` (spent by every pass on the folder, as of the last save) and,
    once done, `finished`.
    """

    folder: Path
    data: dict = field(default_factory=dict)
    opened: float = field(default_factory=time.time)
    """When this pass on the folder began."""
    earlier_seconds: float = 0.0
    """The time the earlier passes on this folder spent (as of their last save)."""

    @classmethod
    def open(cls, folder: str | Path, study: str, setting: str, settings: dict | None = None,
             free: tuple[str, ...] = (), **recorded) -> "StudyState":
        """The state in `folder` (created if new): a study goes on where it stopped.

        Args:
            settings: what the study runs with, recorded; a folder made with other
                settings is refused (its finished stages would not be this study's),
                except for the keys in `free`, which change no result (e.g. `workers`).
            recorded: more to record beside the settings (a file's path, ...).

        Raises:
            ConfigError: the folder holds another study or setting, or other settings.
        """
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        data = read_json(folder / STATE_FILE) or {}
        if data and (data.get("study"), data.get("setting")) != (study, setting):
            raise ConfigError(f"{folder} holds the study {data.get('study')!r} ({data.get('setting')}), "
                              f"not {study!r} ({setting}): pick another folder")
        if settings is not None:
            settings = json.loads(json.dumps(settings))  # as study.json holds them (tuples are lists)
            found = data.get("settings")
            if found is not None and _without(found, free) != _without(settings, free):
                raise ConfigError(f"{folder} holds this study with other settings ({found}): pick another folder")
            data["settings"] = settings
        data.update(study=study, setting=setting, **recorded)
        data.setdefault("stages", {})
        data.setdefault("parts", {})
        data.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
        data.setdefault("seconds", 0.0)
        state = cls(folder, data, earlier_seconds=data["seconds"])
        state.save()
        return state

    def elapsed(self) -> float:
        """Seconds spent on this study by every pass on its folder, this one included."""
        return self.earlier_seconds + time.time() - self.opened

    def done(self, stage: str) -> dict | None:
        """The saved result of `stage`, or None when it has not finished."""
        return self.data["stages"].get(stage)

    def record(self, stage: str, result: dict) -> dict:
        self.data["stages"][stage] = result
        self.save()
        return result

    def parts(self, stage: str) -> dict:
        """The parts of `stage` finished so far (key -> result), e.g. its finished runs."""
        return dict(self.data["parts"].get(stage, {}))

    def record_part(self, stage: str, key: str, result) -> None:
        """Save one finished part of `stage` at once (a run of a sweep), before the stage ends."""
        self.data["parts"].setdefault(stage, {})[key] = result
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(self.elapsed(), 1)
        write_json_atomic(self.folder / STATE_FILE, self.data)

    def run_stage(self, name: str, work, progress_print=print) -> dict:
        """The result of stage `name`: `work()`'s dict, timed and saved, unless this
        folder already finished that stage (then its saved result, and `work` is not called)."""
        found = self.done(name)
        if found is not None:
            progress_print(f"stage {name}: already done in {self.folder.name}")
            return found
        progress_print(f"stage {name} ...")
        started = time.time()
        result = work()
        result["seconds"] = round(time.time() - started, 1)
        return self.record(name, result)

    def finish(self, markdown: str | None = None, progress_print=print) -> Path:
        """Mark the study finished and write its table of results (`study.md`) when given
        (a comparison writes its own `report.md`); returns the results' path."""
        self.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.save()
        path = self.folder / RESULTS_FILE
        if markdown is not None:
            write_text_atomic(path, markdown)
            progress_print(f"results: {path}")
        return path


def _without(settings: dict, keys: tuple[str, ...]) -> dict:
    return {key: value for key, value in settings.items() if key not in keys}
