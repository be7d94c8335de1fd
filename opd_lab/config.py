"""The run configuration: one frozen dataclass, the single source of every setting.

Each field is documented where it is declared (its `help`), validated in
`__post_init__` before any model loads, and never mutated. The CLI flags
(`opd-lab train --steps 100 ...`) and the app's Launch form are generated from these
fields; config files in YAML or JSON use the same names.

Example:
    >>> config = RunConfig(method="opd", steps=100)
    >>> config.with_overrides(learning_rate=3e-4).learning_rate
    0.0003
    >>> RunConfig(method="dpo")
    Traceback (most recent call last):
    ...
    opd_lab.config.ConfigError: method: must be one of opd, sft, rl (got 'dpo')
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opd_lab import model_spec
from opd_lab.tasks import BUILTIN_TASKS, DEFAULT_TASK

METHODS = ("opd", "sft", "rl")
ESTIMATORS = ("sampled", "full", "clipped", "topk")
# How teacher-written completions are trained on (SFT's, and OPD's off-policy share).
OFF_POLICY_LOSSES = ("cross_entropy", "exact")
DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
FINETUNE_MODES = ("auto", "full", "lora")
SFT_SOURCES = ("teacher", "teacher_greedy", "teacher_dataset", "reference")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16")
# Experiment trackers a run can stream to (opd_lab/tracking.py); each is an optional extra.
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
# RL's group-normalized advantage compares several samples of one prompt.
RL_SAMPLES_PER_PROMPT = 4
# One naming rule for run names and run ids: ASCII letters and digits first, then also
# '.', '-' and '_', never "..". A run id is the name plus "-MMDD-HHMMSS[-N]", so names
# are shorter than ids.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RUN_ID_MAX_LENGTH = 128
RUN_NAME_MAX_LENGTH = 100


class ConfigError(ValueError):
    """A bad config value; the message starts with the field's name."""


def run_id_problem(text: str, max_length: int = RUN_ID_MAX_LENGTH) -> str | None:
    """Why `text` cannot be a run name or id (None when it can): the rule both obey.

    Example:
        >>> run_id_problem("opd-addition"), run_id_problem("a..b")
        (None, "use ASCII letters, digits, '.', '-' and '_', starting with a letter or digit, without '..'")
    """
    if not isinstance(text, str) or not RUN_ID_PATTERN.fullmatch(text) or ".." in text:
        return "use ASCII letters, digits, '.', '-' and '_', starting with a letter or digit, without '..'"
    if len(text) > max_length:
        return f"use at most {max_length} characters (got {len(text)})"
    return None


def _field(default, help: str, choices: tuple | None = None, **kwargs):
    return field(default=default, metadata={"help": help, "choices": choices}, **kwargs)


