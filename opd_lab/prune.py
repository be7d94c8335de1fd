"""Make a smaller student by dropping transformer layers from a model (prune and distill).

Dropping whole decoder layers keeps the tokenizer, the embeddings and the chat template,
so the pruned model is a valid OPD student of the model it came from. It loses skill at
once; distillation from the full model is how it gets it back.

Which layers go: a contiguous block of `drop` layers, the block whose removal changes the
residual stream least, measured on a few prompts: the angular distance between the
hidden state entering the block and the one leaving it (`block_distances`). Deep
layers tend to be the most alike, so the chosen block is usually near the end; the
first and last layers (which map tokens in and out of the residual stream) always stay.

Example:
    >>> layers_to_keep(10, drop=3, start=5)
    [0, 1, 2, 3, 4, 8, 9]
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn


def layers_to_keep(total: int, drop: int, start: int) -> list[int]:
    """Indices of the layers kept when the block `start .. start + drop - 1` is removed.

    Raises:
        ValueError: a block outside the model, or one that would remove every layer.
    """
    if drop < 1 or start < 0 or start + drop > total or drop >= total:
        raise ValueError(f"cannot drop layers {start}..{start + drop - 1} of a model with {total} layers")
    return [index for index in range(total) if not start <= index < start + drop]


def block_distances(hidden_states: list[torch.Tensor], mask_BS: torch.Tensor, drop: int,
                    protect: int = 1) -> dict[int, float]:
    """Mean angular distance (0 = same direction, 1 = opposite) between the hidden state
    entering layer `start` and the one entering layer `start + drop`, for every block
    start that keeps the first and last `protect` layers.

    `hidden_states` is a model's `output_hidden_states` (the embeddings, then the output
    of each layer: `layers + 1` tensors of shape `(B, S, H)`); `mask_BS` marks real tokens.
    """
    layers = len(hidden_states) - 1
    starts = range(protect, layers - protect - drop + 1)
    if drop < 1 or not starts:
        raise ValueError(f"cannot drop {drop} of {layers} layers while keeping the first and last {protect}")
    mask = mask_BS.bool()
    distances = {}
    for start in starts:
        before, after = hidden_states[start][mask].float(), hidden_states[start + drop][mask].float()
        cosine = torch.nn.functional.cosine_similarity(before, after, dim=-1).clamp(-1.0, 1.0)
        distances[start] = float(torch.arccos(cosine).mean() / torch.pi)
    return distances


@torch.no_grad()
def choose_block(model, tokenizer, prompts: list[str], drop: int, protect: int = 1) -> tuple[int, dict[int, float]]:
    """The start of the `drop`-layer block to remove (the most similar in and out on
    `prompts`), and the distance of every candidate block."""
    from opd_lab.generation import encode_prompts

    device = next(model.parameters()).device
    input_ids, attention_mask = encode_prompts(tokenizer, prompts, device)
    output = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    distances = block_distances(list(output.hidden_states), attention_mask, drop, protect)
    return min(distances, key=distances.get), distances


def drop_layers(model, keep: list[int]):
    """Keep only the decoder layers `keep` of a Hugging Face causal LM, in place; returns it.

    Works for models whose layers are `model.model.layers` (Llama, Mistral, Qwen, SmolLM...).
    Each kept attention layer gets its new index, which the KV cache is keyed by.

    Raises:
        ValueError: a model without `model.model.layers`, or bad indices.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no model.layers list: only decoder-only models like "
                         "Llama, Qwen or SmolLM can be pruned by layer")
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= len(layers):
        raise ValueError(f"keep must be increasing layer indices in 0..{len(layers) - 1} (got {keep})")
    model.model.layers = nn.ModuleList(layers[index] for index in keep)
    for new_index, layer in enumerate(model.model.layers):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
    model.config.num_hidden_layers = len(keep)
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) >= len(layers):
        model.config.layer_types = [layer_types[index] for index in keep]
    return model


def save_pruned(model, tokenizer, folder: str | Path) -> Path:
    """Save a pruned model and its tokenizer with `save_pretrained`, under a temporary
    name renamed when complete (a crash never leaves a half-written model that loads)."""
    folder = Path(folder)
    partial = folder.with_name(f".partial-{folder.name}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None:  # a de-quantized GGUF: the saved weights are plain floats
        del config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder
