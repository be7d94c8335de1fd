"""OPD vs SFT vs RL on the built-in lab, with the same budget, in one process.

Trains the three methods from the lab's base student with the configs of
`opd_lab.studies.arms.method_configs` (same steps, same number of sequences per step; RL
samples 4 completions for a quarter of the prompts), then
prints each run's held-out accuracy before and after, its compute (samples, FLOPs,
wall time) and what each paid to close shares of the gap from the base student to the
teacher (`opd_lab.report`, the same numbers as `opd-lab compare` and the app).

    python -m bench.compare_methods --steps 100          # about 10 minutes on 2 cores
    python -m bench.compare_methods --steps 4 --eval-count 16   # smoke
"""

from __future__ import annotations

import argparse

from opd_lab import report
from opd_lab.studies.arms import method_configs
from opd_lab.config import RunConfig
from opd_lab.lab import build_lab
from opd_lab.plots import method_of
from opd_lab.run_folder import load_metrics, summarize_run
from opd_lab.train import train


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
    base = RunConfig(eval_count=args.eval_count, eval_every=args.eval_every, seed=args.seed,
                     checkpoint_every=args.steps)
    run_dirs = [train(config) for config in method_configs(args.steps, args.batch_size, base=base,
                                                            name_prefix=f"bench-s{args.seed}")]
    print(f"\nteacher held-out accuracy {teacher_accuracy:.1%}")
    print(f"{'method':<7}{'before':>8}{'after':>8}{'samples':>9}{'FLOPs':>11}{'wall s':>8}  run")
    for run_dir in run_dirs:
        run = summarize_run(run_dir)
        print(f"{run['method']:<7}{run['accuracy_start']:>8.1%}{run['accuracy_end']:>8.1%}"
              f"{run['samples']:>9}{run['flops']:>11.2e}{run['wall_s']:>8.1f}  {run['run']}")
    base_accuracy = load_metrics(run_dirs[0])[0]["eval/accuracy"]  # step 0: the same base student for every method
    print(f"\ncompute to close a share of the gap from the base student ({base_accuracy:.1%}) to the teacher "
          "(first evaluation at or above it):")
    print(f"{'method':<7}{'gap':>5}{'target':>8}{'step':>6}{'samples':>9}{'FLOPs':>11}{'wall s':>8}")
    for run_dir in run_dirs:
        rows = load_metrics(run_dir)
        for fraction in report.GAP_FRACTIONS:
            target = report.gap_target(base_accuracy, teacher_accuracy, fraction)
            cost = report.cost_to_reach(rows, target)
            head = f"{method_of(run_dir):<7}{fraction:>5.0%}{target:>8.1%}"
            print(head + ("   not reached" if cost is None else
                          f"{cost['steps']:>6}{cost['samples']:>9.0f}{cost['flops']:>11.2e}{cost['wall_s']:>8.1f}"))


if __name__ == "__main__":
    main()
