"""The process group, as every layer sees it: (world size, rank), or (1, 0) outside torch.distributed."""

from __future__ import annotations

import torch.distributed as dist


def distributed_world() -> tuple[int, int]:
    """(number of processes, this process's rank) of the initialised process group, else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def distributed_world_size() -> int:
    """The number of processes of the initialised process group, else 1."""
    return distributed_world()[0]
