"""Experiment trackers: a run's metrics, config and samples in TensorBoard, W&B, Trackio or MLflow.

A run folder's `metrics.jsonl` is the record (docs/run-folder.md); a tracker is a second
view of it, where ML engineers already look. `RunConfig.report_to` names the trackers
(`opd-lab train --report-to tensorboard,wandb`). The training process then sends every
metrics row as it is written, the config as hyperparameters once, and the per-token
samples as text or a table; `opd-lab export RUN --to tensorboard` replays a finished run.

Every tracker writes offline files under `RunConfig.report_dir` (default
`<data dir>/tracking`), one folder per tracker:

    tensorboard/<run id>/   event files         tensorboard --logdir <dir>/tensorboard
    wandb/                  W&B offline runs    wandb sync <dir>/wandb/offline-run-*
    trackio/                Trackio's database  TRACKIO_DIR=<dir>/trackio trackio show
    mlruns/                 MLflow file store   mlflow ui --backend-store-uri <dir>/mlruns

Each tracker is an optional extra (`pip install 'opd-lab[track]'`), imported only when a
run asks for it. Failures are handled on two sides of the run folder's creation:

- before it (`check_trackers`, called by `preflight.check_run_inputs`): a tracker that
  is not installed, or a directory that cannot be written, refuses the run with one
  line, and no folder is created;
- after it (`RunTrackers`): a tracker that raises while the run trains is dropped with
  one warning in the run's log, and the run goes on writing metrics.jsonl.

Example:
    >>> trackers = RunTrackers.open(config, run_id="opd-addition-1203-101500")  # doctest: +SKIP
    >>> trackers.log_metrics({"step": 1, "train/loss": 0.7})  # doctest: +SKIP
    >>> trackers.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, Protocol

from opd_lab.config import TRACKERS, ConfigError, RunConfig
from opd_lab.paths import check_writable, data_dir

# The module each tracker needs, and the pip package that provides it.
TRACKER_MODULES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                   "trackio": ("trackio", "trackio"), "mlflow": ("mlflow", "mlflow-skinny")}
PROJECT = "opd-lab"


class Tracker(Protocol):
    """One tracker's view of one run; every method may raise (RunTrackers drops it then)."""

    log_dir: Path
    """Where it writes."""

    def log_metrics(self, row: dict) -> None:
        """A metrics.jsonl row: `row["step"]` and its namespaced numbers."""

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """The samples.jsonl rows of one step."""

    def close(self) -> None:
        """Flush and finish."""


def tracking_dir(config: RunConfig) -> Path:
    """Where the trackers of `config` write: `report_dir`, or `<data dir>/tracking`."""
    return Path(config.report_dir).expanduser() if config.report_dir else data_dir() / "tracking"


def _import(name: str):
    module, package = TRACKER_MODULES[name]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"report_to: {name} is not installed ({error}); pip install 'opd-lab[track]' "
                          f"(or pip install {package})") from None


def check_trackers(config: RunConfig, directory: Path | None = None) -> None:
    """Refuse, before a run folder exists, trackers that cannot start: not installed, or
    a directory that cannot be created or written.

    Raises:
        ConfigError: naming the tracker (or `report_dir`) and what to do.
    """
    names = config.trackers()
    if not names:
        return
    folder = directory or tracking_dir(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder)
    except (OSError, ValueError) as error:
        raise ConfigError(f"report_dir: the trackers cannot write to {folder} ({error})") from None
    for name in names:
        if name == "trackio":
            os.environ["TRACKIO_DIR"] = str(folder / "trackio")  # read once, when trackio is imported
        _import(name)