def parse_config_text(text: str, where: str, json_only: bool = False) -> dict:
    """The mapping a YAML (or, with `json_only`, JSON) config text holds; `where` names it in errors.

    Raises:
        ConfigError: the text cannot be parsed, repeats a key, or is not a mapping.
    """
    try:
        data = (json.loads(text, object_pairs_hook=_unique_json_keys) if json_only
                else yaml.load(text, Loader=_UniqueKeyLoader))
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{where}: cannot parse ({' '.join(str(error).split())})") from None
    except _DuplicateKey as error:
        raise ConfigError(f"{where}: {error}; keep one") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of field names to values")
    return data


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (OPD, SFT or RL)."""

    name: str = _field("", "Run name; the run id is made from it (default: method-task).")
    method: str = _field("opd", "opd: on-policy distillation; sft: train on teacher samples; rl: GRPO with the task's reward.", METHODS)
    task: str = _field(DEFAULT_TASK, f"Built-in task ({', '.join(BUILTIN_TASKS)}) or a .jsonl file of prompt/answer rows.")
    task_regex: str = _field("", "For .jsonl tasks: a regex whose first group extracts the answer (default: exact match).")
    teacher: str = _field("lab", "Teacher model: 'lab', a local directory, a .gguf file, 'smollm2', or a hub id. With teacher_server, the model that server serves (its name there, and where the tokenizer comes from).")
    teacher_server: str = _field("", "Base URL of a vLLM server that serves the teacher (e.g. http://teacher-host:8000; `vllm serve MODEL --max-logprobs 20`). Empty: the teacher runs in this process. Set: the teacher's weights are not loaded; the server scores the student's samples at temperature 1 (OPD and the logged token views). estimator=full then trains on the top-k + tail-bucket reverse KL, a lower bound of the exact KL short by p_s(tail) * KL(p_s(.|tail) || p_t(.|tail)). Methods that need teacher samples are refused.")
    teachers: str = _field("", "Several teachers, one per task: TASK=SPEC pairs, comma-separated (YAML or JSON: a mapping, `teachers: {addition: lab:addition, sorting: lab:sorting}`; command line: `--teacher TASK=SPEC`, repeated). Each prompt is scored (and, for SFT, answered) by its task's teacher; a task not named here gets `teacher`. All of them must share the student's tokenizer.")
    teacher_servers: str = _field("", "A vLLM server per teacher: TASK=URL pairs (a mapping in YAML), for the tasks named in `teachers`; such a task's teacher is scored by its own server, which serves that teacher's spec. `teacher_server` stays the server of `teacher`.")
    teacher_top_k: int = _field(20, "With teacher_server: the teacher's top-k tokens asked per position (the server's --max-logprobs must allow it); estimator=full folds both distributions onto them plus one tail bucket.")
    task_weights: str = _field("", "Train on several tasks at once: TASK=WEIGHT pairs (YAML: a mapping; command line: `--task TASK=WEIGHT`, repeated); every batch holds the tasks in these proportions and every evaluation measures each of them (eval/accuracy is their weighted mean). A task of weight 0 is evaluated but never trained on. Empty: `task` alone. `task` must be one of them (it names the 'lab' student and the run).")
    student: str = _field("lab", "Student model to train: 'lab' (the base student), a directory, a .gguf file, 'smollm2', or a hub id.")
    steps: int = _field(150, "Optimizer steps.")
    batch_size: int = _field(32, "Prompts per step.")
    prompt_pool: int = _field(0, "Train on a fixed pool of N prompts, in shuffled epochs (0: fresh prompts every step). Every method with the same seed gets the same pool.")
    samples_per_prompt: int = _field(1, "Completions sampled per prompt (RL needs at least 2 to compare them).")
    learning_rate: float = _field(3e-5, "AdamW learning rate (constant after a short warmup); fine-tuning needs small steps.")
    warmup_steps: int = _field(5, "Steps of linear learning-rate warmup.")
    max_grad_norm: float = _field(1.0, "Gradient clipping norm.")
    temperature: float = _field(1.0, "Sampling temperature of the student's rollouts.")
    max_new_tokens: int = _field(0, "Longest completion in tokens; 0 uses the task's own limit.")
    estimator: str = _field("sampled", "OPD signal. sampled: per-token advantage log p_teacher - log p_student on the sampled token, with a policy-gradient loss; clipped: the same advantage clamped to [-advantage_clip, advantage_clip]; full: exact divergence over the whole vocabulary; topk: exact reverse KL over the student's estimator_top_k most likely tokens, both distributions renormalized there.", ESTIMATORS)
    advantage_clip: float = _field(5.0, "estimator=clipped: the bound on each token's advantage (the sampled log-ratio is unbounded below).")
    estimator_top_k: int = _field(8, "estimator=topk: the student's most likely tokens per position the reverse KL is taken over.")
    divergence: str = _field("reverse_kl", "Divergence for the full estimator (sampled is always reverse KL).", DIVERGENCES)
    jsd_beta: float = _field(0.5, "Mixture weight of the generalized JSD, in (0, 1).")
    on_policy_fraction: float = _field(1.0, "OPD only: share of each batch sampled by the student; the rest are teacher samples, trained with `off_policy_loss`.")
    off_policy_loss: str = _field("cross_entropy", "The loss on teacher-written completions (SFT's, and OPD's off-policy share). cross_entropy: the negative log-likelihood of the teacher's tokens, the one-sample estimate of the forward KL; exact: the `estimator` over the teacher's whole next-token distribution at every position of the teacher's prefix (estimator=full with its `divergence`, or topk), word-level distillation on teacher prefixes. In-process teachers only.", OFF_POLICY_LOSSES)
    reward_coef: float = _field(0.0, "OPD only: weight of the task's reward added to each token's advantage.")
    sft_source: str = _field("teacher", "SFT only. teacher: fresh teacher samples every step; teacher_greedy: the teacher's greedy answers to fresh prompts (sequence-level KD); teacher_dataset: one teacher sample per prompt of the pool, generated once and reused every epoch (off-policy distillation; needs prompt_pool); reference: the task's reference solutions.", SFT_SOURCES)
    teacher_noise: float = _field(0.0, "Mix uniform noise into the teacher: p = (1 - q) p_teacher + q / V per token, "
                                  "with q this value (0: the clean teacher). Every use of the teacher sees it: OPD's "
                                  "scores, SFT's samples (opd_lab/noisy_teacher.py). In-process teachers only.")
    finetune: str = _field("auto", "full or lora; auto is full for lab models and LoRA for real ones.", FINETUNE_MODES)
    lora_rank: int = _field(16, "LoRA rank.")
    lora_alpha: int = _field(32, "LoRA alpha (scale = alpha / rank).")
    eval_every: int = _field(25, "Evaluate held-out accuracy every N steps (and at the start and end).")
    eval_count: int = _field(200, "Held-out problems per evaluation.")
    eval_samples: int = _field(4, "Each evaluation also samples this many completions per problem at temperature 1 "
                               "and logs their mean accuracy as eval/sampled_accuracy, beside the greedy "
                               "eval/accuracy (0: greedy only).")
    eval_max_new_tokens: int = _field(0, "Cut each evaluation answer at this many tokens (0: the task's own limit). "
                                      "Answers cut short can score lower; for smoke runs and slow CPUs.")
    stop_at_accuracy: float = _field(0.0, "Finish early once held-out accuracy reaches this value (0: run all steps).")
    sample_every: int = _field(10, "Log per-token records of a few rollouts every N steps. RL and SFT run the "
                               "teacher's forward only on these steps, for train/reverse_kl and the records "
                               "(OPD needs it every step).")
    samples_to_log: int = _field(4, "Rollouts logged each time.")
    checkpoint_every: int = _field(50, "Save a checkpoint every N steps (and at the end or a stop).")
    keep_checkpoints: int = _field(3, "Checkpoints kept on disk: the newest N, plus the one with the best held-out accuracy.")
    seed: int = _field(0, "Seed for prompts, sampling and initialization.")
    device: str = _field("auto", "cpu, cuda, mps, or auto (the best available).", DEVICES)
    dtype: str = _field("auto", "Precision of the models' compute: bfloat16 casts the teacher's weights and runs "
                        "the student's forward passes under bfloat16 autocast (its weights and AdamW stay "
                        "float32); auto is bfloat16 on CUDA and float32 elsewhere.", DTYPES)
    fsdp: bool = _field(False, "With several processes (--processes N): shard the student's weights, gradients and "
                        "AdamW state across them (torch FSDP2, one unit per decoder layer), for students whose "
                        "training state does not fit one device. Sampling and evaluation gather the whole "
                        "student's weights; the teacher stays whole on every process. No effect on one process "
                        "(opd_lab/sharding.py).")
    trust_remote_code: bool = _field(False, "Allow models that ship their own Python code (only for models you trust).")
    report_to: str = _field("", f"Experiment trackers that receive each metrics row as it is written, the config as "
                            f"hyperparameters and the logged samples, comma-separated: {', '.join(TRACKERS)} "
                            "(pip install 'opd-lab[track]'); all of them write offline files. Empty: none.")
    report_dir: str = _field("", "Where the trackers write: TensorBoard event files, the W&B offline run, Trackio's "
                             "database, the MLflow file store (empty: <data dir>/tracking).")

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            choices = spec.metadata.get("choices")
            value = getattr(self, spec.name)
            if choices and value not in choices:
                raise ConfigError(f"{spec.name}: must be one of {', '.join(choices)} (got {value!r})")
            expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[spec.type]
            if not isinstance(value, expected) or (spec.type == "int" and isinstance(value, bool)):
                raise ConfigError(f"{spec.name}: expected {spec.type}, got {value!r}")
            if spec.type == "float" and not math.isfinite(value):
                raise ConfigError(f"{spec.name}: must be a finite number (got {value!r})")
        positive = ("steps", "batch_size", "samples_per_prompt", "eval_every", "eval_count",
                    "sample_every", "checkpoint_every", "keep_checkpoints", "lora_rank", "lora_alpha")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "max_new_tokens", "samples_to_log", "reward_coef", "prompt_pool", "eval_samples",
                     "eval_max_new_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must not be negative (got {getattr(self, name)})")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate: must be in (0, 1) (got {self.learning_rate})")
        if not self.temperature > 0:
            raise ConfigError(f"temperature: must be positive (got {self.temperature})")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm: must be positive (got {self.max_grad_norm})")
        if not 0 <= self.stop_at_accuracy <= 1:
            raise ConfigError(f"stop_at_accuracy: must be in [0, 1] (got {self.stop_at_accuracy})")
        if not 0 <= self.on_policy_fraction <= 1:
            raise ConfigError(f"on_policy_fraction: must be in [0, 1] (got {self.on_policy_fraction})")
        if not 0 <= self.teacher_noise < 1:
            raise ConfigError(f"teacher_noise: must be in [0, 1) (got {self.teacher_noise})")
        if not 0 < self.jsd_beta < 1:
            raise ConfigError(f"jsd_beta: must be in (0, 1) (got {self.jsd_beta})")
        if self.method == "rl" and self.samples_per_prompt < 2:
            raise ConfigError("samples_per_prompt: RL compares samples of the same prompt, so it needs at least 2")
        if self.method == "sft" and self.sft_source == "teacher_dataset" and not self.prompt_pool:
            raise ConfigError("sft_source: teacher_dataset is one teacher sample per prompt of a fixed pool; set prompt_pool too")
        if self.off_policy_loss == "exact" and self.method == "rl":
            raise ConfigError("off_policy_loss: RL trains on its own samples only; exact applies to SFT and OPD")
        if self.off_policy_loss == "exact" and self.estimator not in ("full", "topk"):
            raise ConfigError(f"off_policy_loss: exact takes the full or topk estimator over the teacher's "
                              f"distribution (got estimator={self.estimator})")
        if ((self.method == "opd" or self.off_policy_loss == "exact") and self.estimator != "full"
                and self.divergence != "reverse_kl"):
            raise ConfigError(f"divergence: the {self.estimator} estimator is reverse KL; use estimator=full for "
                              "forward_kl or jsd")
        if not self.advantage_clip > 0:
            raise ConfigError(f"advantage_clip: must be positive (got {self.advantage_clip})")
        if self.estimator_top_k < 1:
            raise ConfigError(f"estimator_top_k: must be at least 1 (got {self.estimator_top_k})")
        if self.teacher_noise and (self.teacher_server or self.teacher_servers):
            raise ConfigError("teacher_noise: a teacher server's scores cannot be mixed with noise here; "
                              "use an in-process teacher")
        if self.estimator == "topk" and (self.teacher_server or self.teacher_servers):
            raise ConfigError("estimator: topk needs the teacher's full logits; a teacher server gives its top-k "
                              "only (use sampled or full)")
        _check_task_name(self.task, "task")
        if self.name and (problem := run_id_problem(self.name, RUN_NAME_MAX_LENGTH)):
            raise ConfigError(f"name: {problem} (got {self.name!r})")
        for name in ("teacher", "student"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{name}: must name a model ('lab', a path, or a hub id)")
        unknown = [name for name in self.trackers() if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"report_to: unknown tracker {unknown[0]!r}; use {', '.join(TRACKERS)} (comma-separated)")
        if self.teacher_top_k < 1:
            raise ConfigError(f"teacher_top_k: must be at least 1 (got {self.teacher_top_k})")
        self._check_task_mix()
        if self.teacher_server or self.teacher_servers:
            self._check_teacher_server()

    def _check_task_mix(self) -> None:
        """The several-teachers fields: valid tasks, positive weights, teachers and servers of trained tasks."""
        weights = parse_pairs(self.task_weights, "task_weights")
        for task, weight in weights.items():
            _check_task_name(task, "task_weights")
            try:
                if not float(weight) >= 0 or not math.isfinite(float(weight)):
                    raise ValueError
            except ValueError:
                raise ConfigError(f"task_weights: the weight of {task} must be a number >= 0 (got {weight!r})") from None
        if weights and not sum(float(weight) for weight in weights.values()) > 0:
            raise ConfigError("task_weights: at least one task needs a positive weight")
        if weights and self.task not in weights:
            raise ConfigError(f"task: must be one of the task_weights tasks ({', '.join(weights)}), got {self.task!r}")
        tasks = self.run_tasks()
        for name in ("teachers", "teacher_servers"):
            for task, value in parse_pairs(getattr(self, name), name).items():
                if task not in tasks:
                    raise ConfigError(f"{name}: {task} is not a task of this run ({', '.join(tasks)}); "
                                      "add it to task_weights")
                if name == "teacher_servers" and task not in parse_pairs(self.teachers, "teachers"):
                    raise ConfigError(f"teacher_servers: {task} has no teacher in `teachers`; the default teacher's "
                                      "server is teacher_server")
                if name == "teacher_servers" and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
                    raise ConfigError(f"teacher_servers: expected a base URL for {task} (got {value!r})")

    def _check_teacher_server(self) -> None:
        """What a teacher known only by its scores can serve (`teacher_scoring.VllmTeacher`):
        log-probs and top-k of given tokens at temperature 1, never samples nor full logits."""
        if self.teacher_server and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.teacher_server):
            raise ConfigError(f"teacher_server: expected a base URL such as http://localhost:8000 "
                              f"(got {self.teacher_server!r})")
        if self.temperature != 1.0:
            raise ConfigError(f"temperature: a teacher server scores at temperature 1 only (got {self.temperature}); "
                              "sample at 1 or use the in-process teacher")
        if self.method == "sft" and self.sft_source != "reference":
            raise ConfigError(f"sft_source: {self.sft_source} needs teacher samples, which a teacher server does not "
                              "write here; use sft_source=reference or the in-process teacher")
        if self.method == "opd" and self.estimator == "topk":
            raise ConfigError("estimator: topk needs the teacher's logits on the student's top-k tokens, which a "
                              "teacher server does not return; use full (top-k + tail) or the in-process teacher")
        if self.off_policy_loss == "exact":
            raise ConfigError("off_policy_loss: exact needs the teacher's whole distribution, which a teacher server "
                              "does not return; use cross_entropy or the in-process teacher")
        if self.teacher_noise:
            raise ConfigError("teacher_noise: the noise is mixed into an in-process teacher's logits; a teacher "
                              "server's scores are used as they come")
        if self.method == "opd" and self.on_policy_fraction < 1:
            raise ConfigError(f"on_policy_fraction: {self.on_policy_fraction} mixes in teacher samples, which a teacher "
                              "server does not write here; use 1 or the in-process teacher")
        if self.method == "opd" and self.estimator == "full" and self.divergence != "reverse_kl":
            raise ConfigError(f"divergence: {self.divergence} needs the teacher's whole distribution; with a teacher "
                              "server, estimator=full is the top-k + tail reverse KL only")

    # --- conversions -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Build from a dict; unknown keys are an error naming them."""
        known = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a config field (known: {', '.join(sorted(known))})")
        data = dict(data)
        for name in PAIR_FIELDS:  # a mapping (YAML, JSON, the app) is stored as "KEY=VALUE,..."
            if isinstance(data.get(name), dict):
                data[name] = format_pairs(data[name])
        if data.get("task_weights") and "task" not in data:  # the run's task: the mixture's first
            data["task"] = next(iter(parse_pairs(data["task_weights"], "task_weights")), DEFAULT_TASK)
        coerced = {}
        for spec in dataclasses.fields(cls):
            if spec.name in data:
                coerced[spec.name] = _coerce(spec, data[spec.name])
        return cls(**coerced)

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        """Read a YAML or JSON config file."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not valid UTF-8 (byte {error.start}); save it as UTF-8") from None
        return cls.from_dict(parse_config_text(text, str(path), json_only=path.suffix == ".json"))

    def with_overrides(self, **changes) -> "RunConfig":
        """A new, validated config with some fields changed."""
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def with_absolute_paths(self) -> "RunConfig":
        """The same config with a task file and local model folders as absolute paths.

        A launched run works in its own folder, so a path relative to the shell's
        directory would name nothing there. Other specs (`opd_lab.model_spec`: labs,
        smollm2, run checkpoints, hub ids) are left as they are.
        """
        changes = {}
        if self.task.endswith(".jsonl"):
            changes["task"] = str(Path(self.task).expanduser().resolve())
        for role in ("teacher", "student"):
            if _is_local_path(getattr(self, role)):
                changes[role] = str(Path(getattr(self, role)).expanduser().resolve())
        if self.report_dir:
            changes["report_dir"] = str(Path(self.report_dir).expanduser().resolve())
        for name in ("teachers", "task_weights"):
            pairs = parse_pairs(getattr(self, name), name)
            absolute = {str(Path(key).expanduser().resolve()) if key.endswith(".jsonl") else key:
                        str(Path(value).expanduser().resolve()) if name == "teachers" and _is_local_path(value) else value
                        for key, value in pairs.items()}
            if absolute != pairs:
                changes[name] = format_pairs(absolute)
        if "task_weights" in changes and self.task.endswith(".jsonl"):
            changes["task"] = str(Path(self.task).expanduser().resolve())
        return self.with_overrides(**changes) if changes else self

    def run_name(self) -> str:
        """The name run ids are made from: `name`, or `method-task` (e.g. "opd-addition").

        A task file's name may hold characters a run id cannot; they become '-'.
        """
        if self.name:
            return self.name
        stem = "-".join(re.sub(r"[^A-Za-z0-9._-]+", "-", Path(task).stem).strip(".-_")[:40] or "task"
                        for task in self.run_tasks())[:80]
        return f"{self.method}-{stem}".replace("..", ".")

    def trackers(self) -> tuple[str, ...]:
        """The trackers of `report_to`, in order, without repeats: "wandb, tensorboard" -> ("wandb", "tensorboard")."""
        names = (name.strip().lower() for name in self.report_to.split(","))
        return tuple(dict.fromkeys(name for name in names if name and name != "none"))

    def run_tasks(self) -> list[str]:
        """The tasks this run trains on: `task_weights`' tasks, or `task` alone."""
        return list(parse_pairs(self.task_weights, "task_weights")) or [self.task]

    def task_weight_map(self) -> dict[str, float]:
        """Each task's share of a batch (the weights as given; {task: 1.0} for one task)."""
        return {task: float(weight) for task, weight in parse_pairs(self.task_weights, "task_weights").items()} or {
            self.task: 1.0}

    def teacher_map(self) -> dict[str, str]:
        """The teacher spec of each task of the run: `teachers`' entry, else `teacher`."""
        named = parse_pairs(self.teachers, "teachers")
        return {task: named.get(task, self.teacher) for task in self.run_tasks()}

    def server_map(self) -> dict[str, str]:
        """The teacher server of each task ("": in process): `teacher_servers`' entry for a task
        named in `teachers`, `teacher_server` for the others."""
        named, servers = parse_pairs(self.teachers, "teachers"), parse_pairs(self.teacher_servers, "teacher_servers")
        return {task: servers.get(task, "") if task in named else self.teacher_server for task in self.run_tasks()}

    def resolved_max_new_tokens(self, task_max_new_tokens: int) -> int:
        return self.max_new_tokens or task_max_new_tokens

    def uses_lora(self, student_is_lab: bool) -> bool:
        return self.finetune == "lora" or (self.finetune == "auto" and not student_is_lab)


