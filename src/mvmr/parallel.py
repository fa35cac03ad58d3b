"""The process group, as every layer sees it: (world size, rank), or (1, 0) outside torch.distributed."""

from __future__ import annotations

import datetime

import torch.distributed as dist


def distributed_world() -> tuple[int, int]:
    """(number of processes, this process's rank) of the initialised process group, else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def distributed_world_size() -> int:
    """The number of processes of the initialised process group, else 1."""
    return distributed_world()[0]


def wait_for_every_process(timeout_hours: float = 24.0) -> None:
    """A barrier of every process that may wait for hours (no-op outside torch.distributed).

    For waits on long CPU/IO work of one process (building the representation cache): the default process group's
    barrier would hit its timeout (30 minutes under Lightning's DDP, after which NCCL aborts the run). This one
    runs over a temporary gloo group with its own timeout; a process that dies closes its connections, so the
    others fail at once instead of waiting out the timeout.
    """
    if distributed_world_size() == 1:
        return
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=timeout_hours))
    try:
        dist.barrier(group=group)
    finally:
        dist.destroy_process_group(group)
