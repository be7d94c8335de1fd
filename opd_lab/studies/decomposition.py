"""The `decomposition` diagnostic (issue 21, item 5): how much of SFT's lead over OPD on the
baseline lab is the estimator, how much the divergence, and how much on-policy data.

SFT and sampled OPD differ in three things at once. SFT trains on **teacher-written
prefixes** with the **forward KL**, estimated from **one sampled token** per position (the
cross-entropy of the teacher's token). OPD trains on **student-written prefixes** with the
**reverse KL**, estimated from the student's sampled token (`losses.opd_sampled_advantages`,
an unbounded log-ratio). This module crosses the three factors and trains one arm per
meaningful cell (`CELLS`), every arm with the same learning rate, batch and budget:

| prefix  | divergence | estimators run                                  |
| ------- | ---------- | ----------------------------------------------- |
| teacher | forward    | sampled (= SFT), exact                          |
| teacher | reverse    | exact, topk                                     |
| student | forward    | exact                                           |
| student | reverse    | sampled (= OPD), clipped, topk, exact           |

Cells left out, and why:
- teacher prefix, reverse KL, sampled or clipped: the sampled reverse-KL estimator needs a
  token drawn from the *student* at each position; on a teacher-written prefix that token
  is not the next prefix token, so it would be a side sample per position that no
  published method uses (and the engine has no such path);
- student prefix, forward KL, sampled or clipped: the one-sample forward KL needs a token
  drawn from the *teacher* at each position of the student's prefix (a DAgger-style label
  per token); not an OPD objective, and not in the engine;
- forward KL with top-k: the top-k renormalised estimator is defined for the reverse KL over
  the student's top-k (tinker-cookbook PR #677); a forward version is another estimator;
- teacher prefix, forward KL, clipped: the cross-entropy has no advantage to clip.

Teacher-prefix arms with an exact loss use `RunConfig.off_policy_loss = "exact"`
(`losses.exact_loss` on the teacher's samples: word-level distillation).

What it reports, per arm (all pure functions of the runs' metrics rows):
- steps to close 50% and 80% of the gap from the base student to the teacher
  (`report.gap_target`, `report.cost_to_reach`: a target held at the next evaluation),
  on greedy and on sampled (temperature-1) accuracy;
- the mean held-out accuracy over the run's evaluations after step 0 (`curve_accuracy`,
  the area under the learning curve per evaluation): the quantity the decomposition splits;
- the gradient noise of its loss at the base student (`gradient_variance`).

The decomposition (`attribution`) walks from sampled OPD to SFT one factor at a time,
through cells that were all measured:

    OPD sampled --estimator--> OPD exact --prefix--> teacher-prefix reverse KL (exact)
        --divergence--> teacher-prefix forward KL (exact) --estimator--> SFT

The four steps add up to SFT's lead exactly; the estimator's share is the first and the
last step together. The path's order is a choice: interactions between factors go to the
step that meets them. `attribution` also gives the prefix effect under the forward KL, so
a reader sees how much the prefix effect depends on the divergence.

    python -m bench.decomposition --quick         # tiny lab, seconds
    python -m bench.decomposition --out DIR       # the baseline lab (built first)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from opd_lab import report
from opd_lab.studies.arms import arm_overrides
from opd_lab.config import RunConfig

DECOMPOSITION_FRACTIONS = (0.5, 0.8)
RESAMPLINGS = 8


@dataclass(frozen=True)
class Cell:
    """One cell of the cross: where the prefixes come from, which divergence, which estimator."""

    prefix: str  # "teacher" or "student"
    divergence: str  # "forward" or "reverse"
    estimator: str  # "sampled", "clipped", "topk" or "exact"
    fields: dict = field(default_factory=dict)
    """The RunConfig fields beyond the method's arm (`compare.arm_overrides`)."""

    @property
    def name(self) -> str:
        return f"{self.prefix}-{self.divergence}-{self.estimator}"

    @property
    def method(self) -> str:
        return "sft" if self.prefix == "teacher" else "opd"

    @property
    def label(self) -> str:
        """A reader's name: `SFT`, `OPD`, or the cell's three factors."""
        known = {"teacher-forward-sampled": "SFT (cross-entropy on teacher samples)",
                 "student-reverse-sampled": "OPD (sampled estimator)"}
        return known.get(self.name, f"{self.prefix} prefix · {self.divergence} KL · {self.estimator}")