# The fields holding a mapping, written "KEY=VALUE,KEY=VALUE" (a mapping in YAML and JSON).
PAIR_FIELDS = ("teachers", "teacher_servers", "task_weights")


def parse_pairs(text: str, field_name: str) -> dict[str, str]:
    """A "KEY=VALUE,KEY=VALUE" field as a dict, in its order.

    Example:
        >>> parse_pairs("addition=lab:addition, sorting=lab:sorting", "teachers")
        {'addition': 'lab:addition', 'sorting': 'lab:sorting'}
    """
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = (part.strip() for part in item.partition("="))
        if not separator or not key or not value:
            raise ConfigError(f"{field_name}: expected KEY=VALUE pairs separated by commas (got {item!r})")
        if key in pairs:
            raise ConfigError(f"{field_name}: {key} is given twice")
        pairs[key] = value
    return pairs


def format_pairs(mapping: dict) -> str:
    """The field text of a mapping: `{"addition": 0.5}` -> "addition=0.5"."""
    return ",".join(f"{key}={value}" for key, value in mapping.items())


def _is_local_path(spec: str) -> bool:
    """Whether a model spec names a file or folder that exists here (`model_spec`'s grammar)."""
    try:
        return model_spec.parse(spec).is_local and Path(spec).expanduser().exists()
    except model_spec.SpecError:
        return False


