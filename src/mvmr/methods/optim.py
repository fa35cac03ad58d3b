"""Optimisers (adam, adamw, sgd, lars) and per-step learning-rate schedules, as registries."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

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

    def __init__(
        self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

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
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
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
    (CPU and CUDA among them). One fused kernel per step instead of a Python loop over tensors (measured in
    ``benchmarks/results/speed.md``). A run resumed from a checkpoint of the per-tensor optimiser keeps it."""
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


def param_groups(
    model: nn.Module, wd: float, extra: list[dict] | None = None, decay_norm_and_bias: bool = False
) -> list[dict]:
    """Split ``model``'s trainable parameters: weights get ``wd``; biases and norm parameters get none (or ``wd``
    too with ``decay_norm_and_bias``, as the authors' Adam over all encoder parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": wd},
        {"params": no_decay, "weight_decay": wd if decay_norm_and_bias else 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]] + list(extra or [])


@dataclass(frozen=True)
class ScheduleLengths:
    """What a schedule needs to know about the run, in optimiser steps.

    ``total``: steps of the whole schedule; ``warmup``: warm-up steps (``warmup_epochs`` in epochs);
    ``steps_per_epoch``: the run's optimiser steps per epoch; ``loader_batches``: floor(train images /
    batch_size), one device's batches per epoch (the authors' ``len(self.train_dataloader())``); ``accumulate``:
    batches per optimiser step; ``milestones``: multistep's steps; ``min_lr_ratio``: min_lr / lr when a floor is
    configured.
    """

    total: int
    warmup: int
    warmup_epochs: int = 0
    steps_per_epoch: int = 1
    loader_batches: int = 1
    accumulate: int = 1
    milestones: tuple = ()
    min_lr_ratio: Optional[float] = None


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(lengths: ScheduleLengths) -> Callable[[int], float]:
    """Linear warm-up, then a cosine decay over the remaining steps. Without ``min_lr_ratio`` r: from (s + 1) / W
    up to 1, then down to 1e-3. With r (``min_lr``): r + (1 − r)·s / W, then r + (1 − r)(1 + cos(π p)) / 2 with p the
    decay's progress, i.e. the authors' ``CosineAnnealingWarmupRestarts(min_lr=1e-6)`` (vkinakh/mv-mr
    src/model/cosine_annealing_warmup_restarts_scheduler.py, one cycle) at step s."""
    floor = lengths.min_lr_ratio
    final = 1e-3 if floor is None else floor

    def factor(step: int) -> float:
        if step < lengths.warmup:
            if floor is None:
                return (step + 1) / lengths.warmup
            return floor + (1 - floor) * step / lengths.warmup
        progress = min(1.0, (step - lengths.warmup) / max(1, lengths.total - lengths.warmup))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@SCHEDULES.register("cosine")
def cosine(lengths: ScheduleLengths) -> Callable[[int], float]:
    """Cosine decay from 1 to 1e-3 (or ``min_lr_ratio``) over all steps (no warm-up)."""
    return warmup_cosine(dataclasses.replace(lengths, warmup=0))


@SCHEDULES.register("multistep")
def multistep(lengths: ScheduleLengths) -> Callable[[int], float]:
    """Multiply by 0.1 at each milestone (given in optimiser steps)."""
    marks = sorted(lengths.milestones)
    return lambda step: 0.1 ** sum(step >= m for m in marks)


def _half_cosine(t: float, period: int) -> float:
    """torch's CosineAnnealingLR factor after t steps with T_max = period and eta_min = 0 (it keeps oscillating
    with period 2·T_max past T_max)."""
    return 0.5 * (1 + math.cos(math.pi * t / max(1, period)))


@SCHEDULES.register("authors_epoch_cosine")
def authors_epoch_cosine(lengths: ScheduleLengths) -> Callable[[int], float]:
    """The authors' semi-supervised schedule (vkinakh/mv-mr src/model/semi_supervised_module.py): torch's
    ``CosineAnnealingLR(T_max=len(train_dataloader()))`` stepped once per EPOCH by Lightning, so after e epochs
    the factor is (1 + cos(π e / T)) / 2 with T one device's batches per epoch: with T in batches and steps in
    epochs the rate hardly decays (100 epochs of 500 batches end at 0.90)."""

    def factor(step: int) -> float:
        return _half_cosine(step // max(1, lengths.steps_per_epoch), lengths.loader_batches)

    return factor


@SCHEDULES.register("authors_clip")
def authors_clip(lengths: ScheduleLengths) -> Callable[[int], float]:
    """The authors' distillation schedule as their code runs under Lightning 1.5 (vkinakh/mv-mr
    src/model/clip_self_supervised_module.py): ``CosineAnnealingLR(T_max=len(train_dataloader()))`` (T: one
    device's batches per epoch), stepped once per epoch by Lightning AND once per batch by the module's
    ``training_step`` from epoch ``warmup_epochs`` on. Before the optimiser step of batch b of epoch e the
    scheduler has stepped t = e (+ (e − W)·n + b + 1 from epoch W on, n batches per epoch) times and the factor is
    (1 + cos(π t / T)) / 2: almost 1 for the first W epochs (no warm-up), then a cosine that falls to 0 and back
    every 2 T batches."""
    warmup_epochs = lengths.warmup_epochs
    batches_per_epoch = lengths.steps_per_epoch * lengths.accumulate

    def factor(step: int) -> float:
        batch = (step + 1) * lengths.accumulate - 1  # the batch whose training_step precedes this optimiser step
        epoch, within = divmod(batch, batches_per_epoch)
        t = epoch
        if epoch >= warmup_epochs:
            t += (epoch - warmup_epochs) * batches_per_epoch + within + 1
        return _half_cosine(t, lengths.loader_batches)

    return factor


def schedule_lengths(
    cfg, total_steps: int, steps_per_epoch: int, loader_batches: int | None = None, lr: float | None = None
) -> ScheduleLengths:
    """The schedule's lengths from the shared config keys. ``steps_per_epoch``/``total_steps``: the run's optimiser
    steps; ``loader_batches``: floor(train images / batch_size) (None: ``steps_per_epoch``). With
    ``schedule_epoch: single_device`` an epoch of the warm-up and decay is ``loader_batches`` optimiser steps and
    the schedule spans ``epochs`` such epochs, as the authors' code counted them."""
    loader_batches = max(1, loader_batches or steps_per_epoch)
    epoch = loader_batches if cfg.schedule_epoch == "single_device" else steps_per_epoch
    total = cfg.epochs * loader_batches if cfg.schedule_epoch == "single_device" else total_steps
    ratio = None if cfg.min_lr is None else cfg.min_lr / (lr or cfg.lr)
    return ScheduleLengths(
        total=max(1, total),
        warmup=cfg.warmup_epochs * epoch,
        warmup_epochs=cfg.warmup_epochs,
        steps_per_epoch=steps_per_epoch,
        loader_batches=loader_batches,
        accumulate=cfg.accumulate_grad_batches,
        milestones=tuple(m * epoch for m in cfg.milestones),
        min_lr_ratio=ratio,
    )


def build_optimizer(
    cfg,
    groups: list[dict],
    lr: float,
    total_steps: int,
    steps_per_epoch: int,
    loader_batches: int | None = None,
    precision: str | None = None,
):
    """Optimiser + per-step LambdaLR scheduler dict for Lightning, from the shared config keys. Uses torch's fused
    kernels where the parameters' device has them (Lightning moves the module before calling this), except under
    16-mixed with ``gradient_clip_val``: a fused optimiser unscales the gradients inside its step, after Lightning
    would clip them, so Lightning refuses that pair at the first step. Parameter groups marked ``constant_lr``
    keep their rate (the authors' probe has its own unscheduled optimiser). ``precision``: the trainer's."""
    clips_scaled_gradients = bool(cfg.gradient_clip_val) and precision == "16-mixed"
    opt = OPTIMIZERS.get(cfg.optimizer, key="optimizer")(
        groups, lr, cfg.wd, cfg.momentum, fused=fused_supported(groups) and not clips_scaled_gradients
    )
    lengths = schedule_lengths(cfg, total_steps, steps_per_epoch, loader_batches, lr)
    fn = SCHEDULES.get(cfg.scheduler, key="scheduler")(lengths)
    constant = lambda step: 1.0
    fns = [constant if group.get("constant_lr") else fn for group in opt.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fns)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
