"""Seconds per training step of this checkout's engine against an earlier commit's, side by side.

The machine is shared and its speed drifts, so the two engines run in one process, one
thread, strictly alternating (base, current, base, current, ...), and only their paired
ratio is meaningful. The base engine is `opd_lab/trainer.py` (`train.py` before the
Trainer had a module of its own) and the modules the step is made of (`ENGINE_MODULES`:
the sampler, losses, objectives, teachers, the student's loading, the process world)
as they were at `--base`, where they exist (loaded under other module names); everything
else (configs, tasks, the model files) is this checkout's, so the comparison isolates
the changes to the training step.

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


# The modules of the step, loaded from `--base` in this order (each one imports the base
# versions of the earlier ones); the last one holds `Trainer`.
ENGINE_MODULES = ("losses", "generation", "models", "sharding", "distributed", "teacher_scoring", "teacher_routing",
                  "teacher_dataset", "objectives", "trainer")


def _exists(revision: str, path: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{revision}:{path}"], cwd=REPO,
                          capture_output=True).returncode == 0


def load_base_engine(revision: str):
    """The module holding `Trainer` as it was at `revision` (`opd_lab.trainer`, or
    `opd_lab.train` before it), with that revision's `ENGINE_MODULES` too, imported as
    separate modules.

    While they load, each one stands in for its namesake (`sys.modules["opd_lab.NAME"]` and
    the package's attribute), so a later base module's `from opd_lab.NAME import X` gets
    the base X even where this checkout renamed or moved it; the current modules are put
    back afterwards. Import this checkout's engine first, so it never sees a base module.
    """
    import opd_lab

    folder = Path(tempfile.mkdtemp(prefix="opd-base-"))
    loaded, replaced = {}, {}
    names = [name for name in ENGINE_MODULES if _exists(revision, f"opd_lab/{name}.py")]
    if "trainer" not in names:
        names.append("train")
    try:
        for name in names:
            source = subprocess.run(["git", "show", f"{revision}:opd_lab/{name}.py"], cwd=REPO, check=True,
                                    capture_output=True, text=True).stdout
            path = folder / f"{name}_base.py"
            path.write_text(source)
            spec = importlib.util.spec_from_file_location(f"opd_lab_{name}_base", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            replaced.setdefault(name, (sys.modules.get(f"opd_lab.{name}"), getattr(opd_lab, name, None)))
            sys.modules[f"opd_lab.{name}"] = module
            setattr(opd_lab, name, module)
            loaded[name] = module
    finally:
        for name, (current, attribute) in replaced.items():
            if current is None:
                sys.modules.pop(f"opd_lab.{name}", None)
            else:
                sys.modules[f"opd_lab.{name}"] = current
            if attribute is None:
                delattr(opd_lab, name)
            else:
                setattr(opd_lab, name, attribute)
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
