"""The `decomposition` diagnostic on the baseline lab: prefix source x divergence x estimator.

Trains one arm per meaningful cell of `opd_lab.studies.decomposition.CELLS` (9 arms) through
`opd_lab.run_batch.train_batch`, each from the lab's base student with the same learning
rate, batch, budget and seed; measures each arm's gradient noise at the base student over
8 resamplings of one fixed batch; and writes `decomposition.json` and `decomposition.md`
(steps to 50% and 80% of the gap, greedy and sampled, and the sentence that splits SFT's
lead into estimator, prefix source and divergence).

The runs are written under `--out` (`OUT/home/runs`, a data dir of their own whose `lab/`
links to the lab's data dir), so the lab's data dir only gets read. One seed and no sweep:
every arm trains at `--learning-rate` (default 1e-4, the rate the committed baseline
report's sweep chose for SFT; the same for all arms so that the rate is not a factor).

    python -m bench.decomposition --quick                          # a tiny lab, seconds
    python -m bench.decomposition --out /tmp/decomposition         # the built baseline lab
    python -m bench.decomposition --steps 100 --eval-every 25 --eval-count 300 --out DIR
    python -m bench.decomposition --report-only --out DIR           # the report of DIR's finished runs

The arms train in `decomposition.training_order` (the cells SFT's lead is split along
first), so a run stopped early (Ctrl-C stops the training arm with a checkpoint) still
leaves those; `--report-only` then writes the report of the finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

QUICK = dict(steps=4, batch_size=8, eval_every=2, eval_count=16, variance_prompts=4)


def _private_home(out: Path) -> Path:
    """A data dir under `out` whose `lab/` is the current data dir's: runs land in `out`, labs are only read."""
    from opd_lab.paths import data_dir

    labs = data_dir() / "lab"
    home = out / "home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "lab").exists():
        (home / "lab").symlink_to(labs.resolve(), target_is_directory=True)
    return home


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="baseline", help="the scenario whose lab the arms train on")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-count", type=int, default=500)
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per problem for sampled accuracy")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per step, every arm")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamplings", type=int, default=8)
    parser.add_argument("--variance-prompts", type=int, default=0, help="prompts of the fixed batch (0: --batch-size)")
    parser.add_argument("--cells", default="", help="comma-separated cells (default: all of CELLS)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the scenario's tiny lab and budgets (seconds)")
    parser.add_argument("--out", default="", help="the report folder (default: <data dir>/reports/decomposition-*)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from --out's finished runs (e.g. after a stop) without training")
    args = parser.parse_args(argv)
    for name, value in QUICK.items():
        if args.quick:
            setattr(args, name, value)

    import torch

    from opd_lab.studies import decomposition
    from opd_lab.config import RunConfig
    from opd_lab.studies.comparison import reference_accuracies
    from opd_lab.studies.comparison_report import reports_dir
    from opd_lab.files import read_json, write_json_atomic
    from opd_lab.lab import build_lab, lab_summary
    from opd_lab.run_batch import train_batch
    from opd_lab.studies.scenarios import get_scenario

    torch.set_num_threads(1)
    started = time.time()
    recipe = get_scenario(args.scenario).recipe(quick=args.quick)
    label = f"decomposition-{args.scenario}" + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else reports_dir() / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    cells = decomposition.training_order([c for c in args.cells.split(",") if c] or list(decomposition.CELLS))
    settings = {"lab": recipe.lab_name, "steps": args.steps, "batch": args.batch_size,
                "learning rate (every arm)": args.learning_rate, "seed": args.seed,
                "evaluation every": args.eval_every, "held-out problems": args.eval_count,
                "samples per problem (sampled accuracy)": args.eval_samples, "gradient resamplings": args.resamplings,
                "prompts in the fixed batch": args.variance_prompts or args.batch_size}
    if args.report_only:
        return write_report(out, label, cells, None)
    lab = build_lab(recipe, progress_print=print) if args.quick else lab_summary(recipe.lab_name)
    if lab is None:
        raise SystemExit(f"the lab {recipe.lab_name} is not built here; run `opd-lab lab build --scenario "
                         f"{args.scenario}` first")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["OPD_LAB_HOME"] = str(_private_home(out))  # the runs and their workers write here

    base = RunConfig(task=recipe.task, teacher=f"lab:{recipe.lab_name}", student=f"lab:{recipe.lab_name}",
                     steps=args.steps, learning_rate=args.learning_rate, warmup_steps=min(5, args.steps),
                     seed=args.seed, eval_every=args.eval_every, eval_count=args.eval_count,
                     eval_samples=args.eval_samples, checkpoint_every=args.steps, keep_checkpoints=1,
                     finetune="full")
    configs = decomposition.arm_configs(base, args.batch_size, cells, name_prefix=label)
    reference = reference_accuracies(recipe.lab_name, recipe.task, args.eval_count, args.eval_samples)
    print(f"reference: {json.dumps(reference)}  ({time.time() - started:.0f} s)", flush=True)
    write_json_atomic(out / SETUP_FILE, {"reference": reference, "settings": settings, "eval_count": args.eval_count,
                                         "lab": {key: lab.get(key) for key in ("lab", "teacher", "student")
                                                 if key in lab}, "variances": {}})

    variances = {}
    scratch = out / "variance-scratch"
    for name, config in configs.items():
        measured = time.time()
        found = decomposition.arm_gradient_variance(config, scratch, args.variance_prompts or args.batch_size,
                                                    args.resamplings, seed=args.seed)
        variances[name] = found.to_dict()
        noise = "n/a" if found.noise_to_signal is None else f"{found.noise_to_signal:.3g}"
        print(f"gradient noise {name}: per token {found.per_token_variance:.3g}, noise/signal {noise} "
              f"({time.time() - measured:.0f} s)", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    setup = read_json(out / SETUP_FILE)
    write_json_atomic(out / SETUP_FILE, {**setup, "variances": variances})

    train_batch(list(configs.values()), args.workers, "decomposition arms")
    return write_report(out, label, cells, started)


SETUP_FILE = "setup.json"  # reference accuracies, settings and gradient noise, written before the arms train


def finished_runs(out: Path, label: str, cells: list[str]) -> dict[str, Path]:
    """The finished run folder of each cell under `out/home/runs` (cells without one are left out)."""
    from opd_lab.run_folder import load_status

    found = {}
    for cell in cells:
        folders = sorted((out / "home" / "runs").glob(f"{label}-{cell}-*"))
        done = [folder for folder in folders if (load_status(folder) or {}).get("state") == "finished"]
        if done:
            found[cell] = done[-1]
    return found


def write_report(out: Path, label: str, cells: list[str], started: float | None) -> Path:
    """`decomposition.json` and `.md` from the setup file and the cells' finished runs; `started`
    None (a report rewritten from the runs) keeps the earlier report's measured seconds."""
    from opd_lab.studies import decomposition
    from opd_lab.files import read_json, write_json_atomic
    from opd_lab.run_folder import load_metrics

    setup = read_json(out / SETUP_FILE)
    run_dirs = finished_runs(out, label, cells)
    runs = {name: load_metrics(run_dir) for name, run_dir in run_dirs.items()}
    data = decomposition.decomposition_report(runs, setup["variances"], setup["reference"], setup["eval_count"])
    missing = [cell for cell in cells if cell not in run_dirs]
    data.update({"settings": setup["settings"], "lab": setup["lab"], "runs": {k: str(v) for k, v in run_dirs.items()},
                 "not_finished": missing})
    if started is not None:
        data["seconds"] = round(time.time() - started, 1)
    elif (out / "decomposition.json").exists():
        data["seconds"] = read_json(out / "decomposition.json").get("seconds")
    write_json_atomic(out / "decomposition.json", data)
    markdown = decomposition.decomposition_markdown(data)
    if missing:
        markdown += f"\nNot finished (no row): {', '.join(missing)}.\n"
    (out / "decomposition.md").write_text(markdown)
    print(markdown)
    print(f"report: {out / 'decomposition.md'}")
    return out


if __name__ == "__main__":
    main()
