"""Seconds per training step of this checkout's engine against an earlier commit's, side by side.

The machine is shared and its speed drifts, so the two engines run in one process, one
thread, strictly alternating (base, current, base, current, ...), and only their paired
ratio is meaningful. The base engine is `opd_lab/trainer.py` (`train.py` before the
Trainer had a module of its own), `generation.py` (the sampler), `losses.py` and
`sharding.py` (where it exists) as they were at `--base` (loaded under other module names); everything
else (models, configs, tasks) is this checkout's, so the comparison isolates the changes
to the training step.

Run (after `opd-lab lab build`):

    OMP_NUM_THREADS=1 python -m bench.engine_speed --base HEAD~1 --method opd --estimator full

It prints, per engine, the median and minimum seconds per step and the median phase split
(`perf/time_*`, when the engine logs it), then the median paired ratio base / current.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from opd_lab.config import RunConfig

REPO = Path(__file__).resolve().parent.parent


# The modules of the step, loaded from `--base` in this order (each one's imports of the
# earlier ones are pointed at their base versions); the last one holds `Trainer`.
ENGINE_MODULES = ("losses", "generation", "sharding", "trainer")


def _exists(revision: str, path: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{revision}:{path}"], cwd=REPO,
                          capture_output=True).returncode == 0


def load_base_engine(revision: str):
    """The module holding `Trainer` as it was at `revision` (`opd_lab.trainer`, or
    `opd_lab.train` before it), with that revision's sampler, losses and sharding too,
    imported as separate modules."""
    folder = Path(tempfile.mkdtemp(prefix="opd-base-"))
    loaded = {}
    names = [name for name in ENGINE_MODULES if _exists(revision, f"opd_lab/{name}.py")]
    if "trainer" not in names:
        names.append("train")
    for name in names:
        source = subprocess.run(["git", "show", f"{revision}:opd_lab/{name}.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
        path = folder / f"{name}_base.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"opd_lab_{name}_base", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        for attribute, value in list(vars(module).items()):  # rebind imports of earlier modules
            for earlier, base in loaded.items():
                if value is sys.modules.get(f"opd_lab.{earlier}"):
                    setattr(module, attribute, base)
                elif getattr(value, "__module__", None) == f"opd_lab.{earlier}" and hasattr(base, attribute):
                    setattr(module, attribute, getattr(base, attribute))
        loaded[name] = module
    return loaded[names[-1]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD~1", help="git revision of the engine to compare against")
    parser.add_argument("--method", default="opd", choices=["opd", "sft", "rl"])
    parser.add_argument("--estimator", default="full", choices=["full", "sampled"])
    parser.add_argument("--finetune", default="full", choices=["full", "lora"])
    parser.add_argument("--teacher", default="lab")
    parser.add_argument("--student", default="lab")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step (RL: prompts x samples)")
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="RL only")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: the task's default")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from opd_lab import trainer as current_engine

    base_engine = load_base_engine(args.base)
    # sample_every and eval_every far away: the steps timed are ordinary training steps.
    config = RunConfig(method=args.method, estimator=args.estimator, finetune=args.finetune, teacher=args.teacher,
                       student=args.student,
                       batch_size=args.batch_size // (args.samples_per_prompt if args.method == "rl" else 1), max_new_tokens=args.max_new_tokens,
                       steps=10_000, sample_every=10_000, eval_every=10_000, learning_rate=1e-5,
                       **({"sft_source": "teacher"} if args.method == "sft" else {}),
                       **({"samples_per_prompt": args.samples_per_prompt} if args.method == "rl" else {}))
    trainers = {name: engine.Trainer(config, Path(tempfile.mkdtemp(prefix=f"opd-bench-{name}-")))
                for name, engine in (("base", base_engine), ("current", current_engine))}
    seconds = {name: [] for name in trainers}
    phases = {name: [] for name in trainers}
    for round_index in range(args.warmup + args.rounds):
        for name, trainer in trainers.items():
            started = time.perf_counter()
            result = trainer.step()
            elapsed = time.perf_counter() - started
            if round_index >= args.warmup:
                seconds[name].append(elapsed)
                phases[name].append({k[len("perf/time_"):]: v for k, v in result.metrics.items()
                                     if k.startswith("perf/time_")})
    print(f"{args.method} {args.estimator if args.method == 'opd' else ''} finetune={args.finetune} "
          f"B={args.batch_size} threads={args.threads} rounds={args.rounds} base={args.base}")
    for name in trainers:
        split = ""
        if phases[name] and phases[name][0]:
            split = "  " + "  ".join(f"{phase} {statistics.median(row[phase] for row in phases[name]):.4f}"
                                     for phase in phases[name][0])
        print(f"{name:8s} median {statistics.median(seconds[name]):.4f} s/step  min {min(seconds[name]):.4f}{split}")
    ratios = [b / c for b, c in zip(seconds["base"], seconds["current"])]
    print(f"base/current paired ratio: median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}]")


if __name__ == "__main__":
    main()
