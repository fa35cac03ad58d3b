"""Optimisers (adam, adamw, sgd, lars) and per-step learning-rate schedules, as registries."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from mvmr.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[Callable[..., Callable[[int], float]]] = Registry("scheduler")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017).

    Parameter groups with ``lars_exclude=True`` (biases, norms, the probe) get plain SGD + momentum
    and no weight decay adaptation; the others use the trust ratio ``eta * ||w|| / ||g + wd w||``.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    grad = grad.mul(ratio)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def fused_supported(groups: list[dict]) -> bool:
    """True when every parameter is a floating-point tensor on a device with torch's fused optimiser kernels
    (CPU and CUDA among them). One fused kernel per step instead of a Python loop over tensors: Adam's step on
    the Fashion-MNIST encoder + projector (5.9M parameters, 2 CPU threads) takes 3.7 ms instead of 20.4 ms
    (``benchmarks/optimizer_step.py``). A run resumed from a checkpoint of the per-tensor optimiser keeps it."""
    try:  # private helper; the two devices below have had fused Adam/AdamW/SGD since torch 2.4
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:
        devices = {"cpu", "cuda"}
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)


@OPTIMIZERS.register("adam")
def _adam(groups, lr, wd, momentum, fused=False):
    return torch.optim.Adam(groups, lr=lr, weight_decay=wd, fused=fused or None)


@OPTIMIZERS.register("adamw")
def _adamw(groups, lr, wd, momentum, fused=False):
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, fused=fused or None)


@OPTIMIZERS.register("sgd")
def _sgd(groups, lr, wd, momentum, fused=False):
    return torch.optim.SGD(groups, lr=lr, weight_decay=wd, momentum=momentum, fused=fused or None)


@OPTIMIZERS.register("lars")
def _lars(groups, lr, wd, momentum, fused=False):  # our own loop; no fused kernel
    return LARS(groups, lr=lr, weight_decay=wd, momentum=momentum)


def param_groups(model: nn.Module, wd: float, extra: list[dict] | None = None) -> list[dict]:
    """Split ``model``'s trainable parameters: weights get ``wd``; biases and norm parameters get none."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd},
              {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]
    return [g for g in groups if g["params"]] + list(extra or [])


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(total_steps: int, warmup_steps: int, milestones: list[int] | None = None,
                  final_ratio: float = 1e-3) -> Callable[[int], float]:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``final_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


@SCHEDULES.register("cosine")
def cosine(total_steps: int, warmup_steps: int, milestones: list[int] | None = None) -> Callable[[int], float]:
    """Cosine decay from 1 to 1e-3 over all steps (no warm-up)."""
    return warmup_cosine(total_steps, 0)


@SCHEDULES.register("multistep")
def multistep(total_steps: int, warmup_steps: int, milestones: list[int] | None = None,
              steps_per_epoch: int = 1) -> Callable[[int], float]:
    """Multiply by 0.1 at each milestone (given in optimiser steps)."""
    marks = sorted(milestones or [])
    return lambda step: 0.1 ** sum(step >= m for m in marks)


def build_optimizer(cfg, groups: list[dict], lr: float, total_steps: int, steps_per_epoch: int):
    """Optimiser + per-step LambdaLR scheduler dict for Lightning, from the shared config keys. Uses torch's fused
    kernels where the parameters' device has them (Lightning moves the module before calling this)."""
    opt = OPTIMIZERS.get(cfg.optimizer, key="optimizer")(groups, lr, cfg.wd, cfg.momentum,
                                                         fused=fused_supported(groups))
    warmup = cfg.warmup_epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in cfg.milestones]
    fn = SCHEDULES.get(cfg.scheduler, key="scheduler")(total_steps, warmup, milestones)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