_EXACT_ON_TEACHER = {"off_policy_loss": "exact"}
CELLS: dict[str, Cell] = {cell.name: cell for cell in (
    Cell("teacher", "forward", "sampled", {}),
    Cell("teacher", "forward", "exact", {**_EXACT_ON_TEACHER, "estimator": "full", "divergence": "forward_kl"}),
    Cell("teacher", "reverse", "exact", {**_EXACT_ON_TEACHER, "estimator": "full", "divergence": "reverse_kl"}),
    Cell("teacher", "reverse", "topk", {**_EXACT_ON_TEACHER, "estimator": "topk"}),
    Cell("student", "forward", "exact", {"estimator": "full", "divergence": "forward_kl"}),
    Cell("student", "reverse", "sampled", {"estimator": "sampled"}),
    Cell("student", "reverse", "clipped", {"estimator": "clipped"}),
    Cell("student", "reverse", "topk", {"estimator": "topk"}),
    Cell("student", "reverse", "exact", {"estimator": "full", "divergence": "reverse_kl"}),
)}
SFT_CELL, OPD_CELL = "teacher-forward-sampled", "student-reverse-sampled"
# The walk from OPD to SFT: (factor, from cell, to cell); each step changes one factor.
PATH = (("estimator", "student-reverse-sampled", "student-reverse-exact"),
        ("prefix", "student-reverse-exact", "teacher-reverse-exact"),
        ("divergence", "teacher-reverse-exact", "teacher-forward-exact"),
        ("estimator", "teacher-forward-exact", "teacher-forward-sampled"))


def training_order(cells) -> list[str]:
    """`cells` with those on `PATH` first (SFT, OPD, then the walk's other cells), so that a
    budget cut short still leaves the cells the decomposition needs.

    Example:
        >>> training_order(["student-reverse-topk", "student-reverse-exact", "teacher-forward-sampled"])
        ['teacher-forward-sampled', 'student-reverse-exact', 'student-reverse-topk']
    """
    path = [SFT_CELL, OPD_CELL, *dict.fromkeys(cell for _, start, end in PATH for cell in (start, end))]
    return sorted(cells, key=lambda name: path.index(name) if name in path else len(path) + list(CELLS).index(name))


def cell_overrides(cell: Cell, sequences_per_step: int) -> dict:
    """The config fields of one cell's arm at `sequences_per_step` (the `compare.arm_overrides` style).

    Example:
        >>> cell_overrides(CELLS["teacher-reverse-exact"], 32)["method"], RunConfig(
        ...     **cell_overrides(CELLS["teacher-reverse-exact"], 32)).off_policy_loss
        ('sft', 'exact')
    """
    return {**arm_overrides(cell.method, sequences_per_step), **cell.fields}


def arm_configs(base: RunConfig, sequences_per_step: int, cells=tuple(CELLS), name_prefix: str = "decomp"
                ) -> dict[str, RunConfig]:
    """One validated config per cell: `base` (task, models, budget, rate, seed, evaluation)
    with the cell's fields; named `<prefix>-<cell>`. Every arm gets the same learning rate."""
    return {name: base.with_overrides(name=f"{name_prefix}-{name}", on_policy_fraction=1.0, reward_coef=0.0,
                                      **cell_overrides(CELLS[name], sequences_per_step))
            for name in cells}


# --- costs and scores from the metrics rows ----------------------------------------------

def steps_to_gap(rows: list[dict], base_accuracy: float, teacher_accuracy: float,
                 fractions=DECOMPOSITION_FRACTIONS, metric: str = report.ACCURACY) -> dict[float, int | None]:
    """Optimizer steps to close each fraction of the gap (`report.cost_to_reach`), None when not reached.

    Example:
        >>> rows = [{"step": 0, "eval/accuracy": 0.5}, {"step": 10, "eval/accuracy": 0.8},
        ...         {"step": 20, "eval/accuracy": 0.9}]
        >>> steps_to_gap(rows, 0.5, 1.0)
        {0.5: 10, 0.8: 20}
    """
    found = {}
    for fraction in fractions:
        cost = report.cost_to_reach(rows, report.gap_target(base_accuracy, teacher_accuracy, fraction), metric)
        found[fraction] = cost["steps"] if cost else None
    return found


def curve_accuracy(rows: list[dict], metric: str = report.ACCURACY) -> float | None:
    """The mean of `metric` over the evaluations after step 0 (None without any): the area
    under the learning curve per evaluation, which rewards learning early and learning much.

    Example:
        >>> curve_accuracy([{"step": 0, "eval/accuracy": 0.5}, {"step": 5, "eval/accuracy": 0.6},
        ...                 {"step": 10, "eval/accuracy": 0.8}])
        0.7
    """
    values = [row[metric] for row in rows
              if row.get("step", 0) > 0 and isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])]
    return sum(values) / len(values) if values else None


