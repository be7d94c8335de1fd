"""Sharded vs replicated student on 2 processes: peak memory of a process, and speed.

Two runs of `opd-lab train --processes 2`, the same in all but `--fsdp`: each process
holds the whole student, its gradients and AdamW moments (replicated), or 1/2 of
them (sharded, `opd_lab/sharding.py`). Each run is started from a small Python parent
that reports `getrusage(RUSAGE_CHILDREN).ru_maxrss`: the peak resident memory of the
largest process of that run's tree (a rank, since each holds the models). Speed is
steps after the first over their summed step time (`perf/wall_s`), as in
bench/scaling.py. The last line is the ratio of peak memories.

    OMP_NUM_THREADS=1 python -m bench.sharding [--pair smollm2|lab] [--steps 3]

`smollm2` (the default) fully fine-tunes SmolLM2-135M against itself as the teacher:
the teacher (about 0.5 GB in fp32) is whole in every process either way, and the
student's training state (0.5 GB of weights + 0.5 of gradients + 1.0 of moments)
is what sharding splits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PAIRS = {
    "smollm2": ["--teacher", "smollm2", "--student", "smollm2", "--finetune", "full", "--task", "instructions",
                "--batch-size", "2", "--max-new-tokens", "16", "--learning-rate", "1e-5"],
    "lab": ["--task", "addition", "--batch-size", "16", "--max-new-tokens", "12"],
}

# Runs the training command and prints the peak RSS (KiB) of the largest process it waited for.
_MEASURED_PARENT = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def run(pair: str, sharded: bool, steps: int, home: Path) -> tuple[float, float]:
    """One 2-process run; `(steps per second, peak MiB of its largest process)`."""
    name = "sharded" if sharded else "replicated"
    command = [sys.executable, "-m", "opd_lab", "train", "--processes", "2", *(["--fsdp"] if sharded else []),
               *PAIRS[pair], "--steps", str(steps), "--eval-every", str(steps * 10), "--eval-count", "4",
               "--checkpoint-every", str(steps * 10), "--sample-every", str(steps * 10), "--name", name,
               "--no-progress"]
    env = {**os.environ, "OPD_LAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _MEASURED_PARENT, *command], env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{result.stderr[-3000:]}")
    peak_mib = int(result.stdout.split("PEAK_KIB")[-1].split()[0]) / 1024
    run_dir = sorted((home / "runs").glob(f"{name}-*"))[-1]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row.get("step", 0) > 0]
    timed = rows[-1]["perf/wall_s"] - rows[0]["perf/wall_s"]
    speed = (len(rows) - 1) / timed if timed > 0 else float("nan")
    held = next((line for line in (run_dir / "log.txt").read_text().splitlines() if "sharded across" in line), "")
    print(f"{name:>10}: {speed:.3f} steps/s over steps 2-{steps}, peak {peak_mib:,.0f} MiB in one process"
          + (f"\n            ({held.split(': ', 1)[-1]})" if held else ""), flush=True)
    return speed, peak_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="smollm2")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opd-sharding-") as folder:
        home = Path(folder)
        if args.pair == "lab":
            os.environ["OPD_LAB_HOME"] = str(home)
            from opd_lab.lab import build_lab

            build_lab(progress_print=lambda *_: None)
        elif "OPD_LAB_HOME" in os.environ:  # reuse the data dir's de-quantized SmolLM2
            cache = Path(os.environ["OPD_LAB_HOME"]) / "models"
            if cache.is_dir():
                (home / "models").symlink_to(cache)
        print(f"pair {args.pair}; machine: {os.cpu_count()} CPU cores; 2 processes, OMP_NUM_THREADS=1 each")
        replicated_speed, replicated_peak = run(args.pair, False, args.steps, home)
        sharded_speed, sharded_peak = run(args.pair, True, args.steps, home)
    print(f"speed sharded / replicated: {sharded_speed / replicated_speed:.2f}")
    print(f"peak memory of a process, sharded / replicated: {sharded_peak / replicated_peak:.2f}")


if __name__ == "__main__":
    main()
