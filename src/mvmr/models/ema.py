"""An exponential moving average (EMA) of a module's weights, kept beside it for evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used after optimiser step ``step`` (0-based): min(decay, (1 + step) / (10 + step)), so the
    first steps do not anchor the average on the random initialisation (0.1, 0.18, ... -> decay)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def make_ema_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (same weights, buffers and memory layout) to average into."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, online: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·online for every parameter and floating-point buffer (BatchNorm's running
    statistics); integer buffers (``num_batches_tracked``) are copied. Both modules must have the same structure."""
    ema_params, online_params = list(ema.parameters()), list(online.parameters())
    ema_float, online_float, ema_other, online_other = [], [], [], []
    for e, o in zip(ema.buffers(), online.buffers()):
        (ema_float if e.is_floating_point() else ema_other).append(e)
        (online_float if e.is_floating_point() else online_other).append(o)
    targets, sources = ema_params + ema_float, online_params + online_float
    if len(ema_params) != len(online_params) or len(targets) != len(sources):
        raise ValueError("update_ema: the EMA copy and the online module differ in structure")
    if targets:
        torch._foreach_lerp_(targets, [s.detach() for s in sources], 1.0 - decay)
    for e, o in zip(ema_other, online_other):
        e.copy_(o)
