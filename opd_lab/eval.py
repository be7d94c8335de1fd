"""Held-out evaluation of any model on any task.

Greedy exact-match accuracy is the headline number (`eval/accuracy` in the metrics);
sampled accuracy and pass@k say how often the model gets it right when it samples,
which is what on-policy training sees. Every answer is kept as a record so the app
and notebooks can show what went wrong.

Example:
    >>> result = evaluate(model, tokenizer, get_task("addition"), count=200)  # doctest: +SKIP
    >>> result.accuracy, result.mean_completion_length  # doctest: +SKIP
    (0.99, 32.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from opd_lab.generation import generate
from opd_lab.tasks import Problem, Task


@dataclass
class EvalResult:
    """Held-out scores and the per-problem records behind them."""

    accuracy: float
    mean_completion_length: float
    count: int
    sampled_accuracy: float | None = None
    pass_at_k: float | None = None
    k: int = 0
    records: list[dict] = field(default_factory=list)
    sampled_metrics: dict[str, float] = field(default_factory=dict)
    """The task's own statistics of the sampled completions (`task.sample_metrics`, e.g. the
    retry task's slip and recovery rates); empty for tasks without them."""

    def as_metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """Namespaced metrics for metrics.jsonl."""
        metrics = {f"{prefix}accuracy": self.accuracy, f"{prefix}completion_len": self.mean_completion_length}
        if self.sampled_accuracy is not None:
            metrics[f"{prefix}sampled_accuracy"] = self.sampled_accuracy
            metrics[f"{prefix}pass@{self.k}"] = self.pass_at_k
        metrics.update({f"{prefix}sampled_{name}": value for name, value in self.sampled_metrics.items()
                        if value == value})  # nan (e.g. a recovery rate without slips) is left out
        return metrics


def answer(model, tokenizer, task: Task, problems: list[Problem], greedy: bool = True,
           temperature: float = 1.0, batch_size: int = 64, generator: torch.Generator | None = None,
           progress: bool = False, max_new_tokens: int = 0) -> list[dict]:
    """Generate and verify one completion per problem; one record per problem. Answers are
    cut at `max_new_tokens` when it is set and below the task's own limit."""
    limit = min(task.max_new_tokens, max_new_tokens) if max_new_tokens > 0 else task.max_new_tokens
    records = []
    chunks = range(0, len(problems), batch_size)
    for start in tqdm(chunks, desc="evaluating", disable=not progress, leave=False):
        chunk = problems[start : start + batch_size]
        rollouts = generate(model, tokenizer, [p.prompt for p in chunk], limit,
                            temperature=temperature, greedy=greedy, generator=generator)
        for problem, completion, length in zip(chunk, rollouts.completions, rollouts.completion_lengths):
            verdict = task.verify(problem, completion)
            records.append({"prompt": problem.prompt, "answer": problem.answer, "completion": completion,
                            "parsed": verdict.parsed, "correct": verdict.correct, "reward": verdict.reward,
                            "length": length})
    return records


def evaluate(model, tokenizer, task: Task, count: int = 200, samples_per_problem: int = 0,
             temperature: float = 1.0, batch_size: int = 64, seed: int = 0, progress: bool = False,
             max_new_tokens: int = 0) -> EvalResult:
    """Score `model` on the first `count` held-out problems of `task`.

    Args:
        samples_per_problem: k > 0 also samples k completions per problem at
            `temperature` and reports sampled accuracy and pass@k (any of k correct).
        seed: seeds sampling, so the same model gives the same sampled scores.
        max_new_tokens: > 0 cuts every answer at this many tokens (`RunConfig.eval_max_new_tokens`).

    Returns:
        EvalResult; `records` holds the greedy answers.
    """
    problems = task.eval_problems(count)
    records = answer(model, tokenizer, task, problems, greedy=True, batch_size=batch_size, progress=progress,
                     max_new_tokens=max_new_tokens)
    result = EvalResult(
        accuracy=sum(r["correct"] for r in records) / len(records),
        mean_completion_length=sum(r["length"] for r in records) / len(records),
        count=len(records),
        records=records,
    )
    if samples_per_problem > 0:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        repeated = [p for p in problems for _ in range(samples_per_problem)]
        # The k samples of a problem share a batch, and batches are k times larger (up to 256
        # rows): the decode loop's per-step overhead is paid once for more rows.
        sampled = answer(model, tokenizer, task, repeated, greedy=False, temperature=temperature,
                         batch_size=max(batch_size, min(256, batch_size * samples_per_problem)),
                         generator=generator, progress=progress, max_new_tokens=max_new_tokens)
        correct = [r["correct"] for r in sampled]
        groups = [correct[i : i + samples_per_problem] for i in range(0, len(correct), samples_per_problem)]
        result.sampled_accuracy = sum(correct) / len(correct)
        result.pass_at_k = sum(any(g) for g in groups) / len(groups)
        result.k = samples_per_problem
        if hasattr(task, "sample_metrics"):
            result.sampled_metrics = task.sample_metrics(repeated, [r["completion"] for r in sampled])
    return result
