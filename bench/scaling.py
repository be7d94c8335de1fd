"""Data-parallel scaling: training steps per second with 1 and 2 processes, same global batch.

Each run is `opd-lab train --processes N` (accelerate launch; CPU processes over gloo
here), OPD on the tiny lab, one thread per process. The speed is read from rank 0's
metrics: steps after the first, over their summed step time (`perf/wall_s`), so
start-up, model loading and evaluation are left out. The last line is the ratio.

    OMP_NUM_THREADS=1 python bench/scaling.py [--steps 20] [--batch-size 16]

Each process does 1/N of the batch's sampling, scoring and backward, then all of them
sum the gradients and every one takes the same optimizer step; so the ratio is below
N by the all-reduce and the optimizer step every process repeats, and only reaches
anything near N when each process has a core (or a GPU) of its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def steps_per_second(processes: int, steps: int, batch_size: int, home: Path) -> float:
    name = f"scaling{processes}"
    flags = ["--steps", str(steps), "--batch-size", str(batch_size), "--eval-every", str(steps * 10),
             "--eval-count", "8", "--checkpoint-every", str(steps * 10), "--sample-every", str(steps * 10),
             "--max-new-tokens", "12", "--name", name, "--no-progress"]
    env = {**os.environ, "OPD_LAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "opd_lab", "train", "--processes", str(processes), *flags],
                   env=env, check=True, capture_output=True)
    from opd_lab.run_folder import load_metrics

    os.environ["OPD_LAB_HOME"] = str(home)
    run_dir = sorted((home / "runs").glob(f"{name}-*"))[-1]
    rows = [row for row in load_metrics(run_dir) if row["step"] > 0]
    timed = rows[-1]["perf/wall_s"] - rows[0]["perf/wall_s"]
    print(f"{processes} process(es): {(len(rows) - 1) / timed:.2f} steps/s over steps 2-{steps} "
          f"(global batch {batch_size}; {time.perf_counter() - started:.0f} s with start-up)", flush=True)
    return (len(rows) - 1) / timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opd-scaling-") as folder:
        home = Path(folder)
        os.environ["OPD_LAB_HOME"] = str(home)
        from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab

        build_lab(LabRecipe(**TINY_RECIPE), progress_print=lambda *_: None)
        print(f"machine: {os.cpu_count()} CPU cores; OMP_NUM_THREADS=1 per process")
        one = steps_per_second(1, args.steps, args.batch_size, home)
        two = steps_per_second(2, args.steps, args.batch_size, home)
    print(f"ratio 2 processes / 1 process: {two / one:.2f}")


if __name__ == "__main__":
    main()
