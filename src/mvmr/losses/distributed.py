"""Global-batch gathering with autograd, for batch-level loss terms under DDP.

Every rank computes the same loss L on the gathered global batch. The backward of the gather sums
∂L/∂(its slice) over ranks (an all-reduce), i.e. returns W·∂L/∂t_local for world size W; DDP then
averages parameter gradients over the W ranks, so the result is exactly the gradient one process
would get on the full global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from mvmr.parallel import distributed_world_size


class _GatherWithGrad(torch.autograd.Function):
    """(B_r, ...) on rank r -> (Σ_r B_r, ...) in rank order; ranks may hold different B_r."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        local = local.contiguous()
        size = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        sizes = [int(s.item()) for s in sizes]
        padded = local.new_zeros((max(sizes),) + tuple(local.shape[1:]))
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([g[:n] for g, n in zip(gathered, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_global: torch.Tensor):
        grad_global = grad_global.clone(memory_format=torch.contiguous_format)  # all_reduce is in place
        dist.all_reduce(grad_global, op=dist.ReduceOp.SUM)
        return grad_global[ctx.start : ctx.stop]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (B_r, ...) from all ranks along dim 0 -> (Σ_r B_r, ...), with autograd.

    The identity when torch.distributed is not initialised or the world size is 1.
    """
    if distributed_world_size() == 1:
        return t
    return _GatherWithGrad.apply(t)
