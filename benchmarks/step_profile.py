#!/usr/bin/env python
"""Where the time of one cached pretraining step goes, for a given config: the torch profiler over a few steps.

Builds the config's module (random uint8 images of the config's size and channels, every deterministic
representation cached, as the trainer does), warms up, then profiles ``--steps`` full optimiser steps (views,
forward, backward, Adam; bf16 autocast where the CPU has it) and prints the operators with the largest self CPU
time, split by input shape, as milliseconds per step and share of the profiled total. The profiler adds its own
overhead, so read the shares, not the absolute times (benchmarks/step_time.py times steps without it).

    python benchmarks/step_profile.py --config configs/fashion_mnist_self_supervised.yaml [--channels 1]
                                      [--steps 10] [--top 25]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mvmr.cli.flags import doc_summary, int_at_least
from mvmr.config import PretrainConfig, load_config
from mvmr.data import DatasetInfo
from mvmr.errors import MVMRError
from mvmr.hardware import cpu_supports_bf16
from mvmr.methods.pretrain import MVMRPretrainModule
from mvmr.tables import format_table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark script (benchmarks are not a package)
from step_time import Stepper, attach_cache  # noqa: E402


def shape_label(shapes: list) -> str:
    """The non-empty input shapes of an operator call, e.g. ``128x32x28x28, 32x32x3x3``."""
    return ", ".join("x".join(map(str, s)) for s in shapes if s)[:60]


positive_int = int_at_least(1)  # argparse type: an integer >= 1


def config_module(cfg: PretrainConfig, channels: int) -> MVMRPretrainModule:
    """The config's pretraining module for ``channels``-channel images, seeded, logging off (no Trainer here),
    channels_last as the config says."""
    info = DatasetInfo(n_classes=10, channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)
    torch.manual_seed(0)
    module = MVMRPretrainModule(cfg, info)
    module.log = module.log_dict = lambda *a, **k: None
    return module.to(memory_format=torch.channels_last) if cfg.channels_last else module


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--channels",
        type=positive_int,
        default=1,
        help="image channels (1: Fashion-MNIST, digits; 3: CIFAR, STL10, ImageNet)",
    )
    parser.add_argument("--steps", type=positive_int, default=10)
    parser.add_argument("--top", type=positive_int, default=25)
    parser.add_argument("--n_images", type=positive_int, default=2048, help="images in the synthetic cached dataset")
    args = parser.parse_args()
    cfg = load_config(args.config, [], schema=PretrainConfig)
    if args.n_images < cfg.batch_size:
        parser.error(f"--n_images ({args.n_images}) must be at least the config's batch_size ({cfg.batch_size})")
    channels = args.channels
    module = config_module(cfg, channels)
    size = cfg.dataset.size
    images = torch.randint(0, 256, (args.n_images, channels, size, size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as root:
        attach_cache(module, images, root)
        precision = torch.bfloat16 if cfg.fp16 and cpu_supports_bf16() else None
        stepper = Stepper(module, precision)

        def step() -> None:
            index = torch.randint(0, args.n_images, (cfg.batch_size,))
            stepper.step(images[index], index)

        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.steps):
                step()
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        (
            e.key,
            shape_label(e.input_shapes),
            e.count // args.steps,
            e.self_cpu_time_total / 1e3 / args.steps,
            100.0 * e.self_cpu_time_total / total,
        )
        for e in events[: args.top]
    ]
    print(
        f"{args.config}: batch {cfg.batch_size}, {size} px, {channels} channel(s), "
        f"{'bf16 autocast' if precision else 'float32'}, {torch.get_num_threads()} threads, {args.steps} steps"
    )
    print(format_table(["operator", "input shapes", "calls per step", "self ms per step", "% of profiled"], rows))
    print(f"profiled total: {total / 1e3 / args.steps:.1f} ms per step")


if __name__ == "__main__":
    try:
        main()
    except MVMRError as err:  # a bad config: one line, not a traceback
        print(f"error: {err}", file=sys.stderr)  # the entry scripts' convention: exit code 2
        sys.exit(2)
