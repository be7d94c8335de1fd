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
   and one policy-gradient loss for both; or, for OPD `full`, the exact divergence over
   the vocabulary, differentiated through the student; off-policy (teacher-written)
   completions get cross-entropy;
4. one AdamW step.

The run around the steps (its folder, evaluation and checkpoints on schedule, stops,
resumes, failures) is `opd_lab.train`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from opd_lab import distributed, losses, model_spec, sharding
from opd_lab.config import RunConfig
from opd_lab.distributed import World
from opd_lab.eval import evaluate
from opd_lab.feedback import token_records
from opd_lab.flops import FlopsCounter, count_parameters
from opd_lab.generation import Rollouts, completion_logits, generate, rollouts_from_texts
from opd_lab.models import load_model, load_tokenizer, pick_device, pick_dtype, wrap_lora
from opd_lab.prompt_source import PromptSource
from opd_lab.run_folder import PHASES, ROW_MEAN_METRICS, SFT_DATASET_FILE, task_metric, written_by
from opd_lab.task_mix import TaskMixSource, combine_task_metrics, per_task_metrics
from opd_lab.tasks import Problem, Verdict, get_task
from opd_lab.teacher_dataset import teacher_dataset
from opd_lab.teacher_routing import TeacherRouter, token_kl
from opd_lab.teacher_scoring import TeacherScores



