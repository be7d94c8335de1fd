"""Will on-policy distillation work for this teacher and student? Measured in about a minute.

OPD has preconditions that a training run only reveals after its budget is spent: the
two models must read and write the same tokens, the student needs the foundation
(OPD refines a skill, it does not teach one from scratch), the teacher must be
stronger, and the teacher must find the student's own tokens plausible enough for its
per-token signal to mean something. `measure_pair` measures each of them:

- tokenizers and chat templates (`models.check_pair_compatible`): a mismatch is
  reported, not raised, and nothing else is measured;
- the student's and the teacher's greedy pass rates on N held-out problems
  (`eval.evaluate`);
- on the student's own samples (temperature 1, N training prompts): the exact
  per-token reverse KL over the full vocabulary (`losses.per_token_reverse_kl`), the
  quantity OPD minimizes, and the share of sampled tokens that are in the teacher's
  top-k (k = 5 by default, what the token view lists: a token outside it is one the
  teacher would rarely write).

`judge` turns the numbers into a verdict (go / caution / no-go) with the thresholds
below; it is a pure function of the measurements.

Run:
    opd-lab preflight --teacher lab:baseline --student lab:no-foundation
    opd-lab preflight --teacher smollm2 --student smollm2 --task addition --problems 20 --json

Example:
    >>> verdict = judge(PairMeasurements("lab", "lab", "addition", problems=50, top_k=5,
    ...                                  student_pass_rate=0.0, teacher_pass_rate=0.98,
    ...                                  reverse_kl=2.1, top_k_agreement=0.2))
    >>> verdict.level, verdict.exit_code
    ('no-go', 3)
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass

import torch

from opd_lab.eval import evaluate
from opd_lab.generation import completion_logits, generate
from opd_lab.losses import masked_mean, per_token_reverse_kl
from opd_lab.models import PairMismatchError, check_pair_compatible, load_model, load_tokenizer
from opd_lab.tasks import DEFAULT_TASK, get_task

DEFAULT_PROBLEMS = 50
DEFAULT_TOP_K = 5
# A student below this greedy pass rate has no foundation. The lab's no-foundation
# scenario (student at 0%) measured OPD and RL at 0.0% after their whole budget, where
# SFT reached 10% (docs/claims.md, "foundation").
FOUNDATION_FLOOR = 0.05
# The teacher is clearly stronger when its pass rate beats the student's by this much
# (on 50 problems a pass rate is uncertain by about +-7 points).
TEACHER_MARGIN = 0.10
# Below this mean reverse KL (nats per sampled token) the student already writes almost
# what the teacher would: the per-token signal is near zero.
LITTLE_TO_LEARN_KL = 0.02
# Below this share of sampled tokens in the teacher's top-k, the teacher finds most of
# the student's tokens unlikely: the advantages are large and negative nearly everywhere.
LOW_TOP_K_AGREEMENT = 0.5

LEVELS = ("go", "caution", "no-go")
EXIT_CODES = {"go": 0, "caution": 0, "no-go": 3}


@dataclass(frozen=True)
class PairMeasurements:
    """What `measure_pair` measured; None where a measurement was not made."""

    teacher: str
    student: str
    task: str
    problems: int  # held-out problems per pass rate (fewer when the task has fewer); also prompts sampled
    top_k: int
    tokenizer_problem: str = ""  # why the tokenizers or chat templates differ; "" when they agree
    student_pass_rate: float | None = None  # greedy, on the held-out problems
    teacher_pass_rate: float | None = None
    reverse_kl: float | None = None  # mean exact KL(student || teacher) per sampled token, nats
    top_k_agreement: float | None = None  # share of sampled tokens in the teacher's top-k
    sampled_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Finding:
    """One reason for a verdict: its level and a plain-language sentence."""

    level: str
    message: str


@dataclass(frozen=True)
class PairVerdict:
    """The worst level among the findings ("go" when there are none), and the findings."""

    level: str
    findings: tuple[Finding, ...]

    @property
    def exit_code(self) -> int:
        """The CLI's exit status: 0 for go and caution, 3 for no-go."""
        return EXIT_CODES[self.level]


def judge(measurements: PairMeasurements) -> PairVerdict:
    """The verdict on a pair, from its measurements and this module's thresholds.

    Example:
        >>> healthy = PairMeasurements("t", "s", "addition", 50, 5, student_pass_rate=0.5,
        ...                            teacher_pass_rate=0.98, reverse_kl=0.4, top_k_agreement=0.9)
        >>> judge(healthy)
        PairVerdict(level='go', findings=())
    """
    m = measurements
    if m.tokenizer_problem:
        return PairVerdict("no-go", (Finding("no-go", f"the pair cannot be distilled as it is: {m.tokenizer_problem}"),))
    findings = []
    if m.student_pass_rate is not None and m.student_pass_rate < FOUNDATION_FLOOR:
        findings.append(Finding("no-go", (
            f"the student has no foundation ({m.student_pass_rate:.0%} on {m.problems} held-out problems): "
            "OPD refines, it does not teach from scratch; SFT first (on teacher samples or reference "
            "solutions), then distill")))
    if m.student_pass_rate is not None and m.teacher_pass_rate is not None:
        gap = m.teacher_pass_rate - m.student_pass_rate
        rates = f"teacher {m.teacher_pass_rate:.0%} vs student {m.student_pass_rate:.0%}"
        if gap <= 0:
            findings.append(Finding("no-go", (
                f"the teacher is not stronger ({rates}): OPD pulls the student toward the teacher; "
                "use a stronger teacher, or RL with the task's verifier")))
        elif gap < TEACHER_MARGIN:
            findings.append(Finding("caution", (
                f"the teacher is not clearly stronger ({rates}, under {TEACHER_MARGIN:.0%} apart): "
                "little accuracy to gain by imitating it")))
    if m.reverse_kl is not None and m.reverse_kl < LITTLE_TO_LEARN_KL:
        findings.append(Finding("caution", (
            f"little to learn: the reverse KL is {m.reverse_kl:.4f} nats per token (under {LITTLE_TO_LEARN_KL}); "
            "the student already writes what the teacher would")))
    if m.top_k_agreement is not None and m.top_k_agreement < LOW_TOP_K_AGREEMENT:
        findings.append(Finding("caution", (
            f"the teacher finds the student's tokens unlikely: only {m.top_k_agreement:.0%} of them are in its "
            f"top-{m.top_k} (under {LOW_TOP_K_AGREEMENT:.0%}); the per-token signal will be large and negative "
            "almost everywhere")))
    level = max((finding.level for finding in findings), key=LEVELS.index, default="go")
    return PairVerdict(level, tuple(findings))


