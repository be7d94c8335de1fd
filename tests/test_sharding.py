"""Sharded (FSDP) students on the tiny lab: 2 CPU processes over gloo, through accelerate.

The slow tests start real process trees (`opd-lab train --processes 2 --fsdp`), about
10-40 s each on two shared cores.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from opd_lab import checkpoints, runs, sharding
from opd_lab.config import ConfigError, RunConfig
from opd_lab.ownership import is_owned
from opd_lab.run_folder import load_config, load_metrics, load_status, log_tail
from opd_lab.trainer import Trainer
from waiting import wait_for

FLAGS = ["--batch-size", "4", "--eval-count", "8", "--sample-every", "1", "--samples-to-log", "2",
         "--max-new-tokens", "12", "--learning-rate", "0.001", "--steps", "4", "--eval-every", "4",
         "--checkpoint-every", "2", "--on-policy-fraction", "0.5"]


def test_a_step_whose_parts_cannot_reach_every_process_is_refused():
    sharding.check_shares({"on-policy": 2, "teacher-written": 2}, 2)
    sharding.check_shares({"on-policy": 4, "teacher-written": 0}, 4)
    with pytest.raises(ConfigError, match="1 teacher-written prompt.*2 processes"):
        sharding.check_shares({"on-policy": 3, "teacher-written": 1}, 2)


def test_accelerate_fsdp_config_asks_for_sharding(monkeypatch):
    monkeypatch.delenv(sharding.ACCELERATE_FSDP_VAR, raising=False)
    assert not sharding.requested(False) and sharding.requested(True)
    monkeypatch.setenv(sharding.ACCELERATE_FSDP_VAR, "true")  # what `accelerate launch` sets for FSDP
    assert sharding.requested(False)


def _train(processes: int, name: str, home, extra: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPD_LAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "opd_lab", "train", "--processes", str(processes), "--name", name,
                           "--no-progress", *FLAGS, *extra], env=env, capture_output=True, text=True, timeout=300)


def _only_run(name: str):
    found = sorted(runs.runs_dir().glob(f"{name}-*"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_a_sharded_run_on_two_processes_trains_like_one_and_saves_whole_checkpoints(lab_home):
    """Half the batch on-policy, half teacher-written: both parts are sharded collectives."""
    for processes, name, extra in ((1, "fsref", []), (2, "fsdp2", ["--fsdp"])):
        result = _train(processes, name, lab_home[0], extra)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = _only_run("fsref"), _only_run("fsdp2")
    assert load_config(two)["fsdp"] is True
    status = load_status(two)
    assert status["state"] == "finished" and status["processes"] == 2 and not is_owned(two)
    assert "student sharded across 2 processes" in log_tail(two)
    assert "sharded" not in log_tail(one)

    rows, reference = load_metrics(two), load_metrics(one)
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[4]  # evaluated through a gathered student
    assert [row["progress/samples"] for row in rows[1:]] == [4, 8, 12, 16]
    # Gradients summed over the processes, not averaged: the same norm as one process.
    for key in ("train/loss", "train/grad_norm", "train/accuracy", "train/completion_len"):
        assert rows[1][key] == pytest.approx(reference[1][key], rel=1e-4, abs=1e-6), key
    assert rows[1]["progress/tokens"] == reference[1]["progress/tokens"]

    # The checkpoint holds the whole student and optimizer, in a one-process run's format.
    sharded_dir, whole_dir = checkpoints.latest(two), checkpoints.latest(one)
    assert sharded_dir.name == whole_dir.name == "step_000004"
    sharded, whole = load_file(sharded_dir / "model.safetensors"), load_file(whole_dir / "model.safetensors")
    assert sharded.keys() == whole.keys()
    for key in whole:
        assert sharded[key].shape == whole[key].shape
        assert torch.allclose(sharded[key], whole[key], atol=2e-3), key
    sharded_opt = torch.load(sharded_dir / checkpoints.STATE_FILE, weights_only=False)["optimizer"]
    whole_opt = torch.load(whole_dir / checkpoints.STATE_FILE, weights_only=False)["optimizer"]
    assert sharded_opt["state"].keys() == whole_opt["state"].keys()
    assert [g["params"] for g in sharded_opt["param_groups"]] == [g["params"] for g in whole_opt["param_groups"]]
    for index, moments in whole_opt["state"].items():
        assert sharded_opt["state"][index]["exp_avg"].shape == moments["exp_avg"].shape
        assert torch.allclose(sharded_opt["state"][index]["exp_avg_sq"], moments["exp_avg_sq"], rtol=1e-2,
                              atol=1e-9), index


@pytest.mark.slow
def test_a_sharded_run_that_loses_a_process_fails_and_resumes_sharded_then_on_one(lab_home):
    config = RunConfig(name="fskill", method="opd", steps=5000, batch_size=4, eval_count=8, eval_every=5000,
                       sample_every=5, samples_to_log=2, max_new_tokens=12, learning_rate=1e-3,
                       checkpoint_every=2, fsdp=True)
    run_dir, _ = runs.start_run(config, processes=2)
    assert wait_for(lambda: load_status(run_dir).get("step", 0) >= 2 and checkpoints.latest(run_dir),
                    timeout=240), log_tail(run_dir)[-3000:]
    os.kill(load_status(run_dir)["rank_pids"][1], signal.SIGKILL)
    assert wait_for(lambda: runs.status_of(run_dir)["state"] == "failed", timeout=120), load_status(run_dir)
    assert "resume" in load_status(run_dir)["message"]
    assert wait_for(lambda: not is_owned(run_dir), timeout=30)
    failed_at = checkpoints.step_of(checkpoints.latest(run_dir))

    # Resumed sharded on 2 processes: the whole optimizer state is sharded again.
    runs.resume(run_dir)
    assert wait_for(lambda: load_status(run_dir).get("step", 0) >= failed_at + 4, timeout=240), \
        log_tail(run_dir)[-3000:]
    runs.request_stop(run_dir)
    assert wait_for(lambda: runs.status_of(run_dir)["state"] in ("stopped", "failed"), timeout=120)
    status = load_status(run_dir)
    assert status["state"] == "stopped", log_tail(run_dir)[-3000:]
    assert [row["step"] for row in load_metrics(run_dir)] == list(range(status["step"] + 1))

    # The sharded run's checkpoint goes on in one process, unsharded.
    trainer = Trainer(config, run_dir)
    trainer.begin(checkpoints.restore(checkpoints.latest(run_dir), trainer.student, trainer.lora))
    assert trainer.step_done == status["step"]
    result = trainer.step()
    assert torch.isfinite(result.loss) and trainer.step_done == status["step"] + 1


@pytest.mark.slow
def test_a_sharded_lora_student_saves_its_adapter_and_resumes_on_one_process(lab_home):
    result = _train(2, "fslora", lab_home[0], ["--fsdp", "--finetune", "lora"])
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = _only_run("fslora")
    latest = checkpoints.latest(run_dir)
    assert (latest / "adapter_model.safetensors").exists() and not (latest / "model.safetensors").exists()
    config = RunConfig.from_dict(load_config(run_dir))
    trainer = Trainer(config, run_dir)
    untrained = {name: p.detach().clone() for name, p in trainer.student.named_parameters() if p.requires_grad}
    trainer.begin(checkpoints.restore(latest, trainer.student, trainer.lora))
    restored = {name: p.detach() for name, p in trainer.student.named_parameters() if p.requires_grad}
    assert restored.keys() == untrained.keys()
    # LoRA's B matrices start at zero: after 4 sharded steps every adapter weight has moved.
    assert all(not torch.equal(restored[name], untrained[name]) for name in restored)
    assert trainer.step_done == 4 and torch.isfinite(trainer.step().loss)
