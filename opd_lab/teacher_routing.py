"""Several teachers, one student: each prompt is judged by its own task's teacher.

Multi-teacher on-policy distillation routes every student sample to the expert of its
domain: the addition teacher scores addition samples, the sorting teacher sorting
samples, and the student learns from each where that expert is right. The engine still
asks one question, "the teacher's log-probs of these tokens" (`teacher_scoring`);
`TeacherRouter` answers it for a batch of mixed tasks by splitting the rows by task,
asking each task's `Teacher` (in process or through its own vLLM server) about its rows
only, and putting the answers back in the batch's row order. A run with one teacher is
one group: the batch goes to it whole, exactly as before routing existed.

Example:
    >>> router = TeacherRouter.load(config, device, dtype)  # doctest: +SKIP
    >>> scores = router.score(rollouts, tasks=["addition", "sorting"], top_k=0)  # doctest: +SKIP
    >>> router.spec_of("sorting")  # doctest: +SKIP
    'lab:sorting'
"""

from __future__ import annotations

import dataclasses

import torch

from opd_lab.flops import FlopsCounter, forward_flops
from opd_lab.generation import Rollouts, generate, rollouts_from_texts
from opd_lab.models import load_tokenizer
from opd_lab.teacher_scoring import Teacher, TeacherScores, load_teacher


class TeacherRouter:
    """The teacher of each task of a run; tasks with the same teacher share one loaded model.

    Args:
        teachers: task name -> its `Teacher` (the same object for tasks that share one).
    """

    def __init__(self, teachers: dict[str, Teacher]):
        self.teachers = teachers
        # FLOPs each task's teacher spent (scoring and writing samples); the run's counter
        # (`flops.FlopsCounter`) holds their sum in its teacher and sampling shares.
        self.flops_by_task = dict.fromkeys(teachers, 0.0)

    @classmethod
    def load(cls, config, device: torch.device, dtype: torch.dtype) -> "TeacherRouter":
        """Every teacher `config` names (`RunConfig.teacher_map`, `server_map`), each loaded once:
        in process (weights in `dtype`, mixed with `teacher_noise`) or behind its server, after
        checking that it shares the student's tokenizer (`teacher_scoring.load_teacher`)."""
        student_tokenizer = load_tokenizer(config.student, "student", config.task, config.trust_remote_code)
        loaded: dict[tuple[str, str], Teacher] = {}
        teachers = {}
        servers = config.server_map()
        for task, spec in config.teacher_map().items():
            # A bare 'lab' is each task's own lab teacher; any other spec is one model.
            key = (f"lab:{task}" if spec == "lab" else spec, servers[task])
            if key not in loaded:
                loaded[key] = load_teacher(spec, task, student_tokenizer, device, dtype, server=servers[task],
                                           trust_remote_code=config.trust_remote_code, noise=config.teacher_noise)
            teachers[task] = loaded[key]
        return cls(teachers)

    @property
    def single(self) -> Teacher | None:
        """The run's one teacher, when every task has the same; None with several."""
        distinct = {id(teacher): teacher for teacher in self.teachers.values()}
        return next(iter(distinct.values())) if len(distinct) == 1 else None

    @property
    def any_server(self) -> bool:
        return any(teacher.server for teacher in self.teachers.values())

    def server_top_k(self, k: int) -> int:
        """The top-k to ask for when `k` alternatives per position are wanted (the top-k + tail
        KL, the token view's): `k` when a teacher is a server, 0 when all run in process,
        whose scores hold the whole distribution anyway."""
        return k if self.any_server else 0

    def spec_of(self, task: str) -> str:
        """The teacher of `task`, by name (a bare 'lab' named as that task's lab, `lab:TASK`)."""
        spec = self.teachers[task].spec
        return f"lab:{task}" if spec == "lab" and len(self.teachers) > 1 else spec

    def charge(self, counter: FlopsCounter, tasks: list[str], mask_BS: torch.Tensor, scoring: bool) -> None:
        """Charge each row's teacher for its `mask_BS` tokens: scored (`scoring`, to the
        counter's teacher share) or written (to its sampling share), and to `flops_by_task`.

        Args:
            tasks: each row's task; mask_BS: (B, S), 1 on the tokens the teacher processed.
        """
        tokens = mask_BS.sum(dim=1).tolist()
        for task in dict.fromkeys(tasks):
            count, params = int(sum(n for n, t in zip(tokens, tasks) if t == task)), self.teachers[task].params
            (counter.add_teacher if scoring else counter.add_sampling)(params, count)
            self.flops_by_task[task] += forward_flops(params, count)

    def groups(self, tasks: list[str]) -> list[tuple[Teacher, list[int]]]:
        """The batch's rows grouped by teacher, in order of first appearance."""
        grouped: dict[int, tuple[Teacher, list[int]]] = {}
        for row, task in enumerate(tasks):
            teacher = self.teachers[task]
            grouped.setdefault(id(teacher), (teacher, []))[1].append(row)
        return list(grouped.values())

    def write(self, tokenizer, prompts: list[str], tasks: list[str], max_new_tokens: int, flops: FlopsCounter, *,
              temperature: float, greedy: bool, generator: torch.Generator,
              row_seeds: list[int] | None = None) -> Rollouts:
        """Completions written by each row's teacher (SFT data, OPD's off-policy share), one
        `generation.generate` call per teacher, charged to `flops` as sampling.

        Args:
            prompts, tasks: each row's prompt and task; row_seeds: each row's sampling seed
                (`distributed.row_seeds`), or None to draw from `generator`.
        Returns:
            the rollouts in the rows' order (re-tokenized from the texts when several
            teachers wrote them). Only in-process teachers write: a server scores only.
        """
        completions = [""] * len(prompts)
        for teacher, group in self.groups(tasks):  # one group unless the tasks have several teachers
            rollouts = generate(teacher.model, tokenizer, [prompts[i] for i in group], max_new_tokens,
                                temperature=temperature, generator=generator, greedy=greedy,
                                row_seeds=[row_seeds[i] for i in group] if row_seeds is not None else None)
            self.charge(flops, [tasks[i] for i in group], rollouts.attention_mask_BS, scoring=False)
            if len(group) == len(prompts):
                return rollouts
            for i, row in enumerate(group):
                completions[row] = rollouts.completions[i]
        return rollouts_from_texts(tokenizer, prompts, completions, device=rollouts.sequences_BS.device)

    def score(self, rollouts: Rollouts, tasks: list[str], top_k: int = 0) -> TeacherScores:
        """`TeacherScorer.score` over a mixed batch: row i scored by the teacher of `tasks[i]`.

        Full logits come back only when every row's teacher runs in process."""
        groups = self.groups(tasks)
        if len(groups) == 1:
            return groups[0][0].scorer.score(rollouts, top_k=top_k)
        parts = [(rows, teacher.scorer.score(select_rows(rollouts, rows), top_k=top_k)) for teacher, rows in groups]
        return merge_scores(parts, len(tasks))


