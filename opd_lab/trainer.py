"""One training step of OPD, SFT and RL: a loop that differs only in its signal.

`Trainer` holds a run's models, optimizer and counters; `Trainer.step()` does one update:

1. draw `batch_size` training prompts from the task;
2. **rollouts**: the student samples `samples_per_prompt` completions per prompt
   (on-policy; OPD and RL), and/or the teacher writes completions (SFT, and the
   off-policy share of OPD when `on_policy_fraction < 1`);
3. **signal**: for on-policy rollouts, a per-token advantage
   (`losses.per_token_advantages`, the one place the two signals are defined):
   - OPD `sampled`: `log p_teacher(x_t) - log p_student(x_t)` on each sampled token
     (the negative per-token reverse KL, discount 0), plus `reward_coef * reward`;
   - RL: the group-normalized verifiable reward, the same for every token;
   and one policy-gradient loss for both; or, for OPD `full` and `topk`, a divergence
   differentiated through the student (`objectives`: one function per signal);
   off-policy (teacher-written) completions get cross-entropy;
4. one AdamW step on the loss averaged over the global batch's completion tokens
   (`distributed.World` sums what crosses processes).

Every part's logged KL (`train/reverse_kl`) is measured in one place,
`objectives.TokenKL`, whatever trained it.

The run around the steps (its folder, evaluation and checkpoints on schedule, stops,
resumes, failures) is `opd_lab.train`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from opd_lab import losses, model_spec, sharding
from opd_lab.config import RunConfig
from opd_lab.distributed import World
from opd_lab.eval import evaluate
from opd_lab.feedback import token_records
from opd_lab.flops import FlopsCounter, count_parameters
from opd_lab.generation import Rollouts, completion_logits, generate, rollouts_from_texts
from opd_lab.models import load_trainable_student, lora_merged, pick_device, pick_dtype
from opd_lab.objectives import OnPolicyBatch, TokenKL, objective_for
from opd_lab.prompt_source import PromptSource
from opd_lab.run_folder import PHASES, ROW_MEAN_METRICS, SFT_DATASET_FILE, task_metric, written_by
from opd_lab.task_mix import TaskMixSource, combine_task_metrics, per_task_metrics
from opd_lab.tasks import Problem, Verdict, get_task
from opd_lab.teacher_dataset import fixed_completions
from opd_lab.teacher_routing import TeacherRouter
from opd_lab.teacher_scoring import TeacherScores


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving the bad weights."""


@dataclass
class StepResult:
    loss: torch.Tensor
    metrics: dict
    logged: list[dict]