def attribution(scores: dict[str, float | None]) -> dict:
    """SFT's lead over sampled OPD in `scores` (one number per cell), split along `PATH`.

    Returns:
        `{"lead", "steps": [{"factor", "from", "to", "change"}], "shares": {factor: points},
        "prefix_under_forward"}`; `lead` and shares are None when a cell on the path is missing.
        The shares add up to the lead.

    Example:
        >>> found = attribution({"student-reverse-sampled": 0.60, "student-reverse-exact": 0.70,
        ...                      "teacher-reverse-exact": 0.75, "teacher-forward-exact": 0.80,
        ...                      "teacher-forward-sampled": 0.90})
        >>> round(found["lead"], 6), {k: round(v, 6) for k, v in found["shares"].items()}
        (0.3, {'estimator': 0.2, 'prefix': 0.05, 'divergence': 0.05})
    """
    steps = []
    for factor, start, end in PATH:
        change = (scores[end] - scores[start] if scores.get(start) is not None and scores.get(end) is not None
                  else None)
        steps.append({"factor": factor, "from": start, "to": end, "change": change})
    complete = all(step["change"] is not None for step in steps)
    shares = {}
    for step in steps:
        if complete:
            shares[step["factor"]] = shares.get(step["factor"], 0.0) + step["change"]
    forward = ("teacher-forward-exact", "student-forward-exact")
    prefix_forward = (scores[forward[0]] - scores[forward[1]]
                      if all(scores.get(name) is not None for name in forward) else None)
    return {"lead": scores[SFT_CELL] - scores[OPD_CELL] if complete else None, "steps": steps,
            "shares": shares if complete else None, "prefix_under_forward": prefix_forward}


def attribution_sentence(found: dict, metric_words: str, noise: float | None = None) -> str:
    """The decomposition in one paragraph, every number from `found` (`attribution`).

    `noise`: the smallest difference the evaluation can tell apart (two standard errors),
    named beside the shares that are smaller.
    """
    if found["lead"] is None:
        return "A cell on the path from OPD to SFT has no measurement, so SFT's lead cannot be split."
    lead, shares = found["lead"], found["shares"]
    points = lambda value: f"{100 * value:+.1f} points"  # noqa: E731
    if lead <= 0:
        text = (f"On {metric_words} (mean over the run's evaluations), SFT did not lead OPD here "
                f"({points(lead)}), so there is no lead to split; the steps from OPD to SFT were: "
                + ", ".join(f"{s['factor']} {points(s['change'])}" for s in found["steps"]) + ".")
    else:
        first, last = found["steps"][0]["change"], found["steps"][3]["change"]
        text = (f"On {metric_words} (mean over the run's evaluations), SFT led OPD with the sampled estimator by "
                f"{100 * lead:.1f} points. The estimator accounts for {points(shares['estimator'])} "
                f"({shares['estimator'] / lead:.0%} of the lead: {points(first)} from OPD's sampled to its exact "
                f"reverse KL, {points(last)} from the exact forward KL to the cross-entropy on teacher samples), "
                f"the prefix source for {points(shares['prefix'])} ({shares['prefix'] / lead:.0%}: the exact "
                f"reverse KL on teacher-written instead of the student's own prefixes; a negative share means "
                f"on-policy data helped), and the divergence for {points(shares['divergence'])} "
                f"({shares['divergence'] / lead:.0%}: forward instead of reverse KL on teacher prefixes).")
    if found["prefix_under_forward"] is not None:
        text += (f" Under the forward KL (exact), teacher-written prefixes changed the score by "
                 f"{points(found['prefix_under_forward'])}.")
    if noise is not None:
        small = [f"{s['factor']} ({s['from']} to {s['to']}, {points(s['change'])})"
                 for s in found["steps"] if abs(s["change"]) < noise]
        if small:
            text += (f" Steps smaller than the evaluation's resolution ({100 * noise:.1f} points: two standard "
                     f"errors of the difference of two evaluations) are within noise: {'; '.join(small)}.")
    return text


# --- gradient noise --------------------------------------------------------------------

