"""Where a run's training prompts come from: fresh problems, or epochs over a fixed pool.

By default every step draws new problems from the task's training split, so no prompt
is seen twice. With `prompt_pool=N` the run draws `N` problems once and then goes over
them in shuffled epochs. Every method with the same seed gets the same pool, which is
what a comparison of **data reuse** needs (the seed names reusing prompts over several
epochs as an advantage of on-policy distillation: a student that samples again sees a
new completion each epoch, while SFT on a fixed teacher dataset sees the same one).

Example:
    >>> from opd_lab.tasks import get_task
    >>> source = PromptSource(get_task("addition"), pool_size=4, seed=0)
    >>> epoch = source.next_batch(4) + source.next_batch(4)
    >>> len({p.prompt for p in epoch})  # two epochs over the same 4 prompts
    4
"""

from __future__ import annotations

import random

from opd_lab.tasks import Problem, Task

# Offsets the pool's RNG from the per-step RNG, so a pool of N prompts is not simply the
# first N prompts that a pool-less run with the same seed would draw.
POOL_SEED_OFFSET = 7_919


class PromptSource:
    """Training prompts for one run (see the module docstring)."""

    def __init__(self, task: Task, pool_size: int, seed: int):
        self.task = task
        self.rng = random.Random(seed)
        self.pool: list[Problem] = (task.train_problems(pool_size, random.Random(POOL_SEED_OFFSET + seed))
                                    if pool_size else [])
        self._order: list[int] = []
        self._position = 0

    def next_batch(self, count: int) -> list[Problem]:
        """`count` training problems: fresh ones, or the next ones of the current epoch."""
        if not self.pool:
            return self.task.train_problems(count, self.rng)
        batch = []
        while len(batch) < count:
            if self._position >= len(self._order):
                self._order = list(range(len(self.pool)))
                self.rng.shuffle(self._order)
                self._position = 0
            batch.append(self.pool[self._order[self._position]])
            self._position += 1
        return batch

    def state(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self._order), "position": self._position}

    def load_state(self, state) -> None:
        if isinstance(state, tuple):  # checkpoints written before prompt pools: the bare RNG state
            self.rng.setstate(state)
            return
        self.rng.setstate(state["rng"])
        self._order, self._position = list(state["order"]), state["position"]