class PhaseClock:
    """The wall time of one step, by phase (`run_folder.PHASES`), as `perf/time_<phase>` metrics.

    Example:
        >>> clock = PhaseClock()
        >>> with clock.timed("teacher"):
        ...     pass
        >>> sorted(clock.metrics()) == sorted(f"perf/time_{phase}" for phase in PHASES)
        True
    """

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def timed(self, phase: str):
        """Add the wall time of the block to `phase`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {f"perf/time_{phase}": seconds for phase, seconds in self.seconds.items()}


@dataclass
class BatchPart:
    """One share of a step's batch (the on-policy or the teacher-written one) and its loss.

    `loss` is a mean over the part's `token_count` completion tokens; `step` weights
    the parts by their token counts. The logits score the completion tokens only
    (`generation.completion_logits`, (B, L, V)).
    """

    loss: torch.Tensor
    token_count: torch.Tensor
    metrics: dict
    rollouts: Rollouts
    student_logits_BLV: torch.Tensor
    teacher_scores: TeacherScores | None  # None when the teacher did not score this part
    verdicts: list[Verdict]
    tasks: list[str]  # each row's task (its teacher and verifier)
    weights: dict  # the rows or tokens behind each per-task metric (`task_mix.per_task_means`)


def on_policy_count(config: RunConfig, batch_size: int) -> int:
    """How many of a step's `batch_size` prompts the student samples: all for RL, none
    for SFT, `on_policy_fraction` of them for OPD (the rest get teacher-written completions)."""
    if config.method == "sft":
        return 0
    if config.method == "rl":
        return batch_size
    return round(config.on_policy_fraction * batch_size)


class Trainer:
    """Holds the models, optimizer and counters of one run; `step()` does one update."""

    def __init__(self, config: RunConfig, run_dir: Path, world: World | None = None):
        self.config, self.run_dir = config, run_dir
        self.world = world or World()
        self.device = pick_device(config.device, gpu=self.world.local_rank if self.world.size > 1 else None)
        # The run's tasks (several in a multi-teacher run), each with its verifier.
        self.tasks = {name: get_task(name, regex=config.task_regex or None) for name in config.run_tasks()}
        self.task, self.multitask = self.tasks[config.task], len(self.tasks) > 1
        self.max_new_tokens = max(config.resolved_max_new_tokens(t.max_new_tokens) for t in self.tasks.values())
        # bfloat16: the frozen teacher's weights are cast; the student keeps float32 weights
        # and runs its forward passes under autocast (`_student_precision`).
        self.dtype = pick_dtype(config.dtype, self.device)
        # Each task's teacher, in process or behind its server; the engine asks them through the router.
        self.teachers = TeacherRouter.load(config, self.device, self.dtype)
        single = self.teachers.single  # the one teacher of a single-teacher run (None with several)
        self.teacher, self.teacher_params = (single.model, single.params) if single else (None, 0)
        self.lora = config.uses_lora(student_is_lab=model_spec.parse(config.student).is_lab)
        self.student, self.tokenizer = load_trainable_student(
            config.student, config.task, self.device, lora_rank=config.lora_rank if self.lora else 0,
            lora_alpha=config.lora_alpha, trust_remote_code=config.trust_remote_code)
        self.world.broadcast_parameters(self.student)  # one starting point, LoRA's random init included
        self.student_params = count_parameters(self.student)
        self.optimizer = self._new_optimizer()
        self.prompts = (TaskMixSource(self.tasks, config.task_weight_map(), config.prompt_pool, config.seed)
                        if self.multitask else PromptSource(self.task, config.prompt_pool, config.seed))
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.flops = FlopsCounter()
        self.step_done, self.wall_s, self.samples_seen, self.tokens_seen = 0, 0.0, 0, 0
        self.clock = PhaseClock()
        # SFT data fixed for the whole run (the teacher dataset, made here once, or references); None: fresh.
        self.fixed_completions = fixed_completions(config, run_dir / SFT_DATASET_FILE, self.teachers, self.prompts.pool,
                                                   self.tokenizer, self.max_new_tokens, self.device, self.flops)

    def _new_optimizer(self) -> torch.optim.AdamW:
        """AdamW over the trainable parameters: the fused one (one kernel over all of them)
        where torch has it; the default for-loop one is 3-4x slower on the CPU for a
        135M-parameter student."""
        return torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad],
                                 lr=self.config.learning_rate, weight_decay=0.0,
                                 fused=self.device.type in ("cpu", "cuda") or None)

    def begin(self, state: dict | None) -> None:
        """Get ready to train: shard the student when the run asks for it (`opd_lab.sharding`;
        after a checkpoint was loaded into the whole student), then restore `state`, the
        checkpoint's trainer state (None: from step 0). Every process calls it."""
        if self.world.size > 1 and sharding.requested(self.config.fsdp):
            on_count = on_policy_count(self.config, self.config.batch_size)
            sharding.check_shares({"on-policy": on_count, "teacher-written": self.config.batch_size - on_count},
                                  self.world.size)
            sharding.shard(self.student, self.world.size, self.dtype)
            self.optimizer = self._new_optimizer()  # over the shards
        if state is not None:
            self.load_state(state)

    # --- one step -----------------------------------------------------------------

    def step(self) -> StepResult:
        """One optimizer update; returns its loss, its metrics row and any logged samples.

        Draws `batch_size` prompts, builds this process's share of each part's loss
        (`_parts`), averages them over the global batch's completion tokens, takes one
        clipped AdamW step (`_update`; a NaN or infinite loss or gradient raises
        `NonFiniteLoss` before the weights change), and counts the global batch. Every
        `sample_every` steps (and at the last), the first part's first `samples_to_log`
        rollouts are logged with their per-token records. The metrics hold `step`,
        `train/*`, `progress/*` and `perf/*` (docs/run-folder.md); the caller adds `eval/*`.
        """
        config, started, step = self.config, time.perf_counter(), self.step_done + 1
        self.clock = PhaseClock()
        self._set_learning_rate(self.step_done)
        logging = step % config.sample_every == 0 or step == config.steps
        counters_before = self._counters()
        parts = self._parts(self.prompts.next_batch(config.batch_size), logging)
        loss, loss_value = self.world.token_mean(*token_weighted_sum(parts, self.device))
        if not torch.isfinite(loss_value):
            raise NonFiniteLoss(f"the loss is {loss_value.item()} at step {step}; weights from before this step are kept")
        grad_norm = self._update(loss if parts else None, step)
        self.flops.add_training(self.student_params, sum(int(part.rollouts.attention_mask_BS.sum()) for part in parts))
        self.samples_seen += sum(len(part.rollouts.prompts) for part in parts)
        self.tokens_seen += int(sum(float(part.token_count) for part in parts))
        self._set_counters(self.world.sum_since(counters_before, self._counters()))  # the global batch's
        completion_tokens = self.tokens_seen - counters_before["progress/tokens"]
        elapsed = time.perf_counter() - started
        self.wall_s += elapsed
        self.step_done = step
        metrics = {"step": step, "train/loss": loss_value.item(), "train/grad_norm": float(grad_norm),
                   "train/learning_rate": self.optimizer.param_groups[0]["lr"],
                   **self.world.mean_metrics(*part_means(parts)),
                   "progress/samples": self.samples_seen, "progress/tokens": self.tokens_seen,
                   "perf/wall_s": self.wall_s, "perf/tokens_per_s": completion_tokens / max(elapsed, 1e-9),
                   **self.clock.metrics(), **self.flops.as_metrics()}
        if self.multitask:
            metrics.update({task_metric("perf/flops_teacher", task): flops
                            for task, flops in self.teachers.flops_by_task.items()})
        logged = (logged_samples(step, parts[0], self.tokenizer, self.teachers, config)
                  if logging and parts and self.world.is_main else [])
        return StepResult(loss_value, metrics, logged)

    def _parts(self, problems: list[Problem], logging: bool) -> list[BatchPart]:
        """This process's contiguous share of the on-policy part (the first `on_policy_count`
        prompts) and of the teacher-written one (the rest); all of both in a one-process run."""
        on_count = on_policy_count(self.config, len(problems))
        on_rows, off_rows = self.world.shard(on_count), self.world.shard(len(problems) - on_count)
        parts = []
        if on_rows:
            parts.append(self._on_policy_part(problems[on_rows.start : on_rows.stop], teacher_view=logging,
                                              first_prompt=on_rows.start))
        if off_rows:
            # The off-policy part's KL and records are shown only when it is the whole batch (SFT).
            parts.append(self._off_policy_part(problems[on_count + off_rows.start : on_count + off_rows.stop],
                                               teacher_view=logging and not on_count,
                                               first_prompt=on_count + off_rows.start))
        return parts

    def _update(self, loss: torch.Tensor | None, step: int) -> torch.Tensor:
        """Backpropagate `loss` (None: this process had no rows), sum the gradients over the
        processes, clip them and take one AdamW step; returns the norm before clipping.
        A NaN or infinite norm raises `NonFiniteLoss` before the weights change."""
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        with self.clock.timed("student"):
            self.optimizer.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
        with self.clock.timed("optimizer"):
            if not sharding.is_sharded(self.student):  # a sharded student's backward sums them already
                self.world.sum_gradients(trainable)
            grad_norm = sharding.full_norm(torch.nn.utils.clip_grad_norm_(trainable, self.config.max_grad_norm))
            if not torch.isfinite(grad_norm):
                raise NonFiniteLoss(f"the gradient norm is {grad_norm.item()} at step {step}; weights from before this step are kept")
            self.optimizer.step()
        return grad_norm

    def _counters(self) -> dict[str, float]:
        """The run's counts so far as this process knows them: samples, completion tokens,
        FLOPs by purpose and each task's teacher's FLOPs (under their metric names)."""
        return {"progress/samples": self.samples_seen, "progress/tokens": self.tokens_seen, **self.flops.as_metrics(),
                **{task_metric("perf/flops_teacher", task): flops for task, flops in self.teachers.flops_by_task.items()}}

    def _set_counters(self, counts: dict[str, float]) -> None:
        self.samples_seen, self.tokens_seen = int(counts["progress/samples"]), int(counts["progress/tokens"])
        self.flops = FlopsCounter.from_metrics(counts)
        self.teachers.flops_by_task = {task: counts[task_metric("perf/flops_teacher", task)]
                                       for task in self.teachers.flops_by_task}

    def _student_precision(self):
        """Autocast to `self.dtype` around the student's forward passes (off in float32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def _set_learning_rate(self, step: int) -> None:
        scale = min(1.0, (step + 1) / max(1, self.config.warmup_steps)) if self.config.warmup_steps else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate * scale

    def _tasks_of(self, problems: list[Problem]) -> list[str]:
        """The run task of each problem (its teacher and verifier)."""
        return [p.task or self.config.task for p in problems]

    def _sample_student(self, prompts: list[str], rows: range) -> Rollouts:
        """The student's rollouts, sampled by the whole student (a sharded one is gathered
        for it, a LoRA one merged: `models.lora_merged`)."""
        with sharding.gathered(self.student), lora_merged(self.student, self.lora), self._student_precision():
            return generate(self.student, self.tokenizer, prompts, self.max_new_tokens,
                            temperature=self.config.temperature, generator=self.generator,
                            row_seeds=self.world.row_seeds(self.config.seed, self.step_done + 1, rows, "student"))

    def _on_policy_part(self, problems: list[Problem], teacher_view: bool, first_prompt: int = 0) -> BatchPart:
        """Student samples, trained on the run's objective (`objectives.objective_for`).

        OPD always scores the samples with the teacher; RL only when `teacher_view` asks
        for the teacher's view (`train/reverse_kl` and the per-token records).
        `first_prompt` is the index of `problems[0]` in the step's global batch.
        """
        config = self.config
        repeated = [p for p in problems for _ in range(config.samples_per_prompt)]
        first_row = first_prompt * config.samples_per_prompt
        with self.clock.timed("sampling"):
            rollouts = self._sample_student([p.prompt for p in repeated], range(first_row, first_row + len(repeated)))
        self.flops.add_sampling(self.student_params, int(rollouts.attention_mask_BS.sum()))
        tasks = self._tasks_of(repeated)
        verdicts = [self.tasks[t].verify(p, c) for t, p, c in zip(tasks, repeated, rollouts.completions)]
        scores = (self._score(rollouts, tasks, alternatives=teacher_view or config.estimator == "full")
                  if config.method == "opd" or teacher_view else None)
        if config.method == "opd":
            self.teachers.charge(self.flops, tasks, rollouts.attention_mask_BS, scoring=True)
        mask, rewards = rollouts.completion_mask_BL, torch.tensor([v.reward for v in verdicts], device=self.device)
        with self.clock.timed("student"):
            with self._student_precision():
                student_logits = completion_logits(self.student, rollouts)
            batch = OnPolicyBatch(student_logits, rollouts.sequences_BS[:, rollouts.prompt_length :],
                                  rollouts.completion_sampling_logprobs_BL, mask, rewards, scores)
            objective = objective_for(config, scores)(batch, config)
        metrics = {"train/reward": rewards.mean().item(),
                   "train/accuracy": sum(v.correct for v in verdicts) / len(verdicts),
                   "train/completion_len": float(mask.sum(dim=1).mean()),
                   **{f"train/{key}": value for key, value in objective.metrics.items()}}
        return self._part(objective.loss, metrics, rollouts, student_logits, scores, verdicts, tasks)

    def _off_policy_part(self, problems: list[Problem], teacher_view: bool, first_prompt: int = 0) -> BatchPart:
        """`teacher_prefix_loss` on teacher-written completions: the run's fixed SFT data
        (`teacher_dataset.fixed_completions`) or fresh teacher samples. The teacher scores them
        for an exact loss, or when `teacher_view` asks for `train/reverse_kl` and the per-token records.
        `first_prompt` is the index of `problems[0]` in the step's global batch."""
        config, prompts, tasks = self.config, [p.prompt for p in problems], self._tasks_of(problems)
        if self.fixed_completions is not None:
            rollouts = rollouts_from_texts(self.tokenizer, prompts, [self.fixed_completions(p) for p in problems],
                                           device=self.device)
        else:
            rows = range(first_prompt, first_prompt + len(problems))
            with self.clock.timed("sampling"):
                rollouts = self.teachers.write(
                    self.tokenizer, prompts, tasks, self.max_new_tokens, self.flops, generator=self.generator,
                    temperature=config.temperature, greedy=config.method == "sft" and config.sft_source == "teacher_greedy",
                    row_seeds=self.world.row_seeds(config.seed, self.step_done + 1, rows, "teacher"))
        mask, targets = rollouts.completion_mask_BL, rollouts.sequences_BS[:, rollouts.prompt_length :]
        scores = self._score(rollouts, tasks, alternatives=True) if teacher_view or config.off_policy_loss == "exact" else None
        if config.off_policy_loss == "exact":  # trained on the teacher's scores: charge them
            self.teachers.charge(self.flops, tasks, rollouts.attention_mask_BS, scoring=True)
        with self.clock.timed("student"):
            with self._student_precision():
                student_logits = completion_logits(self.student, rollouts)
            loss = teacher_prefix_loss(config, student_logits, targets, mask, rollouts.temperature, scores)
        verdicts = [self.tasks[t].verify(p, c) for t, p, c in zip(tasks, problems, rollouts.completions)]
        return self._part(loss, {"train/completion_len": float(mask.sum(dim=1).mean())}, rollouts, student_logits,
                          scores, verdicts, tasks)

    def _score(self, rollouts: Rollouts, tasks: list[str], alternatives: bool) -> TeacherScores:
        """The teachers' scores of a part; with `alternatives` (the top-k + tail KL, the token
        view), a server's `teacher_top_k` alternatives at each position too."""
        with self.clock.timed("teacher"):
            top_k = self.teachers.server_top_k(self.config.teacher_top_k if alternatives else 0)
            return self.teachers.score(rollouts, tasks, top_k)

    def _part(self, loss, metrics: dict, rollouts: Rollouts, student_logits_BLV: torch.Tensor,
              scores: TeacherScores | None, verdicts: list[Verdict], tasks: list[str]) -> BatchPart:
        """The `BatchPart`, its metrics completed with the teacher's KL when it scored the part
        (`objectives.TokenKL`: the one place a step measures it) and, in a multi-task run,
        each task's accuracy, reward and KL (`train/accuracy/TASK`, ...: `task_mix.per_task_means`)."""
        mask, weights = rollouts.completion_mask_BL, {}
        with self.clock.timed("teacher"):
            kl = TokenKL.of(student_logits_BLV, scores, rollouts.temperature)
        metrics.update(kl.metrics(mask))
        if self.multitask:
            task_metrics, weights = per_task_metrics(tasks, verdicts, mask, kl.name, kl.per_token_BL)
            metrics.update(task_metrics)
        return BatchPart(loss, mask.sum(), metrics, rollouts, student_logits_BLV, scores, verdicts, tasks, weights)

    def evaluate(self) -> dict:
        """Held-out metrics (`eval/*`), measured by rank 0; the others return {} (they take
        part only to gather a sharded student). Every process calls it."""
        with sharding.gathered(self.student):
            results = ({name: evaluate(self.student, self.tokenizer, task, count=self.config.eval_count,
                                       samples_per_problem=self.config.eval_samples, temperature=1.0, seed=self.config.seed,
                                       max_new_tokens=self.config.eval_max_new_tokens).as_metrics()
                        for name, task in self.tasks.items()} if self.world.is_main else {})
        self.student.train()
        if not self.multitask or not results:
            return next(iter(results.values()), {})
        return combine_task_metrics(results, self.config.task_weight_map())

    # --- state --------------------------------------------------------------------

    def state(self) -> dict:
        """The trainer state a checkpoint keeps (a collective for a sharded student: every
        process calls it; its optimizer state is whole on rank 0 only)."""
        return {"step": self.step_done, "wall_s": self.wall_s, "samples": self.samples_seen, "tokens": self.tokens_seen,
                "flops": self.flops.as_metrics(), "teacher_flops": dict(self.teachers.flops_by_task),
                "optimizer": sharding.full_optimizer_state(self.student, self.optimizer), "prompt_rng": self.prompts.state(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict) -> None:
        self.step_done, self.wall_s = state["step"], state["wall_s"]
        self.samples_seen, self.tokens_seen = state["samples"], state["tokens"]
        self.flops = FlopsCounter.from_metrics(state["flops"])
        self.teachers.flops_by_task.update(state.get("teacher_flops", {}))
        sharding.load_optimizer_state(self.student, self.optimizer, state["optimizer"])
        self.prompts.load_state(state["prompt_rng"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])


def teacher_prefix_loss(config: RunConfig, student_logits_BLV: torch.Tensor, targets_BL: torch.Tensor,
                        mask_BL: torch.Tensor, temperature: float, scores: TeacherScores | None) -> torch.Tensor:
    """The loss on teacher-written completions (`RunConfig.off_policy_loss`): the cross-entropy
    of the teacher's tokens, or `losses.exact_loss` (the run's `estimator`, full or topk)
    against the teacher's whole next-token distribution at every position of its prefix."""
    if config.off_policy_loss == "exact":
        return losses.exact_loss(student_logits_BLV, scores.logits_BLV, mask_BL, config.estimator, config.divergence,
                                 config.jsd_beta, config.estimator_top_k, config.temperature)[0]
    logps_BL = losses.chunked_token_logprobs(student_logits_BLV, targets_BL, temperature)
    return losses.cross_entropy_loss(logps_BL, mask_BL)[0]


def token_weighted_sum(parts: list[BatchPart], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's parts' losses summed over their completion tokens, and the token count:
    `(sum(part.loss * part.token_count), sum(part.token_count))`, so every token counts once
    (`World.token_mean` divides by the global count). Zeros when the process had no rows."""
    if not parts:
        return torch.zeros((), device=device), torch.zeros(())
    token_counts = torch.stack([part.token_count for part in parts]).float()
    return sum(part.loss * count for part, count in zip(parts, token_counts)), token_counts.sum()


def part_means(parts: list[BatchPart]) -> tuple[dict[str, float], dict[str, float]]:
    """One process's metrics of a step and the weight behind each (`World.mean_metrics`).

    A key both parts have keeps the first part's value (the on-policy one). Its weight is
    the part's per-task one (`BatchPart.weights`), else its rows for `ROW_MEAN_METRICS`
    and its completion tokens for the others.
    """
    values, weights = {}, {}
    for part in parts:
        rows, tokens = len(part.rollouts.prompts), float(part.token_count)
        for key, value in part.metrics.items():
            if key not in values:
                values[key] = value
                weights[key] = part.weights.get(key, rows if key in ROW_MEAN_METRICS else tokens)
    return values, weights


def logged_samples(step: int, part: BatchPart, tokenizer, teachers: TeacherRouter, config: RunConfig) -> list[dict]:
    """The rows of samples.jsonl for a step: the part's first `samples_to_log` rollouts
    with their verdicts, teachers and per-token records (`feedback.token_records`)."""
    rollouts, verdicts, scores = part.rollouts, part.verdicts, part.teacher_scores
    rows = list(range(min(config.samples_to_log, len(rollouts.prompts))))
    records = token_records(tokenizer, rollouts, part.student_logits_BLV, scores.logits_BLV if scores else None,
                            rows=rows, teacher_top=scores if scores and scores.logits_BLV is None else None)
    return [{"step": step, "index": row, "prompt": rollouts.prompts[row], "completion": rollouts.completions[row],
             "reward": verdicts[row].reward, "correct": verdicts[row].correct, "task": part.tasks[row],
             "teacher": teachers.spec_of(part.tasks[row]), "tokens": records[row],
             "written_by": written_by(config.method, config.sft_source)}
            for row in rows]
