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

from opd_lab.tasks import BUILTIN_TASKS, DEFAULT_TASK

METHODS = ("opd", "sft", "rl")
ESTIMATORS = ("sampled", "full", "clipped", "topk")
DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
FINETUNE_MODES = ("auto", "full", "lora")
SFT_SOURCES = ("teacher", "teacher_greedy", "teacher_dataset", "reference")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16")
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


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (OPD, SFT or RL)."""

    name: str = _field("", "Run name; the run id is made from it (default: method-task).")
    method: str = _field("opd", "opd: on-policy distillation; sft: train on teacher samples; rl: GRPO with the task's reward.", METHODS)
    task: str = _field(DEFAULT_TASK, f"Built-in task ({', '.join(BUILTIN_TASKS)}) or a .jsonl file of prompt/answer rows.")
    task_regex: str = _field("", "For .jsonl tasks: a regex whose first group extracts the answer (default: exact match).")
    teacher: str = _field("lab", "Teacher model: 'lab', a local directory, a .gguf file, 'smollm2', or a hub id. With teacher_server, the model that server serves (its name there, and where the tokenizer comes from).")
    teacher_server: str = _field("", "Base URL of a vLLM server that serves the teacher (e.g. http://teacher-host:8000; `vllm serve MODEL --max-logprobs 20`). Empty: the teacher runs in this process. Set: the teacher's weights are not loaded; the server scores the student's samples at temperature 1 (OPD and the logged token views). estimator=full then trains on the top-k + tail-bucket reverse KL, a lower bound of the exact KL short by p_s(tail) * KL(p_s(.|tail) || p_t(.|tail)). Methods that need teacher samples are refused.")
    teacher_top_k: int = _field(20, "With teacher_server: the teacher's top-k tokens asked per position (the server's --max-logprobs must allow it); estimator=full folds both distributions onto them plus one tail bucket.")
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
    on_policy_fraction: float = _field(1.0, "OPD only: share of each batch sampled by the student; the rest are teacher samples trained with cross-entropy.")
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
        for name in ("warmup_steps", "max_new_tokens", "samples_to_log", "reward_coef", "prompt_pool", "eval_samples"):
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
        if self.method == "opd" and self.estimator != "full" and self.divergence != "reverse_kl":
            raise ConfigError(f"divergence: the {self.estimator} estimator is reverse KL; use estimator=full for "
                              "forward_kl or jsd")
        if not self.advantage_clip > 0:
            raise ConfigError(f"advantage_clip: must be positive (got {self.advantage_clip})")
        if self.estimator_top_k < 1:
            raise ConfigError(f"estimator_top_k: must be at least 1 (got {self.estimator_top_k})")
        if self.task.endswith(".jsonl") and not Path(self.task).expanduser().is_file():
            raise ConfigError(f"task: file not found: {self.task}")
        if not self.task.endswith(".jsonl"):
            if self.task not in BUILTIN_TASKS:
                raise ConfigError(f"task: unknown task {self.task!r}; use one of {', '.join(sorted(BUILTIN_TASKS))} or a .jsonl file")
        if self.name and (problem := run_id_problem(self.name, RUN_NAME_MAX_LENGTH)):
            raise ConfigError(f"name: {problem} (got {self.name!r})")
        for name in ("teacher", "student"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{name}: must name a model ('lab', a path, or a hub id)")
        if self.teacher_top_k < 1:
            raise ConfigError(f"teacher_top_k: must be at least 1 (got {self.teacher_top_k})")
        if self.teacher_server:
            self._check_teacher_server()

    def _check_teacher_server(self) -> None:
        """What a teacher known only by its scores can serve (`teacher_scoring.VllmTeacher`):
        log-probs and top-k of given tokens at temperature 1, never samples nor full logits."""
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.teacher_server):
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
        try:
            data = (json.loads(text, object_pairs_hook=_unique_json_keys) if path.suffix == ".json"
                    else yaml.load(text, Loader=_UniqueKeyLoader))
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot parse ({' '.join(str(error).split())})") from None
        except _DuplicateKey as error:
            raise ConfigError(f"{path}: {error}; keep one") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of field names to values")
        return cls.from_dict(data)

    def with_overrides(self, **changes) -> "RunConfig":
        """A new, validated config with some fields changed."""
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def with_absolute_paths(self) -> "RunConfig":
        """The same config with a task file and local model folders as absolute paths.

        A launched run works in its own folder, so a path relative to the shell's
        directory would name nothing there. Hub ids and 'lab' are left as they are.
        """
        changes = {}
        if self.task.endswith(".jsonl"):
            changes["task"] = str(Path(self.task).expanduser().resolve())
        for role in ("teacher", "student"):
            spec = getattr(self, role)
            if spec not in ("lab", "smollm2") and not spec.startswith("lab:") and Path(spec).expanduser().exists():
                changes[role] = str(Path(spec).expanduser().resolve())
        return self.with_overrides(**changes) if changes else self

    def run_name(self) -> str:
        """The name run ids are made from: `name`, or `method-task` (e.g. "opd-addition").

        A task file's name may hold characters a run id cannot; they become '-'.
        """
        if self.name:
            return self.name
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.task).stem).strip(".-_")[:40] or "task"
        return f"{self.method}-{stem}".replace("..", ".")

    def resolved_max_new_tokens(self, task_max_new_tokens: int) -> int:
        return self.max_new_tokens or task_max_new_tokens

    def uses_lora(self, student_is_lab: bool) -> bool:
        return self.finetune == "lora" or (self.finetune == "auto" and not student_is_lab)


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