class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving the bad weights."""


@dataclass
class StepResult:
    loss: torch.Tensor
    metrics: dict
    logged: list[dict]


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
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and self.world.size > 1:
            self.device = torch.device("cuda", self.world.local_rank)
        # The run's tasks (several in a multi-teacher run), each with its verifier.
        self.tasks = {name: get_task(name, regex=config.task_regex or None) for name in config.run_tasks()}
        self.task, self.multitask = self.tasks[config.task], len(self.tasks) > 1
        self.max_new_tokens = max(config.resolved_max_new_tokens(t.max_new_tokens) for t in self.tasks.values())
        # bfloat16: the frozen teacher's weights are cast; the student keeps float32 weights
        # (AdamW, and LoRA's merge/unmerge for sampling, need them) and runs its forward
        # passes under autocast (`_student_precision`).
        self.dtype = pick_dtype(config.dtype, self.device)
        # Each task's teacher, in process or behind its server; the engine asks them through the router.
        student_tokenizer = load_tokenizer(config.student, "student", config.task, config.trust_remote_code)
        self.teachers = TeacherRouter.load(config, student_tokenizer, self.device, self.dtype)
        single = self.teachers.single  # the one teacher of a single-teacher run (None with several)
        self.teacher, self.teacher_params = (single.model, single.params) if single else (None, 0)
        student, self.tokenizer = load_model(config.student, "student", config.task, self.device,
                                             trust_remote_code=config.trust_remote_code)
        self.lora = config.uses_lora(student_is_lab=model_spec.parse(config.student).is_lab)
        self.student = wrap_lora(student, config.lora_rank, config.lora_alpha) if self.lora else student
        self.student.train()
        self.world.broadcast_parameters(self.student)  # one starting point, LoRA's random init included
        self.student_params = count_parameters(self.student)
        self.optimizer = self._new_optimizer()
        self.prompts = (TaskMixSource(self.tasks, config.task_weight_map(), config.prompt_pool, config.seed)
                        if self.multitask else PromptSource(self.task, config.prompt_pool, config.seed))
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.flops = FlopsCounter()
        self.step_done, self.wall_s, self.samples_seen, self.tokens_seen = 0, 0.0, 0, 0
        self.phase_s = dict.fromkeys(PHASES, 0.0)
        self.sft_dataset = (teacher_dataset(
            run_dir / SFT_DATASET_FILE, self.teachers, self.prompts.pool, config.task, self.tokenizer,
            self.max_new_tokens, config.temperature, config.seed, self.device, self.flops)
            if config.method == "sft" and config.sft_source == "teacher_dataset" else None)

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

    @contextmanager
    def _timed(self, phase: str):
        """Add the wall time of the block to this step's `phase` (one of `PHASES`)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_s[phase] += time.perf_counter() - started

    def _student_precision(self):
        """Autocast to `self.dtype` around the student's forward passes (off in float32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def _set_learning_rate(self, step: int) -> None:
        scale = min(1.0, (step + 1) / max(1, self.config.warmup_steps)) if self.config.warmup_steps else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate * scale

    def _row_seeds(self, rows: range | list[int], stream: str) -> list[int] | None:
        """Per-row sampling seeds in a launched run (`distributed.row_seeds`); None (the
        run's one generator) otherwise."""
        if not self.world.launched:
            return None
        return distributed.row_seeds(self.config.seed, self.step_done + 1, rows, stream)

    def _teacher_rollouts(self, problems: list[Problem], rows: range) -> Rollouts:
        """Teacher-written completions (SFT data): fresh samples, the fixed dataset, or the task's references."""
        if self.sft_dataset is not None:
            return rollouts_from_texts(self.tokenizer, [p.prompt for p in problems],
                                       [self.sft_dataset[p.prompt] for p in problems], device=self.device)
        if self.config.method == "sft" and self.config.sft_source == "reference":
            return rollouts_from_texts(self.tokenizer, [p.prompt for p in problems],
                                       [p.reference or p.answer for p in problems], device=self.device)
        tasks = self._tasks_of(problems)
        completions = [""] * len(problems)
        for teacher, group in self.teachers.groups(tasks):  # one group unless the tasks have several teachers
            with self._timed("sampling"):
                rollouts = generate(teacher.model, self.tokenizer, [problems[i].prompt for i in group],
                                    self.max_new_tokens, temperature=self.config.temperature, generator=self.generator,
                                    greedy=self.config.method == "sft" and self.config.sft_source == "teacher_greedy",
                                    row_seeds=self._row_seeds([rows.start + i for i in group], "teacher"))
            self.teachers.charge(self.flops, [tasks[i] for i in group], rollouts.attention_mask_BS, scoring=False)
            for i, row in enumerate(group):
                completions[row] = rollouts.completions[i]
            if len(group) == len(problems):
                return rollouts
        return rollouts_from_texts(self.tokenizer, [p.prompt for p in problems], completions, device=self.device)

    def _tasks_of(self, problems: list[Problem]) -> list[str]:
        """The run task of each problem (its teacher and verifier)."""
        return [p.task or self.config.task for p in problems]

    def _sample_student(self, prompts: list[str], rows: range) -> Rollouts:
        """The student's rollouts, sampled by the whole student (a sharded one is gathered
        for it). A LoRA student samples with its adapters merged into the base weights
        (one matmul per layer instead of three) and is unmerged for training."""
        with sharding.gathered(self.student):
            if self.lora:
                self.student.merge_adapter()
            try:
                with self._student_precision():
                    return generate(self.student, self.tokenizer, prompts, self.max_new_tokens,
                                    temperature=self.config.temperature, generator=self.generator,
                                    row_seeds=self._row_seeds(rows, "student"))
            finally:
                if self.lora:
                    self.student.unmerge_adapter()

    def _on_policy_part(self, problems: list[Problem], teacher_view: bool, first_prompt: int = 0) -> BatchPart:
        """Student samples, then the OPD or RL signal on them.

        OPD always scores the samples with the teacher; RL only when `teacher_view` asks
        for the teacher's view (`train/reverse_kl` and the per-token records).
        `first_prompt` is the index of `problems[0]` in the step's global batch.
        """
        config = self.config
        repeated = [p for p in problems for _ in range(config.samples_per_prompt)]
        first_row = first_prompt * config.samples_per_prompt
        with self._timed("sampling"):
            rollouts = self._sample_student([p.prompt for p in repeated], range(first_row, first_row + len(repeated)))
        tokens = int(rollouts.attention_mask_BS.sum())
        self.flops.add_sampling(self.student_params, tokens)
        tasks = self._tasks_of(repeated)
        verdicts = [self.tasks[t].verify(p, c) for t, p, c in zip(tasks, repeated, rollouts.completions)]
        rewards = torch.tensor([v.reward for v in verdicts], device=self.device)
        mask = rollouts.completion_mask_BL
        sampling_logps = rollouts.completion_sampling_logprobs_BL
        targets = rollouts.sequences_BS[:, rollouts.prompt_length :]

        scores = None
        if config.method == "opd" or teacher_view:
            with self._timed("teacher"):
                scores = self.teachers.score(rollouts, tasks, top_k=self._server_top_k(
                    teacher_view or (config.method == "opd" and config.estimator == "full")))
        teacher_logits = scores.logits_BLV if scores else None
        if config.method == "opd":
            self.teachers.charge(self.flops, tasks, rollouts.attention_mask_BS, scoring=True)
        signal_metrics = {}  # metrics only one method has
        with self._timed("student"):
            with self._student_precision():
                student_logits = completion_logits(self.student, rollouts)
            if config.method == "opd" and config.estimator == "full" and teacher_logits is None:
                # A teacher server gives its top-k only: the top-k + tail lower bound (at temperature 1).
                student_logps_BLV = losses.tempered_log_softmax(student_logits, 1.0)
                loss, extra = losses.topk_tail_loss(student_logps_BLV, scores.top_ids_BLK, scores.top_logprobs_BLK,
                                                    mask)
                reverse_kl = None
                logps = losses.gather_tokens(student_logps_BLV.detach(), targets)
            elif config.method == "opd" and config.estimator == "topk":
                temperature = config.temperature
                kl_BL = losses.topk_renormalized_reverse_kl(student_logits / temperature, teacher_logits / temperature,
                                                            config.estimator_top_k)
                loss = losses.masked_mean(kl_BL, mask)
                extra = {"loss": loss.item(), "topk_reverse_kl": loss.item()}
                reverse_kl = float(losses.masked_mean(
                    losses.chunked_reverse_kl(student_logits.detach(), teacher_logits, temperature), mask))
                with torch.no_grad():
                    logps = losses.token_logprobs(student_logits, targets, temperature)
            elif config.method == "opd" and config.estimator == "full":
                temperature = config.temperature
                loss, extra = losses.divergence_loss(
                    student_logits if temperature == 1.0 else student_logits / temperature,
                    teacher_logits if temperature == 1.0 else teacher_logits / temperature, mask,
                    divergence=config.divergence, beta=config.jsd_beta)
                reverse_kl = extra["reverse_kl"]  # the loss's own log-softmax, at the sampling temperature
                with torch.no_grad():  # only for train/logprob_diff: no graph
                    logps = losses.token_logprobs(student_logits, targets, temperature)
            else:
                # The picked tokens' log-probs only, a chunk of positions at a time: no
                # (B, L, V) log-softmax is kept for the backward.
                logps = losses.chunked_token_logprobs(student_logits, targets, config.temperature)
                teacher_logps = scores.logprobs_BL if config.method == "opd" else None
                advantages, signal_metrics = losses.per_token_advantages(
                    config.method, mask, rewards, teacher_logps_BT=teacher_logps,
                    sampling_logps_BT=sampling_logps, group_size=config.samples_per_prompt,
                    reward_coef=config.reward_coef,
                    advantage_clip=config.advantage_clip if config.estimator == "clipped" else 0.0)
                loss, extra = losses.policy_gradient_loss(logps, sampling_logps, advantages, mask)
                kl_name, kl_BL = token_kl(student_logits, scores, rollouts.temperature)
                reverse_kl = float(losses.masked_mean(kl_BL, mask)) if kl_name == "reverse_kl" else None
                if kl_name == "reverse_kl_topk":
                    signal_metrics["reverse_kl_topk"] = float(losses.masked_mean(kl_BL, mask))
        metrics = {
            "train/reward": rewards.mean().item(),
            "train/accuracy": sum(v.correct for v in verdicts) / len(verdicts),
            **({"train/reverse_kl": reverse_kl} if reverse_kl is not None else {}),
            "train/completion_len": float(mask.sum(dim=1).mean()),
            "train/logprob_diff": float(((logps.detach() - sampling_logps).abs() * mask).sum()
                                        / mask.sum().clamp(min=1)),
        }
        metrics.update({f"train/{k}": v for k, v in extra.items() if k not in ("loss", "reverse_kl", "logprob_diff")})
        metrics.update({f"train/{k}": v for k, v in signal_metrics.items()})
        return self._part(loss, metrics, rollouts, student_logits, scores, verdicts, tasks)

    def _part(self, loss, metrics: dict, rollouts: Rollouts, student_logits_BLV: torch.Tensor,
              scores: TeacherScores | None, verdicts: list[Verdict], tasks: list[str]) -> BatchPart:
        """The `BatchPart`; in a multi-task run its metrics gain each task's accuracy, reward
        and KL (`train/accuracy/TASK`, ...: `task_mix.per_task_means`)."""
        mask, weights = rollouts.completion_mask_BL, {}
        if self.multitask:
            task_metrics, weights = per_task_metrics(tasks, verdicts, mask, *token_kl(student_logits_BLV, scores,
                                                                                       rollouts.temperature))
            metrics.update(task_metrics)
        return BatchPart(loss, mask.sum(), metrics, rollouts, student_logits_BLV, scores, verdicts, tasks, weights)

    def _server_top_k(self, wanted: bool) -> int:
        """The top-k to ask the teachers for: `teacher_top_k` when `wanted` (the top-k + tail
        KL, the token view's alternatives) and a teacher is a server; 0 when all run in
        process, whose scores hold the whole distribution anyway."""
        return self.config.teacher_top_k if wanted and self.teachers.any_server else 0

    def _off_policy_part(self, problems: list[Problem], teacher_view: bool, first_prompt: int = 0) -> BatchPart:
        """Cross-entropy on teacher-written completions; the teacher scores them only when
        `teacher_view` asks for `train/reverse_kl` and the per-token records.
        `first_prompt` is the index of `problems[0]` in the step's global batch."""
        rollouts = self._teacher_rollouts(problems, range(first_prompt, first_prompt + len(problems)))
        mask = rollouts.completion_mask_BL
        targets = rollouts.sequences_BS[:, rollouts.prompt_length :]
        with self._timed("student"):
            with self._student_precision():
                student_logits = completion_logits(self.student, rollouts)
        metrics = {"train/completion_len": float(mask.sum(dim=1).mean())}
        scores, tasks = None, self._tasks_of(problems)
        if self.config.off_policy_loss == "exact":  # the teacher's whole distribution on its own prefixes
            with self._timed("teacher"):
                scores = self.teachers.score(rollouts, tasks, top_k=0)
            self.teachers.charge(self.flops, tasks, rollouts.attention_mask_BS, scoring=True)
        with self._timed("student"):
            loss, _ = (losses.exact_loss(student_logits, scores.logits_BLV, mask, self.config.estimator,
                                         self.config.divergence, self.config.jsd_beta, self.config.estimator_top_k,
                                         self.config.temperature) if scores is not None else
                       losses.cross_entropy_loss(losses.chunked_token_logprobs(student_logits, targets,
                                                                               rollouts.temperature), mask))
        if teacher_view:
            with self._timed("teacher"):
                scores = scores if scores is not None else self.teachers.score(rollouts, tasks, top_k=self._server_top_k(True))
                kl_name, kl_BL = token_kl(student_logits, scores, rollouts.temperature)
                metrics[f"train/{kl_name}"] = float(losses.masked_mean(kl_BL, mask))
        verdicts = [self.tasks[t].verify(p, c) for t, p, c in zip(tasks, problems, rollouts.completions)]
        return self._part(loss, metrics, rollouts, student_logits, scores, verdicts, tasks)

    def step(self) -> StepResult:
        """One optimizer update; returns its loss, its metrics row and any logged samples.

        1. draw `batch_size` prompts; OPD puts `on_policy_fraction` of them on-policy
           (RL all, SFT none);
        2. build each part's loss (`_on_policy_part`: student samples with the OPD or RL
           signal; `_off_policy_part`: cross-entropy on teacher-written completions);
        3. average the parts' losses weighted by their completion tokens, so every
           token counts once; a NaN or infinite loss or gradient raises `NonFiniteLoss`
           before the weights change;
        4. clip the gradient and take one AdamW step; update the FLOPs, samples and
           tokens counters;
        5. every `sample_every` steps (and at the last), per-token records of the first
           part's first `samples_to_log` rollouts.

        Returns:
            a `StepResult`: metrics hold `step`, `train/*`, `progress/*` and `perf/*`
            (docs/run-folder.md); the caller adds `eval/*` and writes the run folder.
        """
        config = self.config
        started = time.perf_counter()
        self.phase_s = dict.fromkeys(PHASES, 0.0)
        step = self.step_done + 1
        self._set_learning_rate(self.step_done)
        problems = self.prompts.next_batch(config.batch_size)
        on_count = on_policy_count(config, len(problems))
        logging = step % config.sample_every == 0 or step == config.steps
        flops_before, teacher_flops_before = self.flops.as_metrics(), dict(self.teachers.flops_by_task)
        # This process's contiguous share of each part (all of it in a one-process run).
        on_rows, off_rows = self.world.shard(on_count), self.world.shard(len(problems) - on_count)
        parts: list[BatchPart] = []
        if on_rows:
            parts.append(self._on_policy_part(problems[on_rows.start : on_rows.stop], teacher_view=logging,
                                              first_prompt=on_rows.start))
        if off_rows:
            # The off-policy part's KL and records are shown only when it is the whole batch (SFT).
            parts.append(self._off_policy_part(problems[on_count + off_rows.start : on_count + off_rows.stop],
                                               teacher_view=logging and not on_count,
                                               first_prompt=on_count + off_rows.start))
        # The loss is the mean over the global batch's completion tokens: each process
        # divides its own token-weighted sum by the global count, and the gradients are
        # summed across processes below.
        token_counts = torch.stack([part.token_count for part in parts]).float() if parts else torch.zeros(1)
        local_sum = (sum(part.loss * n for part, n in zip(parts, token_counts)) if parts
                     else torch.zeros((), device=self.device))
        if self.world.size == 1:
            loss = loss_value = local_sum / token_counts.sum().clamp(min=1)
        else:
            global_sum, global_tokens = self.world.sum(
                torch.stack([local_sum.detach().float().cpu(), token_counts.sum().cpu()])).tolist()
            loss = local_sum / max(global_tokens, 1.0)
            loss_value = torch.tensor(global_sum / max(global_tokens, 1.0))
        if not torch.isfinite(loss_value):
            raise NonFiniteLoss(f"the loss is {loss_value.item()} at step {step}; weights from before this step are kept")

        trainable = [p for p in self.student.parameters() if p.requires_grad]
        with self._timed("student"):
            self.optimizer.zero_grad(set_to_none=True)
            if parts:
                loss.backward()
        with self._timed("optimizer"):
            if not sharding.is_sharded(self.student):  # a sharded student's backward sums them already
                self.world.sum_gradients(trainable)
            grad_norm = sharding.full_norm(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
            if not torch.isfinite(grad_norm):
                raise NonFiniteLoss(f"the gradient norm is {grad_norm.item()} at step {step}; weights from before this step are kept")
            self.optimizer.step()

        trained_tokens = sum(int(part.rollouts.attention_mask_BS.sum()) for part in parts)
        self.flops.add_training(self.student_params, trained_tokens)
        # Counters count the global batch: one sum over processes of this step's counts.
        flops_after = self.flops.as_metrics()
        flop_keys = ("perf/flops_sampling", "perf/flops_teacher", "perf/flops_training")
        counts = self.world.sum(torch.tensor(
            [float(sum(len(part.rollouts.prompts) for part in parts)), float(token_counts.sum())]
            + [flops_after[key] - flops_before[key] for key in flop_keys]
            + [self.teachers.flops_by_task[task] - teacher_flops_before[task] for task in self.tasks],
            dtype=torch.float64))
        samples, completion_tokens = int(counts[0]), int(counts[1])
        if self.world.size > 1:
            self.flops = FlopsCounter.from_metrics(
                {key: flops_before[key] + delta for key, delta in zip(flop_keys, counts[2:5].tolist())})
            self.teachers.flops_by_task = {task: teacher_flops_before[task] + delta
                                           for task, delta in zip(self.tasks, counts[5:].tolist())}
        elapsed = time.perf_counter() - started
        self.wall_s += elapsed
        self.samples_seen += samples
        self.tokens_seen += completion_tokens
        self.step_done = step

        part_metrics, part_weights = {}, {}
        for part in parts:  # on-policy metrics first, so they win on shared keys
            rows, tokens = len(part.rollouts.prompts), float(part.token_count)
            for key, value in part.metrics.items():
                if key not in part_metrics:
                    part_metrics[key] = value
                    part_weights[key] = part.weights.get(key, rows if key in ROW_MEAN_METRICS else tokens)
        metrics = {"step": step, "train/loss": loss_value.item(), "train/grad_norm": float(grad_norm),
                   "train/learning_rate": self.optimizer.param_groups[0]["lr"],
                   **self.world.mean_metrics(part_metrics, part_weights)}
        metrics.update({"progress/samples": self.samples_seen, "progress/tokens": self.tokens_seen,
                        "perf/wall_s": self.wall_s, "perf/tokens_per_s": completion_tokens / max(elapsed, 1e-9),
                        **{f"perf/time_{phase}": seconds for phase, seconds in self.phase_s.items()},
                        **self.flops.as_metrics()})
        if self.multitask:
            metrics.update({task_metric("perf/flops_teacher", task): flops
                            for task, flops in self.teachers.flops_by_task.items()})
        logged = self._log_samples(step, parts[0]) if logging and parts and self.world.is_main else []
        return StepResult(loss_value, metrics, logged)

    def _log_samples(self, step: int, part: BatchPart) -> list[dict]:
        rollouts, verdicts = part.rollouts, part.verdicts
        rows = list(range(min(self.config.samples_to_log, len(rollouts.prompts))))
        scores = part.teacher_scores
        records = token_records(self.tokenizer, rollouts, part.student_logits_BLV,
                                scores.logits_BLV if scores else None, rows=rows,
                                teacher_top=scores if scores and scores.logits_BLV is None else None)
        return [{"step": step, "index": row, "prompt": rollouts.prompts[row], "completion": rollouts.completions[row],
                 "reward": verdicts[row].reward, "correct": verdicts[row].correct, "task": part.tasks[row],
                 "teacher": self.teachers.spec_of(part.tasks[row]), "tokens": records[row],
                 "written_by": written_by(self.config.method, self.config.sft_source)}
                for row in rows]

    def evaluate(self) -> dict:
        """Held-out metrics (`eval/*`), measured by rank 0; the others return {} (they take
        part only to gather a sharded student). Every process calls it."""
        with sharding.gathered(self.student):
            results = ({name: evaluate(self.student, self.tokenizer, task, count=self.config.eval_count,
                                          samples_per_problem=self.config.eval_samples, temperature=1.0,
                                          seed=self.config.seed)
                        for name, task in self.tasks.items()} if self.world.is_main else {})
        self.student.train()
        if not self.multitask:
            return next(iter(results.values())).as_metrics() if results else {}
        return combine_task_metrics({name: result.as_metrics() for name, result in results.items()},
                                    self.config.task_weight_map())

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
