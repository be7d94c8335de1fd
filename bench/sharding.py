"""Sharded vs replicated student on 2 processes: peak memory of a process, and speed.

Two runs of `opd-lab train --processes 2`, the same in all but `--fsdp`: each process
holds the whole student, its gradients and AdamW moments (replicated), or 1/2 of
them (sharded, `opd_lab/sharding.py`). Two peaks per run:

- **while training**: each rank's peak resident memory over steps 2 to the one before
  the last (the last ends with the run's only checkpoint). Once a rank has finished step 1 (models loaded, the first
  step's allocations made) the bench resets its peak (Linux `/proc/PID/clear_refs`,
  value 5), then reads it back (`VmHWM` in `/proc/PID/status`) every 0.1 s; so loading
  the models, whose transient copies set the peak of the whole run, is left out. The
  larger of the two ranks;
- **whole run**: from a small Python parent that reports `getrusage(RUSAGE_CHILDREN)`,
  the peak of the largest process of the run's tree, including that final checkpoint.
  A sharded run's checkpoint gathers the whole student and AdamW state into rank 0's
  CPU memory (`sharding.full_model_state`), so on a CPU machine, where that memory is
  also the training memory, this peak shows less of the saving; on GPUs the gathering
  lands in host memory, not on the device.

Both runs use glibc's malloc with a fixed mmap threshold (`MALLOC_MMAP_THRESHOLD_=65536`),
so that freed tensors leave the resident set. With the default, glibc raises the
threshold after the first large frees and then serves SmolLM2's per-layer tensors from
its heap, which keeps memory freed by a sharded run's gathering and regathering in
the resident set. Measured on SmolLM2 (2 processes): with the default, the sharded run's
peak was only 393 MiB below the replicated run's, of the 1,026 MiB of training state it
does not hold; with the fixed threshold, 1,132 MiB below (and 1,035 MiB in the resident
memory after each of steps 1-3, read inside the ranks).

Speed is steps after the first over their summed step time (`perf/wall_s`), as in
bench/scaling.py. The last line is the ratio of the peaks while training.

    OMP_NUM_THREADS=1 python -m bench.sharding [--pair smollm2|lab] [--steps 4]

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
import time
from pathlib import Path

PAIRS = {
    "smollm2": ["--teacher", "smollm2", "--student", "smollm2", "--finetune", "full", "--task", "instructions",
                "--batch-size", "2", "--max-new-tokens", "16", "--learning-rate", "1e-5"],
    "lab": ["--task", "addition", "--batch-size", "16", "--max-new-tokens", "12"],
}

# Runs the training command and prints the peak RSS (KiB) of the largest process it waited for.
_MEASURED_PARENT = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def _peak_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _watch_ranks(run_glob: str, home: Path, steps: int, process: subprocess.Popen) -> dict[int, int]:
    """Each rank's peak resident memory (KiB) from after step 1 until the row of step `steps - 1` is written."""
    peaks: dict[int, int] = {}
    reset: set[int] = set()
    while process.poll() is None:
        found = sorted((home / "runs").glob(run_glob))
        try:
            status = json.loads((found[-1] / "status.json").read_text()) if found else {}
        except (OSError, ValueError):
            status = {}
        metrics = found[-1] / "metrics.jsonl" if found else None
        last_row = (json.loads(metrics.read_text().splitlines()[-1]).get("step", 0)
                    if metrics and metrics.exists() and metrics.stat().st_size else 0)
        if status.get("step", 0) >= 1 and last_row < steps - 1:
            for pid in status.get("rank_pids") or []:
                if pid not in reset and _reset_peak(pid):
                    reset.add(pid)
                    continue
                value = _peak_kib(pid)
                if value is not None and pid in reset:
                    peaks[pid] = value
        time.sleep(0.1)
    return peaks


def run(pair: str, sharded: bool, steps: int, home: Path) -> tuple[float, float]:
    """One 2-process run; `(steps per second, peak MiB of its largest rank while training)`."""
    name = "sharded" if sharded else "replicated"
    command = [sys.executable, "-m", "opd_lab", "train", "--processes", "2", *(["--fsdp"] if sharded else []),
               *PAIRS[pair], "--steps", str(steps), "--eval-every", str(steps * 10), "--eval-count", "4",
               "--checkpoint-every", str(steps * 10), "--sample-every", str(steps * 10), "--name", name,
               "--no-progress"]
    env = {**os.environ, "OPD_LAB_HOME": str(home), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen([sys.executable, "-c", _MEASURED_PARENT, *command], env=env, stdout=output,
                                   stderr=subprocess.STDOUT, text=True)
        rank_peaks = _watch_ranks(f"{name}-*", home, steps, process)
        output.seek(0)
        text = output.read()
    if process.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{text[-3000:]}")
    whole_run_mib = int(text.split("PEAK_KIB")[-1].split()[0]) / 1024
    if len(rank_peaks) != 2:
        raise SystemExit(f"{name}: read the peaks of {len(rank_peaks)} ranks, not 2")
    peak_mib = max(rank_peaks.values()) / 1024
    run_dir = sorted((home / "runs").glob(f"{name}-*"))[-1]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row.get("step", 0) > 0]
    timed = rows[-1]["perf/wall_s"] - rows[0]["perf/wall_s"]
    speed = (len(rows) - 1) / timed if timed > 0 else float("nan")
    held = next((line for line in (run_dir / "log.txt").read_text().splitlines() if "sharded across" in line), "")
    ranks = ", ".join(f"{value / 1024:,.0f}" for value in rank_peaks.values())
    print(f"{name:>10}: {speed:.3f} steps/s over steps 2-{steps}; peak while training {peak_mib:,.0f} MiB "
          f"(ranks: {ranks}); whole run {whole_run_mib:,.0f} MiB in its largest process"
          + (f"\n            ({held.split(': ', 1)[-1]})" if held else ""), flush=True)
    return speed, peak_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="smollm2")
    parser.add_argument("--steps", type=int, default=4)
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
    print(f"peak memory of a process while training, sharded / replicated: {sharded_peak / replicated_peak:.2f}")


if __name__ == "__main__":
    main()
