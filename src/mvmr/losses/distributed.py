"""Global-batch gathering with autograd, for batch-level loss terms under DDP.

Every rank computes the same loss L on the gathered global batch. The backward of the gather sums
∂L/∂(its slice) over ranks (an all-reduce), i.e. returns W·∂L/∂t_local for world size W; DDP then
averages parameter gradients over the W ranks, so the result is exactly the gradient one process
would get on the full global batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from mvmr.parallel import distributed_world_size


def batch_sizes(local_rows: int, device: torch.device) -> tuple[int, ...]:
    """Every rank's row count, in rank order: one all-gather of one int64, and the one point where the host
    waits for the device. A step gathers several tensors of the same rows (z̄, z, every φ_k): asking once and
    passing the answer to :func:`gather_with_grad` lets the other gathers queue without waiting."""
    size = torch.tensor([local_rows], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return tuple(int(s) for s in torch.cat(sizes).tolist())


class _GatherWithGrad(torch.autograd.Function):
    """(B_r, ...) on rank r -> (Σ_r B_r, ...) in rank order; ranks may hold different B_r (``sizes``)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        if len(sizes) != world or sizes[rank] != local.shape[0]:
            raise ValueError(f"gather: rank {rank} holds {local.shape[0]} rows, but the row counts say {sizes}")
        local = local.contiguous()
        padded = local.new_zeros((max(sizes),) + tuple(local.shape[1:]))
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([g[:n] for g, n in zip(gathered, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_global: torch.Tensor):
        grad_global = grad_global.clone(memory_format=torch.contiguous_format)  # all_reduce is in place
        dist.all_reduce(grad_global, op=dist.ReduceOp.SUM)
        return grad_global[ctx.start : ctx.stop], None


def gather_with_grad(t: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate ``t`` (B_r, ...) from all ranks along dim 0 -> (Σ_r B_r, ...), with autograd.

    ``sizes``: every rank's B_r (:func:`batch_sizes`), asked for here when not given. The identity when
    torch.distributed is not initialised or the world size is 1.
    """
    if distributed_world_size() == 1:
        return t
    return _GatherWithGrad.apply(t, tuple(sizes) if sizes is not None else batch_sizes(t.shape[0], t.device))