@dataclass(frozen=True)
class GradientVariance:
    """How much one loss's gradient changes when the same prompts are resampled.

    With `g_r` the gradient of the loss (a mean over completion tokens) w.r.t. all trainable
    parameters at resampling r of R:
    - `variance`: the mean over parameters of the unbiased variance of `g_r` across r;
    - `per_token_variance`: `variance * mean_tokens`, with `mean_tokens` the completion tokens
      per resampling: the variance one token's contribution would have if tokens were
      independent (the batch gradient is their mean), so arms whose completions differ in
      length compare per token;
    - `signal`: the mean over parameters of the squared mean gradient, and `noise_to_signal`
      = `variance / signal` (scale-free: losses of different size compare).
    All are 0 for a loss that does not depend on the resampling.
    """

    resamplings: int
    mean_tokens: float
    variance: float
    per_token_variance: float
    signal: float
    noise_to_signal: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def gradient_variance(loss_of_resampling: Callable[[int], tuple], parameters: list,
                      resamplings: int = RESAMPLINGS) -> GradientVariance:
    """Gradient noise over `resamplings` draws of one batch.

    Args:
        loss_of_resampling: `r -> (loss, completion_tokens)`; the loss of the fixed batch at
            resampling r (fresh samples of its completions, or of the estimator's samples).
        parameters: the trainable parameters the gradient is taken with respect to.
        resamplings: R >= 2.
    Returns:
        a `GradientVariance`.

    Example:
        >>> import torch
        >>> weight = torch.nn.Parameter(torch.ones(3))
        >>> gradient_variance(lambda r: ((weight * 2.0).sum(), 3), [weight]).variance
        0.0
    """
    import torch

    if resamplings < 2:
        raise ValueError(f"a variance needs at least 2 resamplings, got {resamplings}")
    gradients, tokens = [], []
    for resampling in range(resamplings):
        for parameter in parameters:
            parameter.grad = None
        loss, token_count = loss_of_resampling(resampling)
        loss.backward()
        gradients.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().double()
                                    for p in parameters]))
        tokens.append(float(token_count))
    for parameter in parameters:
        parameter.grad = None
    stacked_RP = torch.stack(gradients)
    variance = float(stacked_RP.var(dim=0, unbiased=True).mean())
    signal = float(stacked_RP.mean(dim=0).pow(2).mean())
    mean_tokens = sum(tokens) / len(tokens)
    return GradientVariance(resamplings, mean_tokens, variance, variance * mean_tokens, signal,
                            variance / signal if signal > 0 else None)


def trainer_loss(trainer, problems: list, seed: int) -> tuple:
    """The loss one training step of `trainer` (`opd_lab.trainer.Trainer`) would take on
    `problems`, sampled with `seed`, before gradient clipping: the step's own parts
    (student-sampled and teacher-written) averaged over their completion tokens, as
    `Trainer.step` does in a one-process run.

    Returns:
        `(loss, completion_tokens)`.
    """
    from opd_lab.trainer import token_weighted_sum

    trainer.generator.manual_seed(seed)
    total, tokens = token_weighted_sum(trainer._parts(problems, logging=False), trainer.device)
    return total / tokens.clamp(min=1), int(tokens)


def arm_gradient_variance(config: RunConfig, work_dir, prompts: int, resamplings: int = RESAMPLINGS,
                          seed: int = 0) -> GradientVariance:
    """`gradient_variance` of one arm's training loss at its starting student, on the first
    `prompts` training prompts of `config.seed` (the same prompts for every arm with that
    seed), resampled `resamplings` times with seeds `seed`, `seed + 1`, ..."""
    from opd_lab.trainer import Trainer

    trainer = Trainer(config, work_dir)
    problems = trainer.prompts.next_batch(prompts)
    trainable = [p for p in trainer.student.parameters() if p.requires_grad]
    return gradient_variance(lambda r: trainer_loss(trainer, problems, seed + r), trainable, resamplings)


# --- the report ------------------------------------------------------------------------

