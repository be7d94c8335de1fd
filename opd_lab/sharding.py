"""Sharded students (FSDP): a student too big to train on one device, split across the run's processes.

A data-parallel run (`opd_lab.distributed`) keeps a whole copy of the student, its
gradients and its AdamW state on every process: 16 bytes per parameter in float32,
128 GB for an 8B student. With `RunConfig.fsdp` (or accelerate's FSDP config, which
sets `ACCELERATE_USE_FSDP`), each process keeps only its 1/N share of all three:
torch's FSDP2 (`fully_shard`) makes one unit per decoder layer plus the root, gathers a
unit's weights just before its forward and backward, and reduce-scatters its gradients.
The teacher is inference-only and stays whole on every process (or behind a teacher
server, `opd_lab.teacher_scoring`).

Three places differ from the data-parallel engine:

- **Sampling and evaluation** run inside `gathered`: every process gathers the whole
  student once (its weights only, 2 bytes per parameter in bfloat16), then decodes its
  own rows with no collective per token, so processes whose rows end at different
  lengths never wait for each other. Training states stay sharded throughout.
- **Gradients** are summed, not averaged, across processes (`shard`), as in the
  data-parallel engine: each process's loss is already its share of the global mean.
- **Checkpoints** are gathered into the same files a one-process run writes
  (`full_model_state`, `full_optimizer_state`), so a run sharded on N processes resumes
  on any number of processes, sharded or not, and the app reads it as any other.

Example (two CPU processes over gloo; on GPUs the same without the caveats):

    opd-lab train --processes 2 --fsdp --method opd --steps 100
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from opd_lab.config import ConfigError

# What `accelerate launch` sets when its config says FSDP (`distributed_type: FSDP`).
ACCELERATE_FSDP_VAR = "ACCELERATE_USE_FSDP"


def requested(config_fsdp: bool) -> bool:
    """Whether this run shards its student: the config's `fsdp`, or accelerate's FSDP config."""
    return config_fsdp or os.environ.get(ACCELERATE_FSDP_VAR, "").lower() in ("1", "true", "yes")


def check_shares(rows_by_part: dict[str, int], processes: int) -> None:
    """Refuse a step whose parts cannot give every process a row of each.

    A sharded student's forward and backward are collectives, so every process must
    take part in each part of every step (its on-policy and its teacher-written rows).

    Example:
        >>> check_shares({"on-policy": 4, "teacher-written": 0}, 2)
        >>> check_shares({"on-policy": 3, "teacher-written": 1}, 2)
        Traceback (most recent call last):
        ...
        opd_lab.config.ConfigError: fsdp: each step's 1 teacher-written prompt(s) cannot be shared by 2 processes; use a batch_size and on_policy_fraction that give each process at least one, or fewer processes
    """
    for part, rows in rows_by_part.items():
        if 0 < rows < processes:
            raise ConfigError(f"fsdp: each step's {rows} {part} prompt(s) cannot be shared by {processes} "
                              "processes; use a batch_size and on_policy_fraction that give each process at "
                              "least one, or fewer processes")


def layer_classes(model: torch.nn.Module) -> set[str]:
    """The class names of the model's repeated blocks (`_no_split_modules`: "LlamaDecoderLayer", ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    names = set(getattr(base, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"fsdp: {type(base).__name__} does not name its decoder layers (_no_split_modules); "
                         "it cannot be sharded layer by layer")
    return names


def shard(model: torch.nn.Module, processes: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Shard `model` in place across the process group's `processes` processes; returns it.

    One FSDP unit per decoder layer and one for the rest (embeddings, final norm, head).
    Gradients are summed across processes (divide factor 1, reduced with a plain sum).
    Under bfloat16 the gathered weights are cast for the forward and gradients are
    reduced in float32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device_type = next(model.parameters()).device.type
    mesh = init_device_mesh(device_type, (processes,))
    policy = MixedPrecisionPolicy(param_dtype=dtype if dtype != torch.float32 else None,
                                  reduce_dtype=torch.float32)
    classes = layer_classes(model)
    for module in model.modules():
        if type(module).__name__ in classes:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for unit in _units(model):  # each unit has its own setting
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's FSDP units: its layers and itself."""
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


@contextmanager
def gathered(model: torch.nn.Module):
    """Hold the whole of a sharded `model` on every process for the block (no-op when not sharded).

    Every process must enter it (the gathering is a collective); inside, forward passes
    run without collectives, as many as each process needs. The weights are dropped
    again on the way out, even after an error.
    """
    if not is_sharded(model):
        yield model
        return
    units = _units(model)
    for unit in units:
        unit.unshard()
    model.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        model.set_reshard_after_forward(True)
        for unit in units:
            unit.reshard()


def full_model_state(model: torch.nn.Module) -> dict | None:
    """The whole state dict of a sharded `model`, on rank 0 (in CPU memory); None elsewhere.

    A collective: every process must call it. For an unsharded model: None (save it as is).
    """
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    # A tied weight (the head sharing the embedding) is listed under both names here;
    # keep the name `named_parameters` gives it, as an unsharded model's save does.
    kept = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in state.items() if name in kept}


def _trainable_names(model: torch.nn.Module) -> list[str]:
    """The optimizer's parameters, in its order: the trainable ones, as `model.parameters()` lists them."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The whole optimizer state of a sharded `model`, on rank 0, in `optimizer.state_dict()`'s
    own format (parameters numbered in order), so any run, sharded or not, can load it.

    A collective: every process must call it. For an unsharded model: `optimizer.state_dict()`.
    """
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    number = {name: index for index, name in enumerate(_trainable_names(model))}
    return {"state": {number[name]: value for name, value in by_name["state"].items()},
            "param_groups": [{**group, "params": [number[name] for name in group["params"]]}
                             for group in by_name["param_groups"]]}


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load an `optimizer.state_dict()`-format state (from any run) into `optimizer`,
    sharding it when `model` is sharded (every process passes the whole state)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _trainable_names(model)
    by_name = {"state": {names[index]: value for index, value in state["state"].items()},
               "param_groups": [{**group, "params": [names[index] for index in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """`(this process's, the whole model's)` bytes of weights: equal for an unsharded model.

    A shard includes FSDP's padding (each weight's first dimension is padded to a multiple of
    the process count).
    """
    local = whole = 0
    for parameter in model.parameters():
        size = parameter.element_size()
        shard = parameter.to_local() if hasattr(parameter, "to_local") else parameter
        local += shard.numel() * size
        whole += parameter.numel() * size
    return local, whole


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """`clip_grad_norm_`'s result as a plain tensor (a sharded model's is a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
