"""Data-parallel training: which process this is, and the few collectives the engine needs.

One run can train on N processes (N GPUs, or N CPU processes talking over gloo). Every
process holds the whole student (or, with `fsdp`, its 1/N share: `opd_lab.sharding`)
and the whole teacher, draws the same global batch of
prompts (the prompt source is seeded the same everywhere) and works on its own
contiguous share of it (`World.shard`): it samples, asks the teacher, and backpropagates
its share. Then:

- the loss of a step is the token-weighted mean over the *global* batch: each process
  divides its own sum by the global token count, and the gradients are summed across
  processes (`World.sum_gradients`), which gives exactly the gradient of one process
  working on the whole batch;
- metrics are combined across processes (`combine_weighted_means`) before rank 0 logs
  them, so accuracy, KL, FLOPs and sample counts describe the whole batch;
- only rank 0 owns the run (`opd_lab.ownership`) and writes its folder; checkpoints hold
  the full student and optimizer, so a run resumes on any number of processes.

Sampling in a launched run is keyed by row (`row_seeds`): each completion's random
numbers depend on the seed, the step and its row in the global batch, not on which
process drew it or what else was in its batch, so 1 and 2 processes sample the same
tokens at step 1 (up to float noise).

A process is part of a launched run when the launcher set `WORLD_SIZE` (accelerate,
torchrun). Otherwise `current()` is the one-process world, whose collectives are the
identity: the ordinary path imports nothing of accelerate and does no extra work.

Launch (the CPU flavour that runs here; on GPUs the same without `--cpu`-only caveats):

    opd-lab train --processes 2 --method opd --steps 100
    accelerate launch --multi_gpu --num_processes 2 -m opd_lab train --method opd --steps 100

(`accelerate launch --cpu --num_processes 2` starts *one* process unless MPI is set up;
`--multi_gpu` on a machine without GPUs starts N CPU processes over gloo.)

Example:
    >>> world = World()  # one process
    >>> world.shard(5), world.is_main
    (range(0, 5), True)
    >>> World(rank=1, size=2).shard(5)
    range(3, 5)
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

# Environment variable every distributed launcher sets; its absence means one process.
WORLD_SIZE_VAR = "WORLD_SIZE"


class PeerLost(RuntimeError):
    """Another process of a data-parallel run stopped answering (it crashed or was killed)."""


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run; `World()` is a run of one process.

    `launched` is True under a distributed launcher, even with one process: such runs
    sample with per-row keys (`row_seeds`) so that their result does not depend on
    the number of processes.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that owns the run and writes its folder."""
        return self.rank == 0

    def shard(self, count: int) -> range:
        """This process's contiguous share of `count` rows; lower ranks get the extra ones.

        Every row belongs to exactly one rank, and rank 0 gets a row whenever there is one.
        """
        return range(_ceil_div(self.rank * count, self.size), _ceil_div((self.rank + 1) * count, self.size))

    def row_seeds(self, seed: int, step: int, rows: Iterable[int], stream: str) -> list[int] | None:
        """Per-row sampling seeds (`row_seeds`) in a launched run, so its samples do not
        depend on the number of processes; None (the run's one generator) otherwise."""
        return row_seeds(seed, step, rows, stream) if self.launched else None

    # --- collectives (the identity for one process) ------------------------------------

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of `values` over all processes (a new tensor; `values` is kept)."""
        if self.size == 1:
            return values
        # NCCL reduces GPU tensors only; gloo reduces CPU ones.
        on_gpu = torch.distributed.get_backend() == "nccl"
        total = values.detach().to(torch.device("cuda", self.local_rank) if on_gpu else "cpu").clone()
        with _collective(self):
            torch.distributed.all_reduce(total)
        return total.to(values.device)

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is True on at least one of them."""
        if self.size == 1:
            return flag
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every process."""
        if self.size == 1:
            return value
        box = [value]
        with _collective(self):
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list:
        """Every process's `value`, in rank order, on every process."""
        if self.size == 1:
            return [value]
        gathered: list = [None] * self.size
        with _collective(self):
            torch.distributed.all_gather_object(gathered, value)
        return gathered

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over processes (one flat all-reduce).

        A parameter without a gradient on this process (its share of the batch did not
        reach it) counts as zeros.
        """
        if self.size == 1:
            return
        parameters = list(parameters)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])
        with _collective(self):
            torch.distributed.all_reduce(flat)
        offset = 0
        for p in parameters:
            count = p.numel()
            p.grad = flat[offset : offset + count].view_as(p).clone()
            offset += count

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's weights (trainable or not) into every process's `module`."""
        if self.size == 1:
            return
        with _collective(self), torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                torch.distributed.broadcast(tensor.data, src=0)

    def token_mean(self, local_sum: torch.Tensor, local_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A loss's mean over the *global* batch's tokens, from this process's token-weighted sum.

        Args:
            local_sum: () the sum over this process's tokens (with its graph).
            local_tokens: () how many tokens that is.
        Returns:
            `(for_backward, value)`: `local_sum / global tokens`, whose gradients summed over
            the processes (`sum_gradients`) are the gradient of the global mean; and that
            global mean, the same on every process (the two are one tensor in a one-process run).

        Example:
            >>> World().token_mean(torch.tensor(6.0), torch.tensor(3.0))
            (tensor(2.), tensor(2.))
        """
        if self.size == 1:
            mean = local_sum / local_tokens.clamp(min=1)
            return mean, mean
        global_sum, global_tokens = self.sum(torch.stack([local_sum.detach().float().cpu(),
                                                          local_tokens.float().cpu()])).tolist()
        return local_sum / max(global_tokens, 1.0), torch.tensor(global_sum / max(global_tokens, 1.0))

    def sum_since(self, before: dict[str, float], now: dict[str, float]) -> dict[str, float]:
        """Running counts of the whole run from each process's own: every count's value
        `before` (the same on every process) plus the sum over the processes of how much
        each added since. One all-reduce, in float64 so FLOP counts stay exact; `now` itself
        in a one-process run.

        Example:
            >>> World().sum_since({"samples": 4.0}, {"samples": 8.0})
            {'samples': 8.0}
        """
        if self.size == 1:
            return dict(now)
        added = self.sum(torch.tensor([now[key] - before[key] for key in now], dtype=torch.float64)).tolist()
        return {key: before[key] + value for key, value in zip(now, added)}

    def mean_metrics(self, values: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
        """The global batch's metrics from each process's means (`combine_weighted_means`)."""
        if self.size == 1:
            return dict(values)
        return combine_weighted_means(self.gather((values, weights)))


def combine_weighted_means(shares: Sequence[tuple[dict[str, float], dict[str, float]]]) -> dict[str, float]:
    """Merge per-process means into the mean over all of their rows or tokens.

    Args:
        shares: one `(values, weights)` per process: `values[key]` is a mean over
            `weights[key]` items (rows for accuracy, tokens for KL) of that process.
    Returns:
        `{key: sum(value * weight) / sum(weight)}` over the processes that have the key;
        a key whose weights are all 0 gets the plain mean of its values.

    Example:
        >>> combine_weighted_means([({"acc": 1.0}, {"acc": 3}), ({"acc": 0.0}, {"acc": 1})])
        {'acc': 0.75}
    """
    keys: list[str] = []
    for values, _ in shares:
        keys += [key for key in values if key not in keys]
    combined = {}
    for key in keys:
        pairs = [(values[key], weights.get(key, 0.0)) for values, weights in shares if key in values]
        total = sum(weight for _, weight in pairs)
        combined[key] = (sum(value * weight for value, weight in pairs) / total if total > 0
                         else sum(value for value, _ in pairs) / len(pairs))
    return combined


def row_seeds(seed: int, step: int, rows: Iterable[int], stream: str) -> list[int]:
    """One sampling seed per row of the global batch, a pure function of its arguments.

    Args:
        seed: the run's seed.
        step: the optimizer step the rows are sampled for.
        rows: indices in the step's global batch (not this process's share).
        stream: what is sampled ("student", "teacher"), so two samplers never share numbers.
    Returns:
        63-bit seeds for `generation.generate(row_seeds=...)`.

    Example:
        >>> row_seeds(0, 1, [0, 1], "student") == row_seeds(0, 1, [0, 1], "student")
        True
    """
    seeds = []
    for row in rows:
        digest = hashlib.blake2b(f"{stream}/{seed}/{step}/{row}".encode(), digest_size=8).digest()
        seeds.append(int.from_bytes(digest, "little") >> 1)
    return seeds


def current(cpu: bool | None = None) -> World:
    """This process's world: one process unless a distributed launcher started it.

    Under a launcher the process group is set up through accelerate's `PartialState`
    (gloo on the CPU, NCCL on GPUs); `cpu` forces gloo (default: when there is no GPU).
    """
    if WORLD_SIZE_VAR not in os.environ:
        return World()
    if os.environ[WORLD_SIZE_VAR] == "1":  # launched alone: no process group to set up
        return World(launched=True)
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)
    return World(rank=state.process_index, size=state.num_processes, local_rank=state.local_process_index,
                 launched=True)


def launch_command(processes: int, module_args: Sequence[str], port: int | None = None) -> list[str]:
    """The `accelerate launch` command that runs `python -m opd_lab <module_args>` on `processes` processes.

    `--multi_gpu` is what makes accelerate start several processes through
    torch.distributed; on a machine without GPUs they train on the CPU over gloo.

    Example:
        >>> launch_command(2, ["train", "--steps", "3"], port=29999)[-7:]
        ['--main_process_port', '29999', '-m', 'opd_lab', 'train', '--steps', '3']
    """
    if processes < 1:
        raise ValueError(f"--processes: must be at least 1 (got {processes})")
    # Several processes need torch.distributed's launcher (--multi_gpu); one process gets
    # the plain launcher, and `launch_environment` marks it as launched.
    flags = ["--multi_gpu"] if processes > 1 else []
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port or free_port()), "-m", "opd_lab", *module_args]


def launch_environment(processes: int) -> dict[str, str]:
    """The environment for `launch_command`: accelerate's plain one-process launcher sets
    no `WORLD_SIZE`, so it is set here, making that process a launched world of one."""
    return {**os.environ, WORLD_SIZE_VAR: "1"} if processes == 1 else dict(os.environ)


def free_port() -> int:
    """A TCP port nobody listens on now, for the processes' rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# What a backend's error says when a peer vanished in the middle of a collective
# (gloo: "Connection reset by peer", "Connection closed by peer"; NCCL: "remote process exited").
PEER_LOSS_SIGNS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "remote process")


def lost_peer(error: BaseException, world: World) -> PeerLost | None:
    """A `PeerLost` for an error of the process group (a peer crashed or was killed during a
    collective, such as a sharded student's gathering of its weights), else None."""
    if world.size == 1 or not isinstance(error, RuntimeError) or isinstance(error, PeerLost):
        return None
    distributed_error = getattr(torch.distributed, "DistError", ())
    text = str(error).lower()
    if isinstance(error, distributed_error) or any(sign in text for sign in PEER_LOSS_SIGNS):
        return _peer_lost(world, error)
    return None


def _peer_lost(world: World, error: BaseException) -> PeerLost:
    detail = " ".join(str(error).split())[:200]
    return PeerLost(f"another of the run's {world.size} training processes stopped answering ({detail}); "
                    "resume to continue from the last checkpoint")


@contextmanager
def _collective(world: World):
    """Turn the backend's error about a vanished peer into one clear `PeerLost`."""
    try:
        yield
    except RuntimeError as error:
        raise _peer_lost(world, error) from None
