"""Data-parallel training on the tiny lab: 2 CPU processes over gloo, launched by accelerate.

The slow tests start real `accelerate launch` process trees (`opd-lab train --processes N`),
about 20-40 s each on two shared cores.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch

from opd_lab import checkpoints, distributed, runs
from opd_lab.config import RunConfig
from opd_lab.distributed import World, combine_weighted_means, row_seeds
from opd_lab.generation import generate
from opd_lab.ownership import is_owned
from opd_lab.run_folder import load_metrics, load_samples, load_status, log_tail
from opd_lab.train import run_training
from waiting import wait_for

SMALL_FLAGS = ["--batch-size", "4", "--eval-count", "8", "--sample-every", "1", "--samples-to-log", "2",
               "--max-new-tokens", "12", "--learning-rate", "0.001"]


def test_shards_give_every_row_to_exactly_one_process():
    for size in (1, 2, 3):
        for count in (0, 1, 2, 5, 32):
            shards = [World(rank=rank, size=size).shard(count) for rank in range(size)]
            assert [row for shard in shards for row in shard] == list(range(count))
            assert count == 0 or len(shards[0]) >= 1  # rank 0 (which logs samples) always has a row


def test_combining_means_weights_each_process_by_its_rows_or_tokens():
    shares = [({"train/accuracy": 1.0, "train/reverse_kl": 0.2}, {"train/accuracy": 3, "train/reverse_kl": 10}),
              ({"train/accuracy": 0.0, "train/reverse_kl": 0.5}, {"train/accuracy": 1, "train/reverse_kl": 30}),
              ({"train/only_here": 2.0}, {"train/only_here": 0})]
    combined = combine_weighted_means(shares)
    assert combined["train/accuracy"] == pytest.approx(0.75)
    assert combined["train/reverse_kl"] == pytest.approx((0.2 * 10 + 0.5 * 30) / 40)
    assert combined["train/only_here"] == 2.0
    assert World().mean_metrics({"a": 1.0}, {"a": 0}) == {"a": 1.0}


def test_row_keyed_sampling_does_not_depend_on_the_rest_of_the_batch(lab_pair):
    """What makes 1 and 2 processes sample the same tokens: a row's completion depends
    on its own seed only, not on its neighbours or its place in the batch."""
    _, student, tokenizer = lab_pair
    prompts = ["347+285=", "12+9=", "505+505="]
    seeds = row_seeds(0, 1, range(3), "student")
    assert len(set(seeds)) == 3 and seeds != row_seeds(0, 2, range(3), "student")
    whole = generate(student, tokenizer, prompts, 12, row_seeds=seeds)
    alone = generate(student, tokenizer, prompts[2:], 12, row_seeds=seeds[2:])
    assert alone.completions[0] == whole.completions[2]
    assert alone.completion_token_ids(0) == whole.completion_token_ids(2)
    torch.testing.assert_close(alone.completion_sampling_logprobs_BL[0, : len(alone.completion_token_ids(0))],
                               whole.completion_sampling_logprobs_BL[2, : len(whole.completion_token_ids(2))])
    # The sampled tokens follow the model's distribution: frequencies over many seeds.
    many = generate(student, tokenizer, ["1+1="] * 400, 1, row_seeds=row_seeds(1, 1, range(400), "student"))
    probabilities = many.completion_sampling_logprobs_BL[:, 0].exp()
    first = torch.tensor([ids[0] for ids in (many.completion_token_ids(r) for r in range(400))])
    most = int(first.mode().values)
    expected = float(probabilities[first == most][0])
    assert float((first == most).float().mean()) == pytest.approx(expected, abs=0.08)


def _train_on(processes: int, name: str, home, extra: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPD_LAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "opd_lab", "train", "--processes", str(processes), "--name", name,
                           "--no-progress", *SMALL_FLAGS, *extra], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _run_dir(name: str):
    found = sorted(runs.runs_dir().glob(f"{name}-*"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_two_processes_train_like_one_on_the_same_global_batch(lab_home):
    flags = ["--steps", "4", "--eval-every", "4", "--checkpoint-every", "2"]
    for processes in (1, 2):
        result = _train_on(processes, f"dp{processes}", lab_home[0], flags)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = _run_dir("dp1"), _run_dir("dp2")

    # The run folder is complete, and written once (by rank 0 only).
    status = load_status(two)
    assert status["state"] == "finished" and status["step"] == 4 and status["processes"] == 2
    assert len(status["rank_pids"]) == 2 and status["rank_pids"][0] != status["rank_pids"][1]
    assert not is_owned(two)
    rows = load_metrics(two)
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[4]
    samples = load_samples(two)
    assert sorted((s["step"], s["index"]) for s in samples) == [(step, i) for step in (1, 2, 3, 4) for i in (0, 1)]
    assert [line for line in log_tail(two).splitlines() if line.startswith("step 1/4")].__len__() == 1
    assert [c.name for c in checkpoints.checkpoint_dirs(two)] == ["step_000002", "step_000004"]

    # Metrics count the whole batch (4 prompts a step), not one process's share.
    assert [row["progress/samples"] for row in rows[1:]] == [4, 8, 12, 16]
    reference = load_metrics(one)
    # Step 1: the same prompts, the same per-row samples, the same loss and counters.
    for key in ("train/loss", "train/reverse_kl", "train/accuracy", "train/completion_len", "train/grad_norm"):
        assert rows[1][key] == pytest.approx(reference[1][key], rel=1e-4, abs=1e-6), key
    for key in ("progress/tokens", "perf/flops", "perf/flops_teacher"):
        assert rows[1][key] == reference[1][key], key
    # After the steps (gradients summed in another order): close, not bit-identical.
    assert rows[4]["train/loss"] == pytest.approx(reference[4]["train/loss"], rel=0.05)
    assert abs(rows[4]["eval/accuracy"] - reference[4]["eval/accuracy"]) <= 0.25


@pytest.mark.slow
def test_kill_9_of_one_process_fails_the_run_and_it_resumes_on_one_process(lab_home):
    env = {**os.environ, "OPD_LAB_HOME": str(lab_home[0]), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "opd_lab", "train", "--processes", "2", "--name", "dpkill", "--no-progress",
         *SMALL_FLAGS, "--steps", "60", "--eval-every", "100", "--checkpoint-every", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: list(runs.runs_dir().glob("dpkill-*")), timeout=120)
        run_dir = _run_dir("dpkill")
        assert wait_for(lambda: load_status(run_dir).get("step", 0) >= 2, timeout=120), load_status(run_dir)
        follower = load_status(run_dir)["rank_pids"][1]
        os.kill(follower, signal.SIGKILL)
        assert wait_for(lambda: runs.status_of(run_dir).get("state") == "failed", timeout=60), load_status(run_dir)
        assert launcher.wait(timeout=60) != 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    status = runs.status_of(run_dir)
    # Rank 0 saw its peer vanish (or, killed first by the launcher, lost its lock): failed, saying what to do.
    assert ("stopped answering" in status["message"] or "ended unexpectedly" in status["message"]), status
    assert "resume" in status["message"], status
    assert not is_owned(run_dir)
    last = checkpoints.step_of(checkpoints.latest(run_dir))
    assert last >= 2
    # Resume on one process: the checkpoint holds the whole student and optimizer.
    assert run_training(run_dir, progress=False) == "finished"
    assert [row["step"] for row in load_metrics(run_dir)] == list(range(61))
    assert load_metrics(run_dir)[-1]["progress/samples"] == 60 * 4


def test_launch_command_starts_processes_through_accelerate():
    command = distributed.launch_command(2, ["train", "--steps", "3"], port=29999)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--multi_gpu" in command
    assert command[command.index("--num_processes") + 1] == "2"
    assert "--multi_gpu" not in distributed.launch_command(1, ["train"], port=29999)
    assert distributed.launch_environment(1)["WORLD_SIZE"] == "1"
    with pytest.raises(ValueError, match="--processes: must be at least 1"):
        distributed.launch_command(0, ["train"])


def _background_config(name: str, steps: int) -> RunConfig:
    return RunConfig(name=name, method="opd", steps=steps, batch_size=4, eval_count=8, eval_every=steps,
                     sample_every=5, samples_to_log=2, max_new_tokens=12, learning_rate=1e-3, checkpoint_every=2)


@pytest.mark.slow
def test_a_background_run_on_two_processes_is_owned_from_launch_to_its_end(lab_home):
    """`opd-lab launch --processes 2`: the launcher owns the run, then hands the very lock
    to rank 0 (accelerate's processes inherit no open files); sampled all along, the run
    is never without an owner before it finishes."""
    run_dir, pid = runs.start_run(_background_config("bg2", 8), processes=2)
    seen = []
    assert wait_for(lambda: seen.append((is_owned(run_dir), runs.status_of(run_dir)["state"]))
                    or seen[-1][1] in ("finished", "failed"), timeout=240, interval=0.05), load_status(run_dir)
    assert seen[-1][1] == "finished", log_tail(run_dir)[-3000:]
    assert all(owned for owned, state in seen if state != "finished"), seen
    status = load_status(run_dir)
    assert status["processes"] == 2 and len(set(status["rank_pids"])) == 2
    assert not is_owned(run_dir)
    rows = load_metrics(run_dir)
    assert [row["step"] for row in rows] == list(range(9)) and rows[-1]["progress/samples"] == 8 * 4
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]
    assert sorted({s["step"] for s in load_samples(run_dir)}) == [5, 8]
    assert checkpoints.step_of(checkpoints.latest(run_dir)) == 8
    with pytest.raises(runs.RunError, match="has finished"):
        runs.resume(run_dir)


@pytest.mark.slow
def test_a_background_two_process_run_stops_and_resumes_on_two_processes(lab_home):
    # A budget far beyond what the test waits for: the run is still training whenever the
    # test acts on it (a 40-step run could finish before the first check on an idle machine).
    steps = 5000
    run_dir, _ = runs.start_run(_background_config("bgstop", steps), processes=2)
    assert wait_for(lambda: load_status(run_dir).get("step", 0) >= 2, timeout=240), log_tail(run_dir)[-3000:]
    with pytest.raises(runs.RunError, match="already running"):
        runs.resume(run_dir)  # one owner: a second trainer is refused
    runs.request_stop(run_dir)
    assert wait_for(lambda: runs.status_of(run_dir)["state"] == "stopped", timeout=120), load_status(run_dir)
    assert wait_for(lambda: not is_owned(run_dir), timeout=30)
    stopped_at = load_status(run_dir)["step"]
    assert stopped_at < steps and checkpoints.step_of(checkpoints.latest(run_dir)) == stopped_at
    runs.resume(run_dir)  # as many processes as it last used
    assert wait_for(lambda: load_status(run_dir).get("step", 0) >= stopped_at + 4, timeout=240), \
        log_tail(run_dir)[-3000:]
    runs.request_stop(run_dir)
    assert wait_for(lambda: runs.status_of(run_dir)["state"] in ("stopped", "failed"), timeout=120)
    status = load_status(run_dir)
    assert status["state"] == "stopped", log_tail(run_dir)[-3000:]
    assert status["processes"] == 2
    last = status["step"]
    assert last >= stopped_at + 4
    assert [row["step"] for row in load_metrics(run_dir)] == list(range(last + 1))  # each step once, none lost
    assert load_metrics(run_dir)[-1]["progress/samples"] == last * 4