def _check_task_name(task: str, field_name: str) -> None:
    if task.endswith(".jsonl"):
        if not Path(task).expanduser().is_file():
            raise ConfigError(f"{field_name}: file not found: {task}")
    elif task not in BUILTIN_TASKS:
        raise ConfigError(f"{field_name}: unknown task {task!r}; use one of {', '.join(sorted(BUILTIN_TASKS))} "
                          "or a .jsonl file")


def _coerce(spec: dataclasses.Field, value: Any) -> Any:
    """Turn strings from forms and CLIs into the field's type; leave other values alone."""
    if not isinstance(value, str) or spec.type == "str":
        return value
    try:
        if spec.type == "int":
            return int(value)
        if spec.type == "float":
            return float(value)
        if spec.type == "bool":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
    except ValueError:
        pass
    raise ConfigError(f"{spec.name}: expected {spec.type}, got {value!r}")


class _DuplicateKey(ValueError):
    pass


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    duplicated = next((key for key in keys if keys.count(key) > 1), None)
    if duplicated is not None:
        raise _DuplicateKey(f"the key {duplicated!r} appears twice")
    return dict(pairs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice is an error instead of "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: the key {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def config_fields() -> list[dataclasses.Field]:
    """The config's fields in declaration order (for CLI and form generation)."""
    return list(dataclasses.fields(RunConfig))


def flag_of(field_name: str) -> str:
    """The command-line flag of a config field: `learning_rate` -> `--learning-rate`."""
    return "--" + field_name.replace("_", "-")


def command_line(values: dict[str, Any], command: str = "launch") -> str:
    """The `opd-lab` command that sets `values`: only the flags that differ from the defaults.

    `values` may be incomplete or not yet valid (a form being filled in): missing and
    None values are left out.

    Example:
        >>> command_line({"method": "rl", "steps": 150, "temperature": 0.7})
        'opd-lab launch --method rl --temperature 0.7'
    """
    parts = [f"opd-lab {command}"]
    for spec in config_fields():
        value = values.get(spec.name)
        if value is None or value == spec.default:
            continue
        flag = flag_of(spec.name)
        if spec.type == "bool":
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts.append(f"{flag} {shlex.quote(repr(value) if isinstance(value, float) else str(value))}")
    return " ".join(parts)


PRESETS: dict[str, dict[str, Any]] = {
    "OPD on the lab": {"method": "opd"},
    # On the lab this variant learns faster than the default (README, "What to expect").
    "OPD on the lab, exact KL at temperature 0.7": {"method": "opd", "estimator": "full", "temperature": 0.7},
    "SFT on the lab": {"method": "sft"},
    "RL on the lab": {"method": "rl", "samples_per_prompt": RL_SAMPLES_PER_PROMPT, "batch_size": 8},
}
