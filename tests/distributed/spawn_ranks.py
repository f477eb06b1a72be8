"""Run a function in N CPU processes joined in a gloo process group, the way torchrun would start them."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aladin import distributed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world: int, port: int, worker: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(
        CUDA_VISIBLE_DEVICES="",  # gloo on CPU even on a GPU machine
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    assert distributed.init_from_env() and distributed.world_size() == world
    try:
        worker(*args)
    except BaseException:
        dist.destroy_process_group()
        raise
    distributed.shutdown()  # as the CLI leaves a process group: a barrier, then the teardown
    # The worker's results are on disk (workers close their files). Skip the interpreter's teardown, where gloo's
    # C++ threads have (rarely, on a loaded CI machine) aborted a finished rank with "terminate called without an
    # active exception".
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(worker: Callable[..., None], *args: Any, world: int = 2) -> None:
    """`worker(*args)` in `world` spawned processes (torchrun's environment variables, 127.0.0.1, a free port)."""
    mp.spawn(_entry, args=(world, free_port(), worker, args), nprocs=world, join=True)
