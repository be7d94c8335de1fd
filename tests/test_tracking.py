"""Experiment trackers: what TensorBoard and W&B offline read back equals metrics.jsonl.

A 3-step tiny-lab run streams to both trackers (`report_to`), and `opd-lab export`
replays a finished run; each is read back with the tracker's own reader (TensorBoard's
EventAccumulator; W&B's record protobufs from the offline run's `.wandb` file) and
compared value by value with metrics.jsonl. Also: a tracker that cannot start refuses
the run before its folder exists, and one that fails mid-run is dropped with a warning.
"""

import json
import math
import os
import sys
from pathlib import Path

import pytest

from opd_lab import tracking
from opd_lab.config import ConfigError, RunConfig
from opd_lab.run_folder import load_metrics, load_samples, load_status, log_tail, run_folders
from opd_lab.train import train
from synthetic_runs import make_run

pytest.importorskip("tensorboard", reason="pip install 'opd-lab[track]'")
pytest.importorskip("wandb", reason="pip install 'opd-lab[track]'")

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = dict(steps=3, batch_size=4, eval_every=3, eval_count=8, sample_every=1, samples_to_log=2,
                checkpoint_every=3, max_new_tokens=12)


# --- the trackers' own readers ------------------------------------------------------


def tensorboard_scalars(log_dir: Path) -> tuple[dict[str, dict[int, float]], list[str]]:
    """({tag: {step: value}}, tags of the other plugins) from TensorBoard's event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    scalars = {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
               for tag in accumulator.Tags()["scalars"]}
    return scalars, accumulator.Tags()["tensors"] + list(accumulator.PluginTagToContent("hparams"))


def wandb_records(run_folder: Path) -> list:
    """Every record of a W&B offline run, as W&B's own protobuf messages.

    The `.wandb` file is W&B's header (`:W&B`, a 2-byte magic, a version byte) and then
    a LevelDB-style log: 32 KiB blocks of chunks, each `crc32c (4) | length (2, LE) |
    type (1: whole, 2: first, 3: middle, 4: last) | payload`; a record is one whole
    chunk or a first..last run of them.
    """
    from wandb.proto import wandb_internal_pb2

    data = next(run_folder.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
    return records


def wandb_history(run_folder: Path) -> tuple[dict[int, dict[str, float]], dict]:
    """({step: {key: value}} of the logged numbers, the run's config) of a W&B offline run."""
    history: dict[int, dict] = {}
    config = {}
    for record in wandb_records(run_folder):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(int(items.pop("_step")), {}).update(items)
        elif kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    return history, config


def _numbers(rows: list[dict]) -> dict[int, dict[str, float]]:
    return {row["step"]: tracking.numeric_metrics(row) for row in rows}


def assert_tensorboard_matches(log_dir: Path, rows: list[dict], samples: bool = True) -> None:
    scalars, other_tags = tensorboard_scalars(log_dir)
    expected = _numbers(rows)
    keys = {key for values in expected.values() for key in values}
    assert set(scalars) == keys
    for key in keys:
        wanted = {step: values[key] for step, values in expected.items() if key in values}
        assert scalars[key].keys() == wanted.keys(), key
        for step, value in wanted.items():  # event files store float32
            assert math.isclose(scalars[key][step], value, rel_tol=1e-6, abs_tol=1e-30), (key, step)
    assert "_hparams_/session_start_info" in other_tags
    if samples:
        assert "samples/text_summary" in other_tags


def assert_wandb_matches(wandb_dir: Path, rows: list[dict], run_id: str, config: dict) -> None:
    (run_folder,) = [folder for folder in (wandb_dir / "wandb").glob(f"offline-run-*-{run_id}")]
    history, logged_config = wandb_history(run_folder)
    for step, values in _numbers(rows).items():
        for key, value in values.items():
            assert math.isclose(history[step][key], value, rel_tol=1e-12), (key, step)
    assert {key: value for key, value in logged_config.items() if key in config} == config


# --- tests --------------------------------------------------------------------------


def test_report_to_names_trackers_and_refuses_unknown_ones():
    assert RunConfig(report_to=" wandb, TensorBoard,wandb").trackers() == ("wandb", "tensorboard")
    assert RunConfig().trackers() == () and RunConfig(report_to="none").trackers() == ()
    with pytest.raises(ConfigError, match="report_to: unknown tracker 'comet'"):
        RunConfig(report_to="tensorboard,comet")


def test_a_training_run_streams_to_tensorboard_and_wandb_offline(lab_home, tmp_path):
    run_dir = train(RunConfig(**TINY_RUN, report_to="tensorboard,wandb", report_dir=str(tmp_path)), progress=False)
    rows = load_metrics(run_dir)
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert_tensorboard_matches(tmp_path / "tensorboard" / run_dir.name, rows)
    config = json.loads((run_dir / "config.json").read_text())
    assert_wandb_matches(tmp_path, rows, run_dir.name, config)
    assert "warning" not in log_tail(run_dir)


def test_export_replays_a_finished_run(tmp_path, monkeypatch):
    from opd_lab.cli import main

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path / "home"))
    run_dir = make_run(tmp_path / "home" / "runs", "opd-finished", steps=12, sample_every=4)
    out = tmp_path / "exported"
    assert main(["export", "opd-finished", "--to", "tensorboard,wandb", "--dir", str(out)]) == 0
    rows = load_metrics(run_dir)
    assert_tensorboard_matches(out / "tensorboard" / "opd-finished", rows)
    config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text())).to_dict()
    config.update(report_to="tensorboard,wandb", report_dir=str(out))
    assert_wandb_matches(out, rows, "opd-finished", config)
    assert len(load_samples(run_dir)) == 6  # 3 logged steps x 2 rollouts, sent as 3 text summaries


