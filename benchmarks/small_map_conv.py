#!/usr/bin/env python
"""3x3 convolutions on tiny maps: ``F.conv2d`` against the same convolution as one matrix product
(``encoder.small_map_matmul``), per layer shape and in a config's full pretraining step.

Table 1: forward + backward of one convolution (3x3, stride 1, padding 1, channels_last, bf16 autocast where the
CPU has it) on 1x1 to 3x3 maps. Table 2: the config's full cached pretraining step (views, forward, backward,
Adam, every representation term; as benchmarks/step_profile.py builds it) with ``small_map_matmul`` off and on,
from the same initial weights. Both interleave the variants round by round in one process and report the median
of the per-round ratios (matmul / conv; < 1: the matrix product is faster) and its quartiles.

    python benchmarks/small_map_conv.py [--config configs/fashion_mnist_self_supervised.yaml] [--channels 1] [--rounds 15]

The last line reads ``matmul step / conv step = X.XX``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from mvmr.hardware import cpu_supports_bf16
from mvmr.tables import format_table
from mvmr.config import PretrainConfig, load_config
from mvmr.errors import MVMRError
from mvmr.models.small_map_conv import conv2d_as_matmul, use_small_map_matmul

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts (not a package)
from step_profile import config_module, positive_int  # noqa: E402
from step_time import Stepper, attach_cache, paired_ratio, paired_ratio_quartiles  # noqa: E402

# (batch, channels, map side): the Fashion-MNIST config's layer4 (2x2, 256), wider, 1x1, and 3x3 (STL10 at 96 px)
LAYER_SHAPES = [(128, 256, 2), (128, 512, 2), (256, 512, 1), (128, 128, 3), (64, 512, 3)]


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of every variant, one call each per round, order alternating; warm-up rounds dropped."""
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds + warmup):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            variants[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def layer_rows(rounds: int, precision: torch.dtype | None) -> list[tuple]:
    rows = []
    for batch, channels, side in LAYER_SHAPES:
        x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
        weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(batch, channels, side, side)

        def run(conv: Callable) -> Callable[[], None]:
            def call() -> None:
                with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
                    out = conv(x, weight)
                out.backward(grad)
            return call

        times = interleaved({"conv": run(lambda x, w: F.conv2d(x, w, padding=1)),
                             "matmul": run(lambda x, w: conv2d_as_matmul(x, w, (1, 1), (1, 1)))}, rounds)
        q1, q3 = paired_ratio_quartiles(times["matmul"], times["conv"])
        rows.append((f"{batch} x {channels} x {side}x{side}", statistics.median(times["conv"]) * 1e3,
                     statistics.median(times["matmul"]) * 1e3, paired_ratio(times["matmul"], times["conv"]),
                     f"{q1:.2f}-{q3:.2f}"))
    return rows


def step_row(config: str, channels: int, rounds: int, precision: torch.dtype | None) -> tuple:
    cfg = load_config(config, ["encoder.small_map_matmul=false"], schema=PretrainConfig)
    conv = config_module(cfg, channels)
    matmul = copy.deepcopy(conv)  # the same initial weights
    use_small_map_matmul(matmul.backbone)
    size, n_images = cfg.dataset.size, max(2048, cfg.batch_size)
    images = torch.randint(0, 256, (n_images, channels, size, size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as root:
        attach_cache(conv, images, root)
        matmul.representation_cache = conv.representation_cache
        steppers = {"conv": Stepper(conv, precision), "matmul": Stepper(matmul, precision)}

        def run(stepper: Stepper) -> Callable[[], None]:
            def call() -> None:
                index = torch.randint(0, n_images, (cfg.batch_size,))
                stepper.step(images[index], index)
            return call

        times = interleaved({name: run(s) for name, s in steppers.items()}, rounds)
    q1, q3 = paired_ratio_quartiles(times["matmul"], times["conv"])
    return (f"{Path(config).name}, batch {cfg.batch_size}, {size} px", statistics.median(times["conv"]) * 1e3,
            statistics.median(times["matmul"]) * 1e3, paired_ratio(times["matmul"], times["conv"]), f"{q1:.2f}-{q3:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist_self_supervised.yaml")
    parser.add_argument("--channels", type=positive_int, default=1,
                        help="image channels (1: Fashion-MNIST, digits; 3: CIFAR, STL10, ImageNet)")
    parser.add_argument("--rounds", type=positive_int, default=15)
    args = parser.parse_args()
    precision = torch.bfloat16 if cpu_supports_bf16() else None
    header = ["", "conv ms", "matmul ms", "matmul / conv (median per round)", "quartiles"]
    print(f"{'bf16 autocast' if precision else 'float32'}, channels_last, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds")
    print(format_table(["one 3x3 conv, forward + backward: batch x channels x map"] + header[1:],
                       layer_rows(args.rounds, precision)))
    row = step_row(args.config, args.channels, args.rounds, precision)
    print(format_table(["full pretraining step"] + header[1:], [row]))
    print(f"matmul step / conv step = {row[3]:.2f}")


if __name__ == "__main__":
    try:
        main()
    except MVMRError as err:  # a bad config: one line, not a traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
