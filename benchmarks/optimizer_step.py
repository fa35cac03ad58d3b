#!/usr/bin/env python
"""Optimiser step time: torch's per-tensor loop (``foreach=False``, the CPU default) vs its fused kernel, which
the trainer uses where the device has one (``mvmr.methods.optim.fused_supported``).

The parameters are a config's backbone and projector (the pretraining module's), grouped like the trainer
(weights with weight decay, biases and norms without); gradients are random. Variants alternate round by round
in one process; the median of the per-round ratios is printed.

    python benchmarks/optimizer_step.py [--config configs/fashion_mnist_self_supervised.yaml] [--rounds 9] [--steps 20] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mvmr.tables import format_table
from mvmr.config import load_config
from mvmr.methods.optim import OPTIMIZERS, fused_supported, param_groups
from mvmr.models import backbone_from_config, build_projector


def seconds_per_step(opt: torch.optim.Optimizer, steps: int) -> float:
    opt.step()  # state allocated outside the timing
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist_self_supervised.yaml")
    parser.add_argument("--channels", type=int, default=1, help="image channels (1: Fashion-MNIST)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], help="config overrides, e.g. encoder.width=64")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config(args.config, args.set)
    backbone, dim = backbone_from_config(cfg.encoder, args.channels)
    model = nn.ModuleDict({"backbone": backbone, "projector": build_projector(dim, cfg.encoder.out_dim)})
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    assert fused_supported(param_groups(model, cfg.wd)), "this device has no fused optimiser kernel"
    build = OPTIMIZERS.get(cfg.optimizer, key="optimizer")
    times: dict[str, list[float]] = {"torch default (per-tensor loop on CPU)": [], "fused": []}
    for _ in range(args.rounds):
        for name, fused in (("torch default (per-tensor loop on CPU)", False), ("fused", True)):
            # fresh group dicts each time: an optimiser writes its defaults (fused among them) into them
            opt = build(param_groups(model, cfg.wd), cfg.lr, cfg.wd, cfg.momentum, fused=fused)
            assert all(bool(g.get("fused")) == fused for g in opt.param_groups)
            times[name].append(seconds_per_step(opt, args.steps))
    ratios = [a / b for a, b in zip(times["torch default (per-tensor loop on CPU)"], times["fused"])]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.optimizer} on {n_params / 1e6:.1f}M parameters ({args.config}), {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds of {args.steps} steps")
    print(format_table(["variant", "ms / step (median)"],
                       [[name, f"{1000 * statistics.median(t):.1f}"] for name, t in times.items()]))
    print(f"torch default / fused = {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