def test_export_refuses_an_unknown_tracker_in_one_line(tmp_path, monkeypatch, capsys):
    from opd_lab.cli import main

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path))
    make_run(tmp_path / "runs", "opd-finished", steps=4)
    assert main(["export", "opd-finished", "--to", "comet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "opd-lab: error: --to: unknown tracker 'comet'; use tensorboard, wandb, trackio, mlflow (comma-separated)"]


def test_a_tracker_that_is_not_installed_refuses_the_run_before_its_folder(lab_home, tmp_path, monkeypatch, capsys):
    from opd_lab.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    before = run_folders()
    with pytest.raises(ConfigError, match=r"report_to: wandb is not installed .*pip install 'opd-lab\[track\]'"):
        train(RunConfig(**TINY_RUN, report_to="wandb", report_dir=str(tmp_path)), progress=False)
    assert main(["train", "--steps", "3", "--report-to", "wandb", "--report-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "wandb is not installed" in error[0]
    assert run_folders() == before


def test_a_directory_that_cannot_be_written_refuses_the_run_before_its_folder(lab_home, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = run_folders()
    with pytest.raises(ConfigError, match="report_dir: the trackers cannot write to"):
        train(RunConfig(**TINY_RUN, report_to="tensorboard", report_dir=str(blocker / "tracking")), progress=False)
    assert run_folders() == before


def test_a_tracker_failing_mid_run_is_dropped_and_the_run_goes_on(lab_home, tmp_path, monkeypatch):
    calls = []

    def fail_at_step_two(self, row):
        calls.append(row["step"])
        if row["step"] == 2:
            raise OSError("disk full")
        self.writer.add_scalar("train/loss", row.get("train/loss", 0.0), global_step=row["step"])

    monkeypatch.setattr(tracking.TensorBoardTracker, "log_metrics", fail_at_step_two)
    run_dir = train(RunConfig(**TINY_RUN, report_to="tensorboard", report_dir=str(tmp_path)), progress=False)
    assert load_status(run_dir)["state"] == "finished"
    assert [row["step"] for row in load_metrics(run_dir)] == [0, 1, 2, 3]
    assert calls == [0, 1, 2]  # dropped after its failure: step 3 never reached it
    log = log_tail(run_dir, lines=200)
    assert "warning: tracker tensorboard failed to log metrics" in log and "disk full" in log


def test_export_to_mlflow_and_trackio_reads_back_the_same_values(tmp_path, monkeypatch):
    """MLflow and Trackio are in the `track` extra, not the test extra: skipped without them."""
    pytest.importorskip("mlflow", reason="pip install 'opd-lab[track]'")
    pytest.importorskip("trackio", reason="pip install 'opd-lab[track]'")
    import subprocess

    run_dir = make_run(tmp_path / "home" / "runs", "opd-finished", steps=12, sample_every=4)
    out = tmp_path / "exported"
    monkeypatch.setenv("TRACKIO_DIR", str(out / "trackio"))  # for the readers below
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    # A fresh process: Trackio fixes its directory when it is first imported.
    done = subprocess.run([sys.executable, "-m", "opd_lab", "--data-dir", str(tmp_path / "home"), "export",
                           "opd-finished", "--to", "mlflow,trackio", "--dir", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    expected = _numbers(load_metrics(run_dir))

    from mlflow.tracking import MlflowClient
    from trackio.sqlite_storage import SQLiteStorage

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("opd-lab").experiment_id])
    assert run.data.params["method"] == "opd" and run.data.params["steps"] == "12"
    for key in {key for values in expected.values() for key in values}:
        logged = {metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, key)}
        assert logged == {step: values[key] for step, values in expected.items() if key in values}, key
    assert len(client.list_artifacts(run.info.run_id, "samples")) == 3

    logged = {}
    for row in SQLiteStorage.get_logs("opd-lab", "opd-finished"):
        logged.setdefault(row["step"], {}).update(
            {key: value for key, value in row.items() if isinstance(value, float) or key in expected.get(row["step"], {})})
    for step, values in expected.items():
        assert {key: logged[step][key] for key in values} == values, step
    assert SQLiteStorage.get_run_config("opd-lab", "opd-finished")["method"] == "opd"


def test_a_tracker_that_fails_to_start_in_the_training_process_only_warns(lab_home, tmp_path, monkeypatch):
    def cannot_start(self, run_id, config, directory):
        raise ConnectionError("service did not answer")

    monkeypatch.setattr(tracking.TensorBoardTracker, "__init__", cannot_start)
    run_dir = train(RunConfig(**TINY_RUN, report_to="tensorboard", report_dir=str(tmp_path)), progress=False)
    assert load_status(run_dir)["state"] == "finished"
    assert [row["step"] for row in load_metrics(run_dir)] == [0, 1, 2, 3]
    log = log_tail(run_dir, lines=200)
    assert "warning: tracker tensorboard could not start and is off for this run" in log
    assert "service did not answer" in log