def decomposition_report(runs: dict[str, list[dict]], variances: dict[str, dict], reference: dict,
                         eval_count: int | None = None) -> dict:
    """Every number of the report, computed from the arms' metrics rows.

    Args:
        runs: cell name -> that arm's metrics rows.
        variances: cell name -> `GradientVariance.to_dict()` (may miss cells).
        reference: `{"teacher", "student"}` greedy accuracies, and `teacher_sampled`,
            `student_sampled` for the sampled gap (`experiment.reference_accuracies`).
        eval_count: problems per evaluation (for the noise level named in the sentences).
    Returns:
        `{"arms": {cell: {...}}, "attribution": {metric: ...}, "sentences": {metric: str}}`.
    """
    metrics = {report.ACCURACY: (reference["teacher"], reference["student"])}
    if "teacher_sampled" in reference and report.has_metric(list(runs.values()), report.SAMPLED_ACCURACY):
        metrics[report.SAMPLED_ACCURACY] = (reference["teacher_sampled"], reference["student_sampled"])
    arms = {}
    for name, rows in runs.items():
        cell = CELLS[name]
        entry = {"prefix": cell.prefix, "divergence": cell.divergence, "estimator": cell.estimator,
                 "label": cell.label, "steps": max((row.get("step", 0) for row in rows), default=0),
                 "gradient": variances.get(name)}
        for metric, (teacher, base) in metrics.items():
            entry[metric] = {"final": report.final_accuracy(rows, metric), "curve": curve_accuracy(rows, metric),
                             "steps_to_gap": {str(f): s for f, s in steps_to_gap(rows, base, teacher,
                                                                                metric=metric).items()}}
        arms[name] = entry
    found, sentences = {}, {}
    for metric in metrics:
        scores = {name: arms[name][metric]["curve"] for name in arms}
        found[metric] = attribution(scores)
        level = max((s for s in scores.values() if s is not None), default=0.5)
        noise = 2 * math.sqrt(2) * report.standard_error(level, eval_count) if eval_count else None
        teacher, base = metrics[metric]
        sentences[metric] = (attribution_sentence(found[metric], report.ACCURACY_WORDS[metric], noise)
                             if teacher > base else
                             f"On {report.ACCURACY_WORDS[metric]} the teacher ({teacher:.1%}) is not ahead of the "
                             f"base student ({base:.1%}): there is no gap, so no lead to split.")
    return {"arms": arms, "attribution": found, "sentences": sentences, "reference": reference,
            "eval_count": eval_count, "fractions": list(DECOMPOSITION_FRACTIONS)}


def _steps_text(value) -> str:
    return "not reached" if value is None else str(value)


def decomposition_markdown(data: dict, title: str = "Decomposition of SFT's lead on the baseline lab") -> str:
    """The report as markdown: settings, one table row per arm, the decomposition sentences."""
    reference = data["reference"]
    lines = [f"# {title}", ""]
    if data.get("settings"):
        lines += ["Settings: " + ", ".join(f"{key} {value}" for key, value in data["settings"].items()) + ".", ""]
    lines += [f"Teacher {reference['teacher']:.1%} greedy"
              + (f", {reference['teacher_sampled']:.1%} sampled" if "teacher_sampled" in reference else "")
              + f"; base student {reference['student']:.1%} greedy"
              + (f", {reference['student_sampled']:.1%} sampled" if "student_sampled" in reference else "")
              + f" ({data.get('eval_count')} held-out problems). " + report.GAP_DEFINITION, ""]
    metric_names = [m for m in (report.ACCURACY, report.SAMPLED_ACCURACY) if m in data["attribution"]]
    short = {report.ACCURACY: "greedy", report.SAMPLED_ACCURACY: "sampled"}
    headers = ["arm", "prefix", "divergence", "estimator"]
    for metric in metric_names:
        headers += [f"{short[metric]} final", f"{short[metric]} curve mean",
                    *[f"{short[metric]} steps to {float(f):.0%}" for f in data["fractions"]]]
    headers += ["grad variance / token", "grad noise / signal"]
    lines += ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for name in sorted(data["arms"], key=lambda name: list(CELLS).index(name)):  # JSON files sort their keys
        arm = data["arms"][name]
        cells = [arm["label"], arm["prefix"], arm["divergence"], arm["estimator"]]
        for metric in metric_names:
            found = arm[metric]
            curve = found["curve"]
            cells += [f"{found['final']:.1%}", "n/a" if curve is None else f"{curve:.1%}",
                      *[_steps_text(found["steps_to_gap"][str(f)]) for f in data["fractions"]]]
        gradient = arm.get("gradient")
        cells += [f"{gradient['per_token_variance']:.3g}" if gradient else "not measured",
                  f"{gradient['noise_to_signal']:.3g}" if gradient and gradient["noise_to_signal"] is not None
                  else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    resamplings = next((arm["gradient"]["resamplings"] for arm in data["arms"].values() if arm.get("gradient")), None)
    lines += ["", "Steps to a fraction of the gap: the first evaluation at or above it that the next evaluation "
              "confirms (`report.cost_to_reach`). Curve mean: mean held-out accuracy over the evaluations after "
              "step 0. Gradient noise: the loss's gradient at the base student on one fixed batch of prompts, "
              f"resampled {resamplings} times (`decomposition.GradientVariance`): the mean over parameters of its "
              "variance across resamplings, times the completion tokens per resampling (per token); and that variance over "
              "the mean gradient's square (noise / signal).", "", "## How much of SFT's lead is what", ""]
    for metric in metric_names:
        lines += [data["sentences"][metric], ""]
    return "\n".join(lines)
