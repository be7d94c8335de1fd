"""How noisy is the noisy teacher? Its greedy and sampled accuracy against the noise q.

The `noisy-teacher` scenario mixes uniform noise into the lab's teacher,
p = (1 - q) p_teacher + q / V per token (opd_lab/noisy_teacher.py). Before comparing
methods against it, this measures what the students learn from: the noisy teacher's
greedy accuracy (the argmax never moves) and its sampled accuracy at temperature 1
(mean of k samples per problem) on the held-out problems, for each q, beside the
prediction (1 - q)^L for L completion tokens (each token slips with probability about
q, and one slip usually breaks the answer).

    python -m bench.noisy_teacher                      # the baseline lab, 500 problems, k = 4
    python -m bench.noisy_teacher --count 50 --noise 0.03   # smoke
"""

from __future__ import annotations

import argparse
import json
import time

from opd_lab.eval import evaluate
from opd_lab.models import load_model
from opd_lab.noisy_teacher import NoisyTeacherModel
from opd_lab.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", default="baseline", help="the lab whose teacher is made noisy (lab:NAME)")
    parser.add_argument("--task", default="addition")
    parser.add_argument("--noise", default="0,0.01,0.03,0.05", help="comma-separated q values")
    parser.add_argument("--count", type=int, default=500, help="held-out problems")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem at temperature 1")
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    args = parser.parse_args()

    teacher, tokenizer = load_model(f"lab:{args.lab}", "teacher", args.task)
    task = get_task(args.task)
    rows = []
    print(f"{'q':>6}{'greedy':>9}{'sampled':>9}{'(1-q)^L':>9}{'tokens':>8}{'seconds':>9}")
    for noise in (float(q) for q in args.noise.split(",")):
        model = NoisyTeacherModel(teacher, noise) if noise else teacher
        started = time.perf_counter()
        result = evaluate(model.eval(), tokenizer, task, count=args.count, samples_per_problem=args.samples)
        tokens = result.mean_completion_length  # greedy completion tokens, EOS included
        row = {"noise": noise, "greedy": result.accuracy, "sampled": result.sampled_accuracy,
               "predicted": (1 - noise) ** tokens, "tokens": tokens, "count": result.count, "samples": args.samples,
               "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(f"{noise:>6g}{row['greedy']:>9.1%}{row['sampled']:>9.1%}{row['predicted']:>9.1%}{tokens:>8.1f}"
              f"{row['seconds']:>9.1f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
