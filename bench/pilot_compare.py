"""A one-seed pilot of `opd-lab compare` on a scenario, for a machine too small for the real one.

`opd-lab compare` sweeps four learning rates per arm and runs three seeds of each arm:
hours on a shared 2-core CPU. This pilot runs each arm of the scenario once (seed 0)
at the learning rate the committed `baseline` report's sweep chose for its method
(opd_lab/data/results/baseline.json; 1e-4 for arms it has no rate for), with the scenario's
evaluation (500 problems, greedy and sampled) and a step budget you choose. It writes
an ordinary report folder (report.json, report.md with both verdicts, curves.html),
marked as a pilot: its numbers are measured, but one seed and no sweep of its own
make it a pilot, not a claim.

    python -m bench.pilot_compare --scenario noisy-teacher --steps 150 --eval-every 25

Seeds run as separate pilots (`--seed S`, one folder each) can be joined into one
report over all their seeds, which `--combine` checks were run alike (same scenario,
steps, evaluations, rates and lab) before it judges them together:

    python -m bench.pilot_compare --combine pilot-s0 pilot-s1 pilot-s2 --out noisy-teacher-3seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

from opd_lab.paths import MEASURED_RESULTS_DIR as RESULTS_DIR
from opd_lab.run_batch import train_batch
from opd_lab.studies.comparison import CompareSettings, EVAL_SAMPLES, _config, build_report, reference_accuracies
from opd_lab.studies.comparison_report import reports_dir, write_report
from opd_lab.lab import build_lab
from opd_lab.studies.scenarios import get_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", help="the lab scenario (needed unless --combine)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the one seed every arm runs")
    parser.add_argument("--out", default="")
    parser.add_argument("--combine", nargs="+", metavar="REPORT", help="join these pilot report folders "
                        "(one seed each, run alike) into one report in --out; trains nothing")
    args = parser.parse_args()
    if args.combine:
        if not args.out:
            parser.error("--combine needs --out")
        combine([Path(folder) for folder in args.combine], Path(args.out))
        return
    if not args.scenario:
        parser.error("--scenario is required")

    started = time.time()
    settings = CompareSettings(scenario=args.scenario, seeds=1, workers=args.workers)
    scenario = dataclasses.replace(get_scenario(args.scenario), steps=args.steps, eval_every=args.eval_every)
    recipe = scenario.recipe()
    lab = build_lab(recipe)
    reference = reference_accuracies(recipe.lab_name, recipe.task, scenario.eval_count, EVAL_SAMPLES,
                                     noise=scenario.run_changes.get("teacher_noise", 0.0))
    sampled_reference = {"teacher": reference["teacher_sampled"], "base": reference["student_sampled"],
                         **({"noisy_teacher": reference["noisy_teacher"]} if "noisy_teacher" in reference else {})}
    print(f"reference: {json.dumps(reference)}")
    baseline = json.loads((RESULTS_DIR / "baseline.json").read_text())["learning_rates"]
    rates = {arm: baseline.get(arm.split("-")[0], 1e-4) for arm in settings.arms}
    out = Path(args.out) if args.out else reports_dir() / f"pilot-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    configs = [_config(scenario, recipe.lab_name, arm, args.seed, rates[arm], scenario.steps,
                       f"pilot-{args.scenario}-{arm}-s{args.seed}")
               for arm in settings.arms]
    run_dirs = train_batch(configs, args.workers, "pilot runs")
    (out / "runs").mkdir(exist_ok=True)
    runs_by_arm = {}
    for arm, config, run_dir in zip(settings.arms, configs, run_dirs):
        shutil.move(str(run_dir), out / "runs" / run_dir.name)
        runs_by_arm[arm] = [{"seed": args.seed, "run": run_dir.name, "learning_rate": config.learning_rate}]
    data = build_report(settings, scenario, lab, reference["teacher"], reference["student"], [], rates, runs_by_arm,
                        out, seconds=time.time() - started, sampled_reference=sampled_reference)
    data["pilot"] = (f"one seed ({args.seed}), no sweep (rates from the baseline report's sweep: {rates}), "
                     f"{args.steps} steps, evaluations every {args.eval_every}")
    write_report(out, data)
    markdown = (out / "report.md").read_text()
    (out / "report.md").write_text(f"> **Pilot**: {data['pilot']}. Not a claim.\n\n" + markdown)
    print(f"report: {out / 'report.md'}")


ALIKE = ("scenario", "learning_rates", "teacher_accuracy", "base_accuracy", "sampled_reference")


def _how(report: dict) -> str:
    """How a pilot ran, without its seed: 'no sweep (rates ...), N steps, evaluations every M'."""
    return report["pilot"][report["pilot"].index("no sweep"):]


def combine(folders: list[Path], out: Path) -> Path:
    """One report over the seeds of several one-seed pilots run alike; refuses pilots that differ."""
    reports = [json.loads((folder / "report.json").read_text()) for folder in folders]
    first = reports[0]
    for folder, report in zip(folders, reports):
        differing = [key for key in ALIKE if report.get(key) != first.get(key)]
        if differing or _how(report) != _how(first):
            raise SystemExit(f"{folder} was not run like {folders[0]} (differs in: {differing or ['steps']})")
    seeds = [seed for report in reports for arm_runs in report["runs"].values() for seed in {r["seed"] for r in arm_runs}]
    seeds = sorted(set(seeds))
    if len(seeds) != len(reports):
        raise SystemExit(f"each pilot must have its own seed (got seeds {seeds} from {len(reports)} pilots)")
    settings = CompareSettings(scenario=first["scenario"], seeds=len(seeds), workers=1)
    budget = int(re.search(r"(\d+) steps, evaluations every", first["pilot"]).group(1))
    scenario = dataclasses.replace(get_scenario(first["scenario"]), steps=budget)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs_by_arm: dict[str, list] = {}
    for folder, report in zip(folders, reports):
        for arm, arm_runs in report["runs"].items():
            for run in arm_runs:
                target = out / "runs" / run["run"]
                if not target.exists():
                    shutil.copytree(folder / "runs" / run["run"], target)
                runs_by_arm.setdefault(arm, []).append(run)
    data = build_report(settings, scenario, first["lab"], first["teacher_accuracy"], first["base_accuracy"], [],
                        first["learning_rates"], runs_by_arm, out,
                        seconds=sum(report["seconds"] for report in reports),
                        sampled_reference=first.get("sampled_reference"))
    data["pilot"] = f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), each run as its own pilot; {_how(first)}"
    write_report(out, data)
    markdown = (out / "report.md").read_text()
    (out / "report.md").write_text(f"> **Pilot**: {data['pilot']}. Not a sweep of its own.\n\n" + markdown)
    print(f"report: {out / 'report.md'}")
    return out


if __name__ == "__main__":
    main()
