#!/usr/bin/env python
"""Pretraining step with channels_last inputs: backbone weights in the default layout vs channels_last
(and, with ``--compile``, the same step with the backbone torch.compile'd).

Until 2026-11-29 ``channels_last: true`` converted only the inputs; oneDNN then reorders every convolution
weight on every call, forward and backward. Both variants run the same MV-MR step (two views, MSE + variance
+ dCor(z̄, z), Adam) of a config's encoder and projector, interleaved round by round in one process; the
median of the per-round ratios is printed.

    python benchmarks/channels_last_weights.py [--config configs/fashion_mnist_self_supervised.yaml] [--rounds 12] [--channels 1] [--compile]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mvmr.hardware import cpu_supports_bf16
from mvmr.tables import format_table
from mvmr.config import load_config
from mvmr.data import DatasetInfo
from mvmr.methods.pretrain import MVMRPretrainModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist_self_supervised.yaml")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--channels", type=int, default=1, help="image channels (1: Fashion-MNIST)")
    parser.add_argument("--compile", action="store_true", help="also time the backbone under torch.compile")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config(args.config, ["probe.enabled=false", "representations=[]", "channels_last=true"])
    channels = args.channels
    info = DatasetInfo(n_classes=10, channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)
    precision = torch.bfloat16 if cpu_supports_bf16() else None
    fixed = MVMRPretrainModule(cfg, info).train()  # weights channels_last (what the trainer does now)
    inputs_only = MVMRPretrainModule(cfg, info).train()
    inputs_only.backbone.to(memory_format=torch.contiguous_format)  # the old behaviour
    variants = {"inputs only (before)": inputs_only, "inputs + weights (now)": fixed}
    if args.compile:
        compiled = MVMRPretrainModule(cfg, info).train()
        compiled.backbone.compile()
        variants["inputs + weights, torch.compile"] = compiled
    optimisers = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in variants.items()}
    size = cfg.dataset.size
    images = torch.randint(0, 256, (cfg.batch_size, channels, size, size), dtype=torch.uint8)
    times = {name: [] for name in variants}
    for r in range(args.rounds + 2):  # the first call of a compiled variant compiles (in warm-up round 0)
        for name, module in variants.items():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
                _, z_bar = module.embed(module.eval_view(images))
                _, z = module.embed(module.train_view(images))
                loss, _ = module.objective(z_bar, z, {}, {})
            optimisers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimisers[name].step()
            if r >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    before, now = times["inputs only (before)"], times["inputs + weights (now)"]
    print(f"{args.config}: batch {cfg.batch_size}, {size}x{size}, {'bf16' if precision else 'float32'}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print(format_table(["backbone weights", "s / step"], [[k, statistics.median(v)] for k, v in times.items()]))
    if args.compile:
        compiled_times = times["inputs + weights, torch.compile"]
        print(f"compiled / eager (inputs + weights) = "
              f"{statistics.median(c / n for c, n in zip(compiled_times, now)):.2f}")
    print(f"inputs only / inputs + weights = {statistics.median(b / n for b, n in zip(before, now)):.2f}")


if __name__ == "__main__":
    main()
