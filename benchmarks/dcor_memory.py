"""Peak extra CPU memory of distance_correlation on a (B, D) input with huge D.

Usage: python benchmarks/dcor_memory.py [--batch 1024] [--dim 140000] [--embed-dim 8192] [--chunk-size N]

Measured with the torch profiler's allocator events (profile_memory=True): the peak of the running
sum of bytes allocated minus freed inside the measured call, i.e. memory beyond the inputs. It is
compared with one B×B float32 matrix; a (B, B, D) broadcast would need D times that.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from mvmr.losses import distance_correlation

MIB = 2 ** 20


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak CPU bytes allocated (net of frees) while ``fn()`` runs, relative to its start."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    del result
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    memory = sorted((e["ts"], e["args"]["Bytes"]) for e in events
                    if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0)
    running = peak = 0
    for _, nbytes in memory:
        running += nbytes
        peak = max(peak, running)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=140_000, help="columns of the huge input (a flattened image)")
    parser.add_argument("--embed-dim", type=int, default=8192, help="columns of the embedding it is paired with")
    parser.add_argument("--chunk-size", type=int, default=None, help="Gram chunk columns (default: automatic)")
    args = parser.parse_args()

    torch.manual_seed(0)
    big = torch.randn(args.batch, args.dim)
    embed = torch.randn(args.batch, args.embed_dim, requires_grad=True)
    matrix_mib = args.batch ** 2 * 4 / MIB
    print(f"B={args.batch} D={args.dim} (input {big.numel() * 4 / MIB:.0f} MiB) vs embedding "
          f"{args.embed_dim}-d; one BxB float32 matrix = {matrix_mib:.1f} MiB; a (B,B,D) broadcast "
          f"would be {matrix_mib * args.dim / 1024:.0f} GiB")

    start = time.perf_counter()
    peak = peak_extra_bytes(lambda: distance_correlation(big, embed, chunk_size=args.chunk_size))
    print(f"forward:            peak extra {peak / MIB:8.1f} MiB = {peak / MIB / matrix_mib:5.1f} BxB matrices "
          f"({time.perf_counter() - start:.1f} s)")

    big.requires_grad_(True)

    def forward_backward() -> None:
        distance_correlation(big, embed, chunk_size=args.chunk_size).backward()

    start = time.perf_counter()
    peak = peak_extra_bytes(forward_backward)
    grads = (big.numel() + embed.numel()) * 4
    print(f"forward + backward: peak extra {peak / MIB:8.1f} MiB, of which the input gradients "
          f"(unavoidable) {grads / MIB:.1f} MiB; the rest {(peak - grads) / MIB:.1f} MiB = "
          f"{(peak - grads) / MIB / matrix_mib:.1f} BxB matrices ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
