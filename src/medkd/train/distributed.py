"""Process-group set-up for ``torchrun`` (DDP): NCCL on GPUs, gloo on CPUs.

Outside torchrun (no ``WORLD_SIZE`` in the environment) this is a no-op context with rank 0 of 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "distributed_context"]


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: str | None


@contextmanager
def distributed_context(device: str | None = None) -> Iterator[DistContext]:
    """Initialise (and afterwards destroy) the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DistContext(0, 1, device)
        return
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield DistContext(rank, world, device)
    finally:
        dist.barrier()
        dist.destroy_process_group()
