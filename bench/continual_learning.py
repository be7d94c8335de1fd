"""Notebook 4's continual-learning recipe at its full settings, for the claims table.

Builds (or reuses) the addition lab, fine-tunes its teacher on the `reverse` task with
30% old data, then recovers addition with OPD from the original model, and writes the
three stages' accuracies to `opd_lab/data/results/continual-learning.json` (read by
`python -m opd_lab.studies.claims`).

    python -m bench.continual_learning             # about 3 minutes on 2 cores
    python -m bench.continual_learning --out /tmp/cl.json --learn-steps 4 --recover-steps 4   # smoke
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from opd_lab.studies.continual import ContinualSettings, lab_skills, run_continual
from opd_lab.paths import MEASURED_RESULTS_DIR
from opd_lab.lab import LabRecipe, build_lab
from opd_lab.paths import lab_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ContinualSettings()
    parser.add_argument("--learn-steps", type=int, default=defaults.learn_steps)
    parser.add_argument("--recover-steps", type=int, default=defaults.recover_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=str(MEASURED_RESULTS_DIR / "continual-learning.json"))
    args = parser.parse_args()
    settings = ContinualSettings(learn_steps=args.learn_steps, recover_steps=args.recover_steps, seed=args.seed)
    started = time.time()
    lab = build_lab(LabRecipe.for_task(settings.old_task))
    study = run_continual(settings, original=str(lab_dir(settings.old_task) / "teacher"))
    stages = lab_skills(study)
    data = {"settings": asdict(settings), "recover_steps": settings.recover_steps, "stages": stages,
            "lab": {"teacher": lab["teacher"]["accuracy"]}, "seconds": round(time.time() - started, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    for stage, skills in stages.items():
        print(f"{stage:<16} old skill {skills['old']:.1%}   new skill {skills['new']:.1%}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