def numeric_metrics(row: dict) -> dict[str, float]:
    """The numbers of a metrics row a tracker plots: every finite int or float but `step`.

    Example:
        >>> numeric_metrics({"step": 3, "train/loss": 0.5, "note": "x", "eval/accuracy": float("nan")})
        {'train/loss': 0.5}
    """
    return {key: float(value) for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def hyperparameters(config: dict) -> dict[str, int | float | str | bool]:
    """The run config as flat hyperparameters (every RunConfig field is already a scalar)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in config.items()}


def sample_table_rows(samples: list[dict]) -> list[list]:
    """One row per logged sample: step, index, prompt, completion, reward, correct, and
    its tokens as `token (reverse KL)` text.

    Example:
        >>> sample_table_rows([{"step": 2, "index": 0, "prompt": "1+1=", "completion": "2", "reward": 1.0,
        ...                     "correct": True, "tokens": [{"text": "2", "reverse_kl": 0.25}]}])
        [[2, 0, '1+1=', '2', 1.0, True, "'2' (0.250)"]]
    """
    rows = []
    for sample in samples:
        tokens = " ".join(f"{token['text']!r}" + (f" ({token['reverse_kl']:.3f})" if "reverse_kl" in token else "")
                          for token in sample.get("tokens", []))
        rows.append([sample.get("step"), sample.get("index"), sample.get("prompt", ""), sample.get("completion", ""),
                     sample.get("reward"), sample.get("correct"), tokens])
    return rows


SAMPLE_COLUMNS = ["step", "index", "prompt", "completion", "reward", "correct", "tokens (reverse KL)"]


def samples_markdown(samples: list[dict]) -> str:
    """The samples of one step as a Markdown table (TensorBoard's text plugin renders it)."""

    def cells(values) -> str:
        return "| " + " | ".join(str(value).replace("|", "\\|").replace("\n", " ") for value in values) + " |"

    rows = [SAMPLE_COLUMNS, ["---"] * len(SAMPLE_COLUMNS), *sample_table_rows(samples)]
    return "\n".join(cells(row) for row in rows)


class TensorBoardTracker:
    """Event files in `<dir>/tensorboard/<run id>/`: scalars, an hparams summary, samples as text."""

    def __init__(self, run_id: str, config: dict, directory: Path):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.log_dir = directory / "tensorboard" / run_id
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        for summary in hparams(hyperparameters(config), {}):  # the HParams tab, in this run's own folder
            self.writer.file_writer.add_summary(summary)

    def log_metrics(self, row: dict) -> None:
        for key, value in numeric_metrics(row).items():
            self.writer.add_scalar(key, value, global_step=row["step"])
        self.writer.flush()

    def log_samples(self, step: int, samples: list[dict]) -> None:
        self.writer.add_text("samples", samples_markdown(samples), global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in offline mode under `<dir>/wandb/` (upload later with `wandb sync`)."""

    def __init__(self, run_id: str, config: dict, directory: Path):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(mode="offline", dir=str(directory), project=PROJECT, name=run_id,
                              id=re.sub(r"[^A-Za-z0-9_-]", "-", run_id), config=hyperparameters(config),
                              resume="allow", reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        self.log_dir = Path(self.run.dir).parent

    def log_metrics(self, row: dict) -> None:
        self.run.log(numeric_metrics(row), step=row["step"])

    def log_samples(self, step: int, samples: list[dict]) -> None:
        self.run.log({"samples": self.wandb.Table(columns=SAMPLE_COLUMNS, data=sample_table_rows(samples))}, step=step)

    def close(self) -> None:
        self.run.finish()
        self.wandb.teardown()  # stops W&B's service process, which holds the run file's last records until then


class TrackioTracker:
    """A Trackio run in its local database under `<dir>/trackio/` (`TRACKIO_DIR`).

    Trackio reads `TRACKIO_DIR` once, at import, so one process writes all its Trackio
    runs to one directory; a second directory in the same process is refused.
    """

    def __init__(self, run_id: str, config: dict, directory: Path):
        wanted = directory / "trackio"
        os.environ["TRACKIO_DIR"] = str(wanted)
        import trackio
        from trackio.utils import TRACKIO_DIR

        if Path(TRACKIO_DIR).resolve() != wanted.resolve():
            raise RuntimeError(f"Trackio already writes to {TRACKIO_DIR} in this process (it reads TRACKIO_DIR "
                               f"once, at import), not to {wanted}")

        self.trackio = trackio
        with contextlib.redirect_stdout(io.StringIO()):  # its banner and dashboard hints
            self.run = trackio.init(project=PROJECT, name=run_id, config=hyperparameters(config), resume="allow",
                                    auto_log_cpu=False, auto_log_gpu=False)
        self.log_dir = directory / "trackio"

    def log_metrics(self, row: dict) -> None:
        self.trackio.log(numeric_metrics(row), step=row["step"])

    def log_samples(self, step: int, samples: list[dict]) -> None:
        if hasattr(self.trackio, "Table"):
            self.trackio.log({"samples": self.trackio.Table(columns=SAMPLE_COLUMNS, data=sample_table_rows(samples))},
                             step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.trackio.finish()


class MlflowTracker:
    """An MLflow run in the file store `<dir>/mlruns/`: metrics by step, params, samples as text artifacts.

    MLflow 3 keeps its file store in maintenance mode and refuses it unless
    `MLFLOW_ALLOW_FILE_STORE` is set; opd-lab sets it (a file store needs no server and
    no database driver, and `mlflow ui --backend-store-uri <dir>/mlruns` reads it).
    """

    def __init__(self, run_id: str, config: dict, directory: Path):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.log_dir = directory / "mlruns"
        self.client = MlflowClient(tracking_uri=self.log_dir.resolve().as_uri())
        experiment = self.client.get_experiment_by_name(PROJECT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(PROJECT)
        self.run_id = self.client.create_run(experiment_id, run_name=run_id).info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in hyperparameters(config).items()]
        self.client.log_batch(self.run_id, params=params)

    def log_metrics(self, row: dict) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, row["step"]) for key, value in numeric_metrics(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        self.client.log_text(self.run_id, samples_markdown(samples), f"samples/step_{step:06d}.md")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKER_CLASSES: dict[str, type] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker,
                                    "trackio": TrackioTracker, "mlflow": MlflowTracker}
assert set(TRACKER_CLASSES) == set(TRACKERS)


def _warn_on_stderr(text: str) -> None:
    print(f"opd-lab: warning: {text}", file=sys.stderr)


class RunTrackers:
    """The trackers of one run; a tracker that raises is dropped with one warning, never the run.

    Args:
        trackers: {name: tracker} already started.
        warn: where warnings go (the run's log.txt when training; stderr by default).
    """

    def __init__(self, trackers: dict[str, Tracker], warn: Callable[[str], None] = _warn_on_stderr):
        self.trackers = dict(trackers)
        self.warn = warn

    @classmethod
    def open(cls, config: RunConfig, run_id: str, warn: Callable[[str], None] = _warn_on_stderr,
             directory: Path | None = None, names: tuple[str, ...] | None = None) -> "RunTrackers":
        """Start `names` (default: `config.trackers()`) for `run_id`; one that fails to start is skipped with a warning."""
        folder = directory or tracking_dir(config)
        started = {}
        for name in names if names is not None else config.trackers():
            try:
                started[name] = TRACKER_CLASSES[name](run_id, config.to_dict(), folder)
            except Exception as error:  # noqa: BLE001 - a tracker never stops the run
                warn(f"tracker {name} could not start and is off for this run: {type(error).__name__}: {error}")
        return cls(started, warn)

    def _each(self, action: str, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                call(tracker)
            except Exception as error:  # noqa: BLE001 - a tracker never stops the run
                del self.trackers[name]
                self.warn(f"tracker {name} failed to {action} and is off for the rest of this run "
                          f"(metrics.jsonl goes on): {type(error).__name__}: {error}")

    def log_metrics(self, row: dict) -> None:
        self._each("log metrics", lambda tracker: tracker.log_metrics(row))

    def log_samples(self, step: int, samples: list[dict]) -> None:
        if samples:
            self._each("log samples", lambda tracker: tracker.log_samples(step, samples))

    def close(self) -> None:
        self._each("close", lambda tracker: tracker.close())
        self.trackers.clear()


def export_run(run_dir: str | Path, names: tuple[str, ...], directory: Path | None = None) -> dict[str, Path]:
    """Replay a run folder's config, metrics and samples into `names`; returns {tracker: where it wrote}.

    Raises:
        ConfigError: a tracker is unknown or not installed, or `directory` cannot be written.
    """
    from opd_lab.run_folder import load_config, load_metrics, load_samples

    run_dir = Path(run_dir)
    config = RunConfig.from_dict(load_config(run_dir)).with_overrides(
        report_to=",".join(names), report_dir=str(directory) if directory else "")
    check_trackers(config)
    errors: list[str] = []
    trackers = RunTrackers.open(config, run_dir.name, warn=errors.append)
    if errors:
        trackers.close()
        raise ConfigError(errors[0])
    samples_by_step: dict[int, list[dict]] = {}
    for sample in load_samples(run_dir):
        samples_by_step.setdefault(sample["step"], []).append(sample)
    where = {name: tracker.log_dir for name, tracker in trackers.trackers.items()}
    for row in load_metrics(run_dir):
        trackers.log_metrics(row)
        trackers.log_samples(row["step"], samples_by_step.pop(row["step"], []))
    trackers.close()
    if errors:
        raise ConfigError(errors[0])
    return where
