"""torch.distributed glue: the process group torchrun asks for, gathers that keep gradients, rank-0 writes,
and how work is split between ranks. With one process every helper is a pass-through."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

RANKS_DIR = "ranks"


def init_from_env() -> bool:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/MASTER_ADDR (once; later calls are no-ops).

    CPU tensors talk over gloo and CUDA tensors over NCCL (each rank on GPU LOCAL_RANK), so a model on either
    device can be trained. Returns whether this process is part of a process group.
    """
    if (
        is_distributed()
        or not dist.is_available()
        or "RANK" not in os.environ
        or "WORLD_SIZE" not in os.environ
    ):
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    """Leave the process group when the work is done: every rank waits at a barrier first, so none tears down
    its connections while a peer still has a collective in flight (a no-op outside a process group)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its node: which GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Only rank 0 writes checkpoints and reports."""
    return rank() == 0


def to_local_device(module: nn.Module) -> torch.device:
    """Each rank computes on its own GPU: a module on CUDA moves to cuda:LOCAL_RANK; returns its device."""
    device = next(module.parameters()).device
    if is_distributed() and device.type == "cuda" and device.index != local_rank():
        device = torch.device("cuda", local_rank())
        module.to(device)
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def on_main_process(write: Callable[[], T]) -> T | None:
    """Rank 0 runs `write`; every rank then waits for it, so nobody reads a file before it exists."""
    result = write() if is_main_process() else None
    barrier()
    return result


def local_part(items: torch.Tensor) -> torch.Tensor:
    """This rank's strided share of `items`: positions rank, rank + N, ... (all items with one process).

    Batch b of every rank then holds, together, exactly the items of batch b of one process with an N times
    larger batch."""
    return items[rank() :: world_size()].contiguous()


def contiguous_range(total: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of `total` units, in rank order, sizes differing by ≤ 1."""
    return shard_bounds(total, world_size())[rank()]


def shard_bounds(total: int, parts: int) -> Sequence[tuple[int, int]]:
    """[start, stop) of each of `parts` contiguous shares of `total` units (what `contiguous_range` gives)."""
    return [(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


def rank_folders(root: Path) -> list[Path]:
    """Where each rank stages its share of an output: `root` itself with one process, else
    `root/ranks/<r>-of-<N>` (a rerun on another number of ranks never mistakes one for its own)."""
    if world_size() == 1:
        return [root]
    return [root / RANKS_DIR / f"{r}-of-{world_size()}" for r in range(world_size())]


def max_across_ranks(value: int) -> int:
    """The largest `value` any rank has (e.g. the longest caption of the global batch)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value])  # a CPU tensor: gloo carries it in either process group of init_from_env
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


def broadcast_from_main(value: T) -> T:
    """Rank 0's `value` on every rank, so decisions taken from it (early stopping, best epoch) agree."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: T) -> list[T]:
    """Every rank's `value`, in rank order (small picklable things such as RNG states)."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the gradient of its own rows summed over every rank's loss.

    torch.distributed.nn.functional.all_gather computes the same gradient (its reduce-scatter, or all-to-all
    and a sum on gloo), but the pinned torch deprecates it with a FutureWarning on every call, pointing to the
    private torch.distributed._functional_collectives; this Function uses public collectives only and
    tests/distributed/test_global_batch.py checks its gradients against one process's.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.narrow(0, rank() * ctx.rows, ctx.rows)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (same shape on every rank) from all ranks along dim 0, in rank order.

    Gradients reach the local rows only, summed over the ranks' losses. Every rank computes the same loss over the
    gathered batch, so that sum is N times the one-process gradient of those rows; DistributedDataParallel's mean
    over ranks then gives exactly the one-process gradient, also for parameters used outside the gathered
    tensors (the logit scales), with no loss rescaling.
    """
    if not is_distributed():
        return tensor
    if tensor.requires_grad and torch.is_grad_enabled():
        return _GatherWithGrad.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_padded(sequences: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather [B, L, ...] sequences and their [B, L] mask when L differs per rank: padded to the longest first."""
    if is_distributed():
        pad = max_across_ranks(sequences.shape[1]) - sequences.shape[1]
        sequences = torch.nn.functional.pad(sequences, (0, 0) * (sequences.dim() - 2) + (0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
    return gather_with_grad(sequences), gather_with_grad(mask)
