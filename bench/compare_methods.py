"""OPD vs SFT vs RL on the built-in lab, with the same budget, in one process.

Trains the three methods from the lab's base student (same steps, same number of
sequences per step; RL samples 4 completions for a quarter of the prompts), then
prints each run's held-out accuracy before and after, its compute (samples, FLOPs,
wall time) and the compute each needed to reach fractions of the teacher's accuracy.

    python -m bench.compare_methods --steps 100          # about 10 minutes on 2 cores
    python -m bench.compare_methods --steps 4 --eval-count 16   # smoke
"""

from __future__ import annotations

import argparse

from opd_lab.config import RunConfig
from opd_lab.lab import build_lab
from opd_lab.plots import compute_to_target
from opd_lab.runfiles import load_metrics
from opd_lab.train import train


def budget_configs(steps: int, batch_size: int, eval_count: int, eval_every: int, seed: int) -> list[RunConfig]:
    """The three runs of a comparison with the same steps and sequences per step."""
    common = dict(steps=steps, eval_count=eval_count, eval_every=eval_every, seed=seed, checkpoint_every=steps)
    return [
        RunConfig(method="opd", batch_size=batch_size, **common),
        RunConfig(method="sft", batch_size=batch_size, **common),
        RunConfig(method="rl", batch_size=max(1, batch_size // 4), samples_per_prompt=4, **common),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-count", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = build_lab()
    teacher_accuracy = summary["teacher"]["accuracy"]
    run_dirs = [train(config) for config in budget_configs(args.steps, args.batch_size, args.eval_count,
                                                            args.eval_every, args.seed)]
    print(f"\nteacher held-out accuracy {teacher_accuracy:.1%}")
    print(f"{'method':<7}{'before':>8}{'after':>8}{'samples':>9}{'FLOPs':>11}{'wall s':>8}  run")
    for run_dir in run_dirs:
        rows = load_metrics(run_dir)
        evals = [r for r in rows if "eval/accuracy" in r]
        last = rows[-1]
        method = run_dir.name.split("-")[0]
        print(f"{method:<7}{evals[0]['eval/accuracy']:>8.1%}{evals[-1]['eval/accuracy']:>8.1%}"
              f"{last['progress/samples']:>9}{last['perf/flops']:>11.2e}{last['perf/wall_s']:>8.1f}  {run_dir.name}")
    print("\ncompute to reach a fraction of the teacher's accuracy (first evaluation at or above it):")
    print(f"{'method':<7}{'target':>8}{'step':>6}{'samples':>9}{'FLOPs':>11}{'wall s':>8}")
    for row in compute_to_target(run_dirs, teacher_accuracy, fractions=(0.75, 0.9, 0.95)):
        if row["step"] is None:
            print(f"{row['method']:<7}{row['target_accuracy']:>8.1%}   not reached")
        else:
            print(f"{row['method']:<7}{row['target_accuracy']:>8.1%}{row['step']:>6}{row['samples']:>9}"
                  f"{row['flops']:>11.2e}{row['wall_s']:>8.1f}")


if __name__ == "__main__":
    main()
