"""The noisy-teacher scenario's students: how much noise did each learn?

For each run folder given, loads its final checkpoint, samples completions of held-out
problems at temperature 1 and reports, along those completions, the student's mean
entropy and its *noise mass*: the probability it gives to tokens the clean teacher
gives less than 1e-3 (`noisy_teacher.noise_statistics`). SFT on the noisy teacher's
samples should learn that mass; reverse KL (OPD) should not.

    python -m bench.noise_mass <pilot folder>/runs/*   # the runs of a bench.pilot_compare pilot
    python -m bench.noise_mass RUN_FOLDER ...          # e.g. the runs an opd-lab compare report lists
                                                       # (report.json: runs -> arm -> each run's `path`)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from opd_lab import checkpoints
from opd_lab.config import RunConfig
from opd_lab.generation import completion_logits, generate
from opd_lab.models import load_model
from opd_lab.noisy_teacher import noise_statistics
from opd_lab.run_folder import read_json
from opd_lab.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--count", type=int, default=200, help="held-out problems, one sample each")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    found = {}
    for run in (Path(r) for r in args.runs):
        config = RunConfig.from_dict(read_json(run / "config.json"))
        latest = checkpoints.latest(run)
        if latest is None:
            continue
        student, tokenizer = checkpoints.load_student(latest, config)
        teacher, _ = load_model(config.teacher, "teacher", config.task)  # the clean teacher
        task = get_task(config.task)
        prompts = [p.prompt for p in task.eval_problems(args.count)]
        with torch.no_grad():
            rollouts = generate(student.eval(), tokenizer, prompts, task.max_new_tokens,
                                generator=torch.Generator().manual_seed(0))
            stats = noise_statistics(completion_logits(student, rollouts), completion_logits(teacher.eval(), rollouts),
                                     rollouts.completion_mask_BL)
        found[run.name] = {"step": checkpoints.step_of(latest), **stats}
        print(f"{run.name:<48} step {found[run.name]['step']:>4}  entropy {stats['entropy']:.3f} nats  "
              f"noise mass {stats['noise_mass']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
