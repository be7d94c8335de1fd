"""Synthetic run folders and token records for tests of the readers, plots and views.

No model runs: the files follow docs/run-folder.md with made-up, deterministic numbers,
so a test can state exactly what a figure or table must show.

Example:
    >>> run = make_run(tmp_path, "opd-demo", method="opd", steps=20,
    ...                eval_accuracy={0: 0.1, 10: 0.5, 20: 0.8})  # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from opd_lab.files import append_jsonl, write_json_atomic
from opd_lab.run_folder import CONFIG_FILE, METRICS_FILE, SAMPLES_FILE, STATUS_FILE

HOSTILE_TEXTS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "a&b", "'quote'")


def make_tokens(count: int, seed: int = 0, texts: list[str] | None = None) -> list[dict]:
    """`count` per-token records with plausible, consistent numbers.

    The texts cycle through digits, a word with a leading space, a newline and a tab
    unless `texts` is given. Each record has every key a logged record has.
    """
    rng = random.Random(seed)
    texts = texts or ["7", "+", " the", "\n", "5", "=", "\t", "12"]
    tokens = []
    for position in range(count):
        text = texts[position % len(texts)]
        student_logprob = -rng.expovariate(2.0)
        teacher_logprob = -rng.expovariate(1.0)
        alternatives = sorted((rng.random() for _ in range(5)), reverse=True)
        scale = 0.9 / sum(alternatives)
        tokens.append({
            "text": text, "token_id": position % 50,
            "student_logprob": student_logprob, "teacher_logprob": teacher_logprob,
            "advantage": teacher_logprob - student_logprob,
            "reverse_kl": rng.expovariate(3.0),
            "student_entropy": rng.random(),
            "teacher_top": [[text if k == 0 else str(k), round(p * scale, 6)] for k, p in enumerate(alternatives)],
            "student_top": [[str(9 - k), round(p * scale, 6)] for k, p in enumerate(alternatives)],
        })
    return tokens


def make_run(root: str | Path, run_id: str, method: str = "opd", steps: int = 20,
             eval_accuracy: dict[int, float] | None = None, batch_size: int = 8,
             tokens_per_sample: int = 12, flops_per_step: float = 1e12, seconds_per_step: float = 0.5,
             sample_every: int = 10, samples_to_log: int = 2, teacher: str = "lab",
             eval_metrics: dict[str, dict[int, float]] | None = None) -> Path:
    """Write a finished run folder `root/run_id` and return its path.

    Metrics rows go from step 0 (the starting model's evaluation) to `steps`;
    `eval_accuracy` maps the evaluated steps to their accuracy (default: every 5 steps,
    rising linearly from 0.1 to 0.8). Every row has the progress and perf counters
    (samples = step * batch_size, flops = step * flops_per_step, ...). Samples are
    logged every `sample_every` steps, `samples_to_log` rollouts each, the second one
    shorter so that per-position tables need padding. `eval_metrics` adds other
    evaluation metrics (e.g. `eval/sampled_accuracy`), each mapping steps to values.
    """
    run_dir = Path(root) / run_id
    run_dir.mkdir(parents=True)
    if eval_accuracy is None:
        eval_accuracy = {step: 0.1 + 0.7 * step / steps for step in range(0, steps + 1, 5)}
    write_json_atomic(run_dir / CONFIG_FILE, {"method": method, "steps": steps, "batch_size": batch_size,
                                              "name": run_id, "task": "addition", "teacher": teacher,
                                              "student": teacher})
    write_json_atomic(run_dir / STATUS_FILE, {"state": "finished", "pid": None, "step": steps,
                                              "total_steps": steps, "message": "finished"})
    rows = []
    for step in range(steps + 1):
        row = {"step": step, "progress/samples": step * batch_size,
               "progress/tokens": step * batch_size * tokens_per_sample,
               "perf/flops": step * flops_per_step, "perf/wall_s": step * seconds_per_step}
        if step > 0:
            row.update({"train/loss": 1.0 / step, "train/reverse_kl": 0.5 * math.exp(-step / 10),
                        "train/reward": min(1.0, step / steps)})
        if step in eval_accuracy:
            row["eval/accuracy"] = eval_accuracy[step]
        for key, values in (eval_metrics or {}).items():
            if step in values:
                row[key] = values[step]
        rows.append(row)
    append_jsonl(run_dir / METRICS_FILE, rows)
    samples = []
    for step in range(sample_every, steps + 1, sample_every):
        for index in range(samples_to_log):
            length = tokens_per_sample - 3 * index
            tokens = make_tokens(length, seed=step * 100 + index)
            for token in tokens:
                token["reverse_kl"] = 1.0 / step  # every token of a step has the same KL
            samples.append({"step": step, "index": index, "prompt": "347+285=",
                            "completion": "".join(token["text"] for token in tokens),
                            "reward": 1.0, "correct": index == 0, "tokens": tokens})
    append_jsonl(run_dir / SAMPLES_FILE, samples)
    return run_dir
