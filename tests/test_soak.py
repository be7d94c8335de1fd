"""Soak test (on demand: `pytest -m soak`): random kill -9, stop and resume over three
concurrent runs of the tiny lab, then every run must finish with complete metrics.

Each cycle picks an unfinished run at random: a running one is killed with SIGKILL or asked to
stop, a stopped or failed one is resumed. At the end every run is resumed until it
finishes, and its metrics.jsonl must hold each step from 0 to `steps` exactly once.
`OPD_SOAK_CYCLES` and `OPD_SOAK_SEED` change the defaults (50 cycles, seed 0).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from opd_lab import checkpoints, run_folder, runs
from opd_lab.config import RunConfig
from opd_lab.run_folder import load_metrics, load_status
from waiting import wait_for

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]

STEPS = 400  # long enough that every cycle finds an unfinished run to disturb
CONFIG = dict(steps=STEPS, batch_size=4, eval_every=10, eval_count=8, sample_every=5, samples_to_log=1,
              checkpoint_every=3, keep_checkpoints=2, max_new_tokens=8)




def test_random_kills_stops_and_resumes_lose_nothing(lab_home, tmp_path, monkeypatch, capsys):
    root = tmp_path / "home"
    root.mkdir()
    (root / "lab").symlink_to(lab_home[0] / "lab")
    monkeypatch.setenv("OPD_LAB_HOME", str(root))
    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "3")
    cycles, rng = int(os.environ.get("OPD_SOAK_CYCLES", 50)), random.Random(int(os.environ.get("OPD_SOAK_SEED", 0)))
    started = time.time()
    run_dirs = [run_dir for run_dir, _ in runs.start_runs([RunConfig(**CONFIG, seed=seed) for seed in range(3)])]
    counts = {"kill -9": 0, "stop": 0, "resume": 0}
    for _ in range(cycles):
        time.sleep(rng.uniform(0.3, 2.5))
        unfinished = [d for d in run_dirs if runs.status_of(d)["state"] != "finished"]
        if not unfinished:
            break
        run_dir = rng.choice(unfinished)
        status = runs.status_of(run_dir)
        if status["state"] in runs.ACTIVE_STATES:
            if rng.random() < 0.5 and status.get("pid"):
                os.kill(status["pid"], signal.SIGKILL)
                counts["kill -9"] += 1
            else:
                runs.request_stop(run_dir)
                counts["stop"] += 1
        else:
            runs.resume(run_dir)
            counts["resume"] += 1
    for run_dir in run_dirs:  # finish every run
        while True:
            assert wait_for(lambda: runs.status_of(run_dir)["state"] not in runs.ACTIVE_STATES, timeout=300), run_dir
            if runs.status_of(run_dir)["state"] == "finished":
                break
            runs.resume(run_dir)
    for run_dir in run_dirs:
        steps = [row["step"] for row in load_metrics(run_dir)]
        assert steps == list(range(STEPS + 1)), (run_dir.name, steps)
        assert load_status(run_dir)["state"] == "finished"
        assert len(checkpoints.checkpoint_dirs(run_dir)) <= CONFIG["keep_checkpoints"] + 1
        samples = [(row["step"], row["index"]) for row in run_folder.load_samples(run_dir)]
        assert len(samples) == len(set(samples))
    with capsys.disabled():
        print(f"\nsoak: {sum(counts.values())} cycles over 3 runs in {time.time() - started:.0f} s: {counts}")
