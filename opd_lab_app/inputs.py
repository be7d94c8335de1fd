"""What a browser may name as a run's task and models: choices, never server paths.

Anyone logged in to the app (an attendee) launches runs, so the Launch form must not
become a way to read the server's files: a task or model field that took any path
would train on (and show in Inspect) whatever file the server can read, and its
answers ("not found", "not a task", "cannot load") would map the server's folders.
So in the app:

- a **task** is a built-in task, or a `.jsonl` file directly in the tasks folder the
  instructor chose (`<data dir>/tasks/`, or `opd-lab app --tasks-dir`), named by its
  file name;
- a **model** is a built lab (`lab`, `lab:NAME`), `smollm2`, or a checkpoint of a run
  (`run:RUN_ID/step_000050`, as in the Playground);
- anything else is refused with one answer that does not depend on whether such a file
  exists. Paths and hub ids stay on the command line (`opd-lab launch`).

The browser's names are turned into the server's paths here, after the check, and the
messages the app shows go through `hide_paths` so no server path reaches an attendee.

Example:
    >>> refusal_of("task", "/etc/passwd.jsonl") == refusal_of("task", "/no/such/file.jsonl")
    True
    >>> browser_fields({"task": "addition", "teacher": "lab", "steps": 5})["steps"]
    5
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from opd_lab.checkpoints import checkpoint_dirs
from opd_lab.config import ConfigError
from opd_lab.lab import built_lab_names
from opd_lab.paths import data_dir
from opd_lab.run_folder import RunError, run_path
from opd_lab.tasks import BUILTIN_TASKS

TASKS_DIR_VAR = "OPD_LAB_TASKS_DIR"  # set by `opd-lab app --tasks-dir`
RUN_PREFIX = "run:"
NAMED_MODELS = ("lab", "smollm2")


def tasks_dir() -> Path:
    """The folder whose `.jsonl` files the app offers as tasks (it need not exist)."""
    chosen = os.environ.get(TASKS_DIR_VAR)
    return Path(chosen).expanduser().resolve() if chosen else data_dir() / "tasks"


def task_files() -> dict[str, Path]:
    """{file name: path} of the task files in the tasks folder (not its sub-folders)."""
    folder = tasks_dir()
    if not folder.is_dir():
        return {}
    return {path.name: path for path in sorted(folder.glob("*.jsonl")) if path.is_file()}


def task_choices() -> list[str]:
    """Every task the app may launch: the built-in ones, then the tasks folder's files."""
    return [*BUILTIN_TASKS, *task_files()]


def model_choices() -> list[str]:
    """Every model the app may launch: the named ones, the built labs, the runs' checkpoints."""
    choices = [*NAMED_MODELS, *(f"lab:{name}" for name in built_lab_names())]
    runs_root = data_dir() / "runs"
    if runs_root.is_dir():
        for folder in sorted(runs_root.iterdir()):
            choices += [f"{RUN_PREFIX}{folder.name}/{checkpoint.name}" for checkpoint in checkpoint_dirs(folder)]
    return choices


def refusal_of(field: str, value: str) -> str:
    """The one answer to any value that is not a choice (the same for every such value)."""
    kind = "tasks" if field == "task" else "models"
    return (f"{field}: choose one of the {kind} listed in the app; it opens no other file "
            "(a path or a hub id works only from a terminal, with `opd-lab launch`)")


def resolve_task(value: str) -> str:
    """The task a run of the app uses for the browser's `value`.

    Raises:
        ConfigError: `value` is not one of `task_choices()`.
    """
    if value in BUILTIN_TASKS:
        return value
    files = task_files()
    if isinstance(value, str) and value in files:
        return str(files[value])
    raise ConfigError(refusal_of("task", value))


def resolve_model(field: str, value: str) -> str:
    """The model spec a run of the app uses for the browser's `value` (a teacher or student).

    Raises:
        ConfigError: `value` is not a built lab, `smollm2` or a run's checkpoint.
    """
    if value in NAMED_MODELS:
        return value
    if isinstance(value, str) and value.startswith("lab:") and value[len("lab:"):] in built_lab_names():
        return value
    if isinstance(value, str) and value.startswith(RUN_PREFIX):
        run_id, _, name = value[len(RUN_PREFIX):].partition("/")
        try:
            for checkpoint in checkpoint_dirs(run_path(run_id)):
                if checkpoint.name == name:
                    return str(checkpoint)
        except RunError:
            pass
    raise ConfigError(refusal_of(field, value))


CHOSEN = {"task": resolve_task, "teacher": lambda value: resolve_model("teacher", value),
          "student": lambda value: resolve_model("student", value)}


def browser_fields(data: dict) -> dict:
    """A form's config fields with its task and models checked as the browser's choices
    and turned into the server's names for them, before any of them is opened (a
    `RunConfig` checks that a task file exists: the answer must not depend on that).

    Raises:
        ConfigError: a task or model that is not a choice (`refusal_of`).
    """
    return {**data, **{name: CHOSEN[name](data[name]) for name in CHOSEN if name in data}}


def hide_paths(text: str) -> str:
    """`text` with the server's folders replaced by words: the tasks folder, the data
    folder, this machine's home (a message may name a file; an attendee sees no path)."""
    replacements = [(str(tasks_dir()), "tasks"), (str(data_dir()), "the data folder")]
    home = str(Path.home())
    if home not in ("/", ""):
        replacements.append((home, "~"))
    for path, words in sorted(replacements, key=lambda pair: -len(pair[0])):
        text = text.replace(path, words)
    return _OTHER_PATH.sub(lambda match: match.group(1), text)


# Any other absolute path (a model or task file elsewhere on the server): only its last
# name is shown. Not a URL's path: a '/' after a letter, ':' or another '/' is left alone.
_OTHER_PATH = re.compile(r"(?<![\w.~:/])/(?:[^\s/'\"`()<>\[\]]+/)+([^\s/'\"`()<>\[\]]+)")
