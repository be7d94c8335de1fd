"""Several tasks in one run: batches mixed by weight, and metrics split by task.

Multi-teacher on-policy distillation ("merging experts") trains one student on the
prompts of several tasks, each judged by its own teacher (`teacher_routing`). This
module holds the two task-level pieces of it that do not touch a model:

- `TaskMixSource`: the training prompts of a step, `batch_size` of them shared among
  the tasks by their weights (largest remainder, so 0.5/0.5 of 5 is 3 + 2, the first
  task first) and interleaved, so that the on-policy and teacher-written shares of a
  batch both hold every task. Each problem carries its task's name (`Problem.task`).
- `per_task_means`: per-row values (accuracy, a row's KL and its tokens) averaged per
  task, as the `KEY/TASK` metrics of metrics.jsonl (`run_folder.task_metric`).

Example:
    >>> batch_shares(5, {"addition": 0.5, "sorting": 0.5})
    {'addition': 3, 'sorting': 2}
    >>> from opd_lab.tasks import get_task
    >>> source = TaskMixSource({"addition": get_task("addition"), "sorting": get_task("sorting")},
    ...                        {"addition": 1.0, "sorting": 1.0}, pool_size=0, seed=0)
    >>> [p.task for p in source.next_batch(4)]
    ['addition', 'sorting', 'addition', 'sorting']
"""

from __future__ import annotations

import dataclasses
import math

import torch

from opd_lab.prompt_source import PromptSource
from opd_lab.run_folder import task_metric
from opd_lab.tasks import Problem, Task

# Seeds each task's own prompt stream apart from the others' (task i gets seed + i * this).
TASK_SEED_STRIDE = 10_007


def batch_shares(count: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `count` rows among tasks in proportion to `weights` (largest remainder;
    ties go to the task named first). Every task with a positive weight gets its share,
    which may be 0 for a small `count`; a task of weight 0 gets none."""
    total = sum(weights.values())
    exact = {task: count * weight / total for task, weight in weights.items()}
    shares = {task: math.floor(value) for task, value in exact.items()}
    order = sorted((task for task in exact if weights[task] > 0),  # a task of weight 0 is only evaluated
                   key=lambda task: (-(exact[task] - shares[task]), list(weights).index(task)))
    for task in order[: count - sum(shares.values())]:
        shares[task] += 1
    return shares


def interleave(groups: dict[str, list]) -> list:
    """The groups' items merged evenly: item j of a group of n sits at (j + 0.5) / n of the way."""
    keyed = [((j + 0.5) / len(items), order, item) for order, items in enumerate(groups.values())
             for j, item in enumerate(items)]
    return [item for *_, item in sorted(keyed, key=lambda entry: entry[:2])]


class TaskMixSource:
    """Training prompts of several tasks, mixed by weight (see the module docstring).

    With `pool_size` N, each task keeps a fixed pool of its share of N prompts
    (`prompt_source.PromptSource`), gone over in epochs.
    """

    def __init__(self, tasks: dict[str, Task], weights: dict[str, float], pool_size: int, seed: int):
        self.weights = dict(weights)
        pools = batch_shares(pool_size, weights) if pool_size else dict.fromkeys(tasks, 0)
        self.sources = {name: PromptSource(task, max(pools[name], 1 if pool_size else 0), seed + i * TASK_SEED_STRIDE)
                        for i, (name, task) in enumerate(tasks.items())}

    @property
    def pool(self) -> list[Problem]:
        """Every task's fixed pool, tagged with its task (empty without a pool)."""
        return [dataclasses.replace(p, task=name) for name, source in self.sources.items() for p in source.pool]

    def next_batch(self, count: int) -> list[Problem]:
        shares = batch_shares(count, self.weights)
        return interleave({name: [dataclasses.replace(p, task=name) for p in source.next_batch(shares[name])]
                           for name, source in self.sources.items()})

    def state(self) -> dict:
        return {name: source.state() for name, source in self.sources.items()}

    def load_state(self, state: dict) -> None:
        for name, source in self.sources.items():
            source.load_state(state[name])


def per_task_means(tasks: list[str], row_values: dict[str, torch.Tensor],
                   row_tokens: torch.Tensor | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Per-task means of per-row values, as metrics and their weights (for `World.mean_metrics`).

    Args:
        tasks: the task of each row (B).
        row_values: metric key -> (B,) values. A key ending in "_sum" is a per-row sum
            over tokens (e.g. a row's summed KL): its task mean divides by the task's
            tokens (`row_tokens`, (B,)) and drops the suffix; the others are means over rows.
    Returns:
        `({task_metric(key, task): mean}, {same key: rows or tokens it averages})`.

    Example:
        >>> per_task_means(["a", "b", "a"], {"train/accuracy": torch.tensor([1.0, 0.0, 0.0])})[0]
        {'train/accuracy/a': 0.5, 'train/accuracy/b': 0.0}
    """
    metrics, weights = {}, {}
    for task in dict.fromkeys(tasks):
        rows = torch.tensor([t == task for t in tasks])
        for key, values in row_values.items():
            if key.endswith("_sum"):
                tokens = float(row_tokens[rows].sum())
                name, value, weight = key.removesuffix("_sum"), float(values[rows].sum()) / max(tokens, 1.0), tokens
            else:
                name, value, weight = key, float(values[rows].float().mean()), float(rows.sum())
            metrics[task_metric(name, task)], weights[task_metric(name, task)] = value, weight
    return metrics, weights


def per_task_metrics(tasks: list[str], verdicts: list, mask_BL: torch.Tensor, kl_name: str = "",
                     kl_BL: torch.Tensor | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """A batch part's accuracy, reward and (when scored) KL per task, with their weights.

    Args:
        tasks: each row's task; verdicts: each row's `Verdict`; mask_BL: (B, L) completion mask;
        kl_name, kl_BL: the per-token KL and its metric name (`objectives.TokenKL`).
    """
    rows = {"train/accuracy": torch.tensor([float(v.correct) for v in verdicts]),
            "train/reward": torch.tensor([float(v.reward) for v in verdicts])}
    if kl_name:
        rows[f"train/{kl_name}_sum"] = (kl_BL * mask_BL).sum(dim=1).cpu()
    return per_task_means(tasks, rows, mask_BL.sum(dim=1).cpu())


def combine_task_metrics(per_task: dict[str, dict[str, float]], weights: dict[str, float]) -> dict[str, float]:
    """One evaluation of several tasks: each task's metrics under `task_metric` keys, and
    each metric's mean over the tasks, weighted as the batches are (the headline keys).

    Example:
        >>> combine_task_metrics({"a": {"eval/accuracy": 1.0}, "b": {"eval/accuracy": 0.0}}, {"a": 3, "b": 1})
        {'eval/accuracy/a': 1.0, 'eval/accuracy/b': 0.0, 'eval/accuracy': 0.75}
    """
    metrics = {task_metric(key, task): value for task, values in per_task.items() for key, value in values.items()}
    keys = [key for key in next(iter(per_task.values()), {}) if all(key in values for values in per_task.values())]
    total = sum(weights[task] for task in per_task)
    for key in keys:
        metrics[key] = sum(weights[task] * values[key] for task, values in per_task.items()) / total
    return metrics
