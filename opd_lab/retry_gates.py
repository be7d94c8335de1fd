"""The retry scenario's build gates: does the teacher retract its slips, and only its slips?

The `retry` scenario (opd_lab/tasks/retry.py) is worth running only if its teacher
(a) solves the task cleanly, (b) writes `!` after a wrong step it is forced into,
(c) does not write `!` after a right step, and (d) rarely slips and retracts in its own
samples, so SFT on them shows almost no recoveries. `opd-lab lab build --scenario retry`
measures the four and prints them; a failed gate means the scenario says nothing about
recovery, and the build says so.

    (a) clean greedy accuracy            >= 98%
    (b) P(`!` | a forced wrong step)      >= 0.9   (mean over problems and columns)
    (c) P(`!` | a right step)             <= 0.01
    (d) `!` per step in its own samples   <= 2%    (temperature 1)

Example:
    >>> gates = retry_gates(teacher, tokenizer, get_task("addition-retry"), problems)  # doctest: +SKIP
    >>> print("\\n".join(format_retry_gates(gates)))  # doctest: +SKIP
"""

from __future__ import annotations

import random

import torch

from opd_lab.eval import answer
from opd_lab.generation import forward_logits, rollouts_from_texts
from opd_lab.tasks.addition import worked_solution
from opd_lab.tasks.retry import RETRACT, corrupt_step, retry_metrics

GATES = {"clean_accuracy": (">=", 0.98), "p_retract_after_wrong": (">=", 0.9),
         "p_retract_after_right": ("<=", 0.01), "sampled_retract_rate": ("<=", 0.02)}


def step_prefixes(problem, digits: int, rng: random.Random) -> tuple[str, str]:
    """Two completion prefixes of `problem` at a random column c: the right steps up to and
    including column c, and the right steps before c followed by a wrong step c."""
    a, b = (int(x) for x in problem.prompt.rstrip("=").split("+"))
    steps = worked_solution(a, b, digits).split(";")[:-1]
    column = rng.randrange(digits)
    carry = 0
    for c in range(column):
        carry = (((a // 10**c) % 10) + ((b // 10**c) % 10) + carry) // 10
    x, y = (a // 10**column) % 10, (b // 10**column) % 10
    before = "".join(step + ";" for step in steps[:column])
    return before + steps[column], before + corrupt_step(x, y, carry, rng)


@torch.no_grad()
def next_token_probability(model, tokenizer, prompts: list[str], prefixes: list[str], token: str,
                           batch_size: int = 64) -> list[float]:
    """P(`token` | prompt + prefix) under `model`, for each pair."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    found = []
    for start in range(0, len(prompts), batch_size):
        rollouts = rollouts_from_texts(tokenizer, prompts[start : start + batch_size],
                                       prefixes[start : start + batch_size])
        logits_BSV = forward_logits(model, rollouts.sequences_BS, rollouts.attention_mask_BS)
        for row, prefix in enumerate(prefixes[start : start + batch_size]):
            # The logits at the prefix's last character predict the character after it (where EOS was put).
            position = rollouts.prompt_length - 1 + len(prefix)
            found.append(float(torch.softmax(logits_BSV[row, position], dim=-1)[token_id]))
    return found


def retry_gates(teacher, tokenizer, task, problems, seed: int = 0) -> dict:
    """Measure the four gates on `problems` (the build's validation set).

    Returns:
        `{name: {"value", "bound", "passed"}}` for each of `GATES`, plus `passed` (all four)
        and `problems`.
    """
    rng = random.Random(seed + 31)
    prompts = [p.prompt for p in problems]
    pairs = [step_prefixes(p, task.digits, rng) for p in problems]
    greedy = answer(teacher, tokenizer, task, problems, greedy=True)
    generator = torch.Generator().manual_seed(seed)
    sampled = answer(teacher, tokenizer, task, problems, greedy=False, temperature=1.0, generator=generator)
    values = {
        "clean_accuracy": sum(r["correct"] for r in greedy) / len(greedy),
        "p_retract_after_wrong": _mean(next_token_probability(teacher, tokenizer, prompts, [w for _, w in pairs], RETRACT)),
        "p_retract_after_right": _mean(next_token_probability(teacher, tokenizer, prompts, [r for r, _ in pairs], RETRACT)),
        "sampled_retract_rate": retry_metrics(problems, [r["completion"] for r in sampled], task.digits)["retract_rate"],
    }
    gates = {}
    for name, (relation, bound) in GATES.items():
        value = values[name]
        gates[name] = {"value": value, "bound": f"{relation} {bound:g}",
                       "passed": value >= bound if relation == ">=" else value <= bound}
    gates["passed"] = all(gate["passed"] for gate in gates.values())
    gates["problems"] = len(problems)
    return gates


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


LABELS = {"clean_accuracy": "(a) clean greedy accuracy", "p_retract_after_wrong": "(b) P(!) after a forced wrong step",
          "p_retract_after_right": "(c) P(!) after a right step", "sampled_retract_rate": "(d) ! per step in its samples"}


def format_retry_gates(gates: dict) -> list[str]:
    """One line per retry gate, then the scenario's fate."""
    lines = [f"retry gates on {gates['problems']} validation problems:"]
    for name, label in LABELS.items():
        gate = gates[name]
        lines.append(f"  {label:<38} {gate['value']:.4f}  (gate {gate['bound']})  "
                     f"{'passed' if gate['passed'] else 'FAILED'}")
    lines.append("  all retry gates passed" if gates["passed"] else
                 "  a retry gate FAILED: this teacher cannot show recovery; drop the scenario (see docs/claims.md)")
    return lines
