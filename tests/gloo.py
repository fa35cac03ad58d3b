"""Running a function on several CPU processes joined by a gloo process group, for DDP-equivalence tests.

A worker is ``worker(rank, port, out_dir)``: it calls :func:`init_gloo`, computes, and hands its results to
:func:`save_rank_results`; :func:`run_gloo` starts the processes, waits and returns every rank's results.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, port: int, world: int, timeout_s: float = 60.0) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))


def save_rank_results(out_dir: str | Path, rank: int, results: Any) -> None:
    """Write a rank's results atomically (the file exists only once complete)."""
    path = os.path.join(out_dir, f"rank{rank}.pt")
    torch.save(results, path + ".tmp")
    os.replace(path + ".tmp", path)


def run_gloo(
    worker: Callable[[int, int, str], None], world: int, out_dir: str | Path, timeout_s: float = 60.0
) -> list[Any]:
    """Spawn ``world`` processes running ``worker(rank, port, out_dir)`` and return their saved results."""
    out_dir = str(out_dir)
    context = mp.spawn(worker, args=(free_port(), out_dir), nprocs=world, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.terminate()
                pytest.fail("DDP workers did not finish in time")
    except mp.ProcessExitedException:
        # gloo's teardown (destroy_process_group) occasionally aborts a worker *after* it wrote its results
        # ("terminate called without an active exception"); accept that only when every rank's file is complete
        if not all(os.path.exists(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)):
            raise
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]
