"""Fixed SFT data: the teacher dataset (one teacher sample per pool prompt, made once) or references.

The teacher dataset is the seed's off-policy distillation data
(`RunConfig.sft_source="teacher_dataset"`): SFT trains on it epoch after epoch, where OPD
samples afresh. In a multi-task run each prompt is answered by its own task's teacher
(`teacher_routing`). `fixed_completions` is what the trainer asks: the completion of each
prompt when a run's SFT data does not change from step to step (that dataset, or the
task's reference solutions with `sft_source="reference"`), or None when the teacher
writes fresh ones every step (`TeacherRouter.write`).

Example:
    >>> completions = teacher_dataset(run_dir / SFT_DATASET_FILE, trainer.teachers, pool, ...)  # doctest: +SKIP
    >>> completions["347+285="]  # doctest: +SKIP
    '347+285: 7+5=12, write 2 carry 1; ... 632'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from opd_lab.config import RunConfig
from opd_lab.flops import FlopsCounter
from opd_lab.generation import generate
from opd_lab.files import read_jsonl, write_text_atomic
from opd_lab.tasks import Problem
from opd_lab.teacher_routing import TeacherRouter


def teacher_dataset(path: Path, teachers: TeacherRouter, pool: list[Problem], default_task: str, tokenizer,
                    max_new_tokens: int, temperature: float, seed: int, device: torch.device,
                    flops: FlopsCounter) -> dict[str, str]:
    """Each pool prompt's teacher completion, by prompt; made once and kept at `path`.

    Each teacher samples at `temperature` with one generator seeded `seed + 1`, so the
    dataset is the same for every run with the same seed and pool. A resumed run reads it
    back from `path`. Its sampling FLOPs are charged to `flops` here, once per run start
    (a resumed run's counter is then restored from its checkpoint, which already holds them).
    """
    rows = read_jsonl(path)
    if not rows:
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        for task, teacher in teachers.teachers.items():  # one task unless the run mixes several
            prompts = sorted({p.prompt for p in pool if (p.task or default_task) == task})
            for start in tqdm(range(0, len(prompts), 64), desc="teacher dataset", leave=False):
                rollouts = generate(teacher.model, tokenizer, prompts[start : start + 64], max_new_tokens,
                                    temperature=temperature, generator=generator)
                tokens = rollouts.attention_mask_BS.sum(dim=1).tolist()
                rows += [{"prompt": p, "completion": c, "tokens": int(n), "task": task}
                         for p, c, n in zip(rollouts.prompts, rollouts.completions, tokens)]
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
    teachers.charge(flops, [row.get("task", default_task) for row in rows],
                    torch.tensor([row["tokens"] for row in rows]).reshape(-1, 1), scoring=False)
    return {row["prompt"]: row["completion"] for row in rows}


def fixed_completions(config: RunConfig, path: Path, teachers: TeacherRouter, pool: list[Problem], tokenizer,
                      max_new_tokens: int, device: torch.device,
                      flops: FlopsCounter) -> Callable[[Problem], str] | None:
    """The completion an SFT run trains on for each problem, when it is fixed for the run:
    its row of the teacher dataset at `path` (made here on first use: `teacher_dataset`),
    or its task's reference solution. None when the teacher writes fresh completions each
    step (`sft_source` "teacher" or "teacher_greedy", and OPD's off-policy share)."""
    if config.method != "sft" or config.sft_source not in ("teacher_dataset", "reference"):
        return None
    if config.sft_source == "reference":
        return lambda problem: problem.reference or problem.answer
    dataset = teacher_dataset(path, teachers, pool, config.task, tokenizer, max_new_tokens, config.temperature,
                              config.seed, device, flops)
    return lambda problem: dataset[problem.prompt]