def teacher_top_k_hits(teacher_logits_BLV: torch.Tensor, tokens_BL: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each token is among the teacher's k most likely, (B, L) bool (ties count as in).

    Example:
        >>> teacher_top_k_hits(torch.tensor([[[3.0, 1.0, 2.0]]]), torch.tensor([[2]]), k=1).tolist()
        [[False]]
    """
    if k < 1:
        raise ValueError(f"top-k must be at least 1 (got {k})")
    token_logits_BL = teacher_logits_BLV.gather(-1, tokens_BL.long().unsqueeze(-1))
    rank_BL = (teacher_logits_BLV > token_logits_BL).sum(dim=-1)
    return rank_BL < k


@torch.no_grad()
def student_sample_stats(teacher, student, tokenizer, prompts: list[str], max_new_tokens: int, top_k: int,
                         seed: int = 0, batch_size: int = 16) -> tuple[float, float, int]:
    """`(mean reverse KL per token, top-k agreement, sampled tokens)` on the student's own samples.

    The student samples one completion per prompt at temperature 1; both models score
    it (`generation.completion_logits`), and the exact KL(student || teacher) over the
    full vocabulary comes from `losses.per_token_reverse_kl`, as in OPD's `full` estimator.
    """
    generator = torch.Generator(device=next(student.parameters()).device).manual_seed(seed)
    kl_sum, hits, tokens = 0.0, 0.0, 0
    for start in range(0, len(prompts), batch_size):
        rollouts = generate(student, tokenizer, prompts[start : start + batch_size], max_new_tokens,
                            generator=generator)
        student_logits_BLV = completion_logits(student, rollouts)
        teacher_logits_BLV = completion_logits(teacher, rollouts)
        mask_BL = rollouts.completion_mask_BL
        count = int(mask_BL.sum())
        kl_BL = per_token_reverse_kl(student_logits_BLV, teacher_logits_BLV, rollouts.temperature)
        hits_BL = teacher_top_k_hits(teacher_logits_BLV, rollouts.sequences_BS[:, rollouts.prompt_length :], top_k)
        kl_sum += float(masked_mean(kl_BL, mask_BL)) * count
        hits += float(masked_mean(hits_BL.float(), mask_BL)) * count
        tokens += count
    return kl_sum / max(tokens, 1), hits / max(tokens, 1), tokens


def measure_pair(teacher: str, student: str, task: str = DEFAULT_TASK, problems: int = DEFAULT_PROBLEMS,
                 top_k: int = DEFAULT_TOP_K, seed: int = 0, device: str | torch.device = "cpu",
                 trust_remote_code: bool = False) -> PairMeasurements:
    """Measure a teacher/student pair (model specs, see `models`) on a task.

    Raises:
        ModelLoadError: a model cannot be loaded (a tokenizer mismatch is reported instead).
        ValueError: an unknown task, or `problems`/`top_k` below 1.
    """
    if problems < 1 or top_k < 1:
        raise ValueError(f"problems and top-k must be at least 1 (got {problems} and {top_k})")
    started = time.perf_counter()
    task_object = get_task(task)
    base = PairMeasurements(teacher, student, task, problems, top_k)
    try:
        check_pair_compatible(load_tokenizer(teacher, "teacher", task, trust_remote_code),
                              load_tokenizer(student, "student", task, trust_remote_code))
    except PairMismatchError as error:
        return dataclasses.replace(base, tokenizer_problem=str(error), seconds=time.perf_counter() - started)
    teacher_model, _ = load_model(teacher, "teacher", task, device, trust_remote_code=trust_remote_code)
    student_model, tokenizer = load_model(student, "student", task, device, trust_remote_code=trust_remote_code)
    teacher_model.eval()
    student_model.eval()
    student_result = evaluate(student_model, tokenizer, task_object, count=problems)
    teacher_rate = evaluate(teacher_model, tokenizer, task_object, count=problems).accuracy
    prompts = [p.prompt for p in task_object.train_problems(problems, random.Random(seed))]
    kl, agreement, tokens = student_sample_stats(teacher_model, student_model, tokenizer, prompts,
                                                 task_object.max_new_tokens, top_k, seed)
    return dataclasses.replace(base, problems=student_result.count,  # a task file may hold fewer
                               student_pass_rate=student_result.accuracy, teacher_pass_rate=teacher_rate,
                               reverse_kl=kl, top_k_agreement=agreement, sampled_tokens=tokens,
                               seconds=time.perf_counter() - started)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_report(measurements: PairMeasurements, verdict: PairVerdict) -> str:
    """The measurements as a small table, then the verdict and its reasons."""
    m = measurements
    kl = "-" if m.reverse_kl is None else f"{m.reverse_kl:.3f} nats ({m.sampled_tokens:,} sampled tokens)"
    rows = [
        ("tokenizers and chat templates", "differ" if m.tokenizer_problem else "match"),
        ("student pass rate (greedy)", _percent(m.student_pass_rate)),
        ("teacher pass rate (greedy)", _percent(m.teacher_pass_rate)),
        ("reverse KL per token", kl),
        (f"student tokens in teacher's top-{m.top_k}", _percent(m.top_k_agreement)),
    ]
    lines = [f"OPD pre-flight: teacher {m.teacher}, student {m.student}, task {m.task} "
             f"({m.problems} problems, {m.seconds:.1f} s)"]
    lines += [f"  {name:<36}{value}" for name, value in rows]
    lines.append(f"verdict: {verdict.level.upper()}")
    lines += [f"  - {finding.level}: {finding.message}" for finding in verdict.findings]
    if not verdict.findings:
        lines.append("  - every check passed: the student has the foundation, the teacher is stronger and "
                     "finds the student's tokens plausible")
    return "\n".join(lines)


def report_dict(measurements: PairMeasurements, verdict: PairVerdict) -> dict:
    """The measurements and the verdict as JSON-ready data (`opd-lab preflight --json`)."""
    return {"measurements": dataclasses.asdict(measurements),
            "verdict": {"level": verdict.level, "exit_code": verdict.exit_code,
                        "findings": [dataclasses.asdict(finding) for finding in verdict.findings]},
            "thresholds": {"foundation_floor": FOUNDATION_FLOOR, "teacher_margin": TEACHER_MARGIN,
                           "little_to_learn_kl": LITTLE_TO_LEARN_KL, "low_top_k_agreement": LOW_TOP_K_AGREEMENT}}


def task_of_specs(teacher: str, student: str) -> str:
    """The task a preflight uses when none is given: the task of a `lab:NAME` spec's built
    lab (the student's first), else the default task."""
    from opd_lab import model_spec
    from opd_lab.lab import SUMMARY_FILE
    from opd_lab.paths import lab_dir
    from opd_lab.files import read_json

    for spec in (student, teacher):
        name = model_spec.parse(spec).lab
        if name:
            summary = read_json(lab_dir(name) / SUMMARY_FILE)
            if summary and summary.get("task"):
                return summary["task"]
    return DEFAULT_TASK