def select_rows(rollouts: Rollouts, rows: list[int]) -> Rollouts:
    """The rollouts of some rows, with the batch's padded layout (same prompt length)."""
    index = torch.tensor(rows, device=rollouts.sequences_BS.device)
    return dataclasses.replace(
        rollouts, prompts=[rollouts.prompts[r] for r in rows], completions=[rollouts.completions[r] for r in rows],
        sequences_BS=rollouts.sequences_BS[index], attention_mask_BS=rollouts.attention_mask_BS[index],
        target_mask_BT=rollouts.target_mask_BT[index], sampling_logprobs_BT=rollouts.sampling_logprobs_BT[index])


def merge_scores(parts: list[tuple[list[int], TeacherScores]], batch: int) -> TeacherScores:
    """One `TeacherScores` of `batch` rows from each group's scores of its `rows`.

    A field is kept only when every group has it (the full logits of a mixed in-process and
    server batch are dropped; the top-k is kept)."""
    merged = {}
    for field in dataclasses.fields(TeacherScores):
        pieces = [(rows, getattr(scores, field.name)) for rows, scores in parts]
        if any(piece is None for _, piece in pieces):
            merged[field.name] = None
            continue
        first = pieces[0][1]
        out = torch.empty((batch, *first.shape[1:]), dtype=first.dtype, device=first.device)
        for rows, piece in pieces:
            out[torch.tensor(rows, device=out.device)] = piece.to(out.device)
        merged[field.name] = out
    if merged["logprobs_BL"] is None:
        raise ValueError("every teacher must return the sampled tokens' log-probs")
    return TeacherScores(**merged)
