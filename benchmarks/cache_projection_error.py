"""dCor(φ, z) error introduced by the cache's random projection (and by float16 storage), on real images.

Usage: python benchmarks/cache_projection_error.py [--batch 256] [--size 32] [--channels 1] [--seeds 5]
                                                   [--dims 256 1024 4096] [--reps scatnet hog pixels]

Images: Fashion-MNIST train (IDX files in /usr/share/datasets/fashion-mnist) if present, else
scikit-learn's digits; one batch of ``--batch`` images, upsampled to ``--size`` (bilinear), repeated
to ``--channels``, normalised. Representations: the project's HOG / ScatNet / pixels with their
default settings. For each representation φ (B, D) and target dimension d < D, the projection
P_s (D, d) of the cache (seeds s = 0..seeds-1) gives φP_s; the table reports dCor(φ, z) and the
mean / max over seeds of |dCor(φP_s, z) − dCor(φ, z)|, for the V-statistic dCor and for the
bias-corrected dCor², in float64, with z either
  - independent: z ~ N(0, 1) (B, 512), unrelated to the images, or
  - dependent:   z = tanh(x̄ W) (B, 512) for a fixed Gaussian W: a function of the images.
The "fp16" column is the same error for float16 storage without projection.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mvmr.losses import distance_correlation
from mvmr.representations import build_representation
from mvmr.representations.cache import RandomProjection

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
EMBED_DIM = 512


def load_images(batch: int, size: int, channels: int) -> Tuple[str, torch.Tensor]:
    """(dataset name, x̄ (batch, channels, size, size) float64, normalised to mean 0 / std 1)."""
    if FASHION_MNIST.is_file():
        from mvmr.data.datasets.idx import read_idx

        name, images = "fashion_mnist", read_idx(FASHION_MNIST)
    else:
        from sklearn.datasets import load_digits

        name, images = "digits", load_digits().images
    pick = np.random.default_rng(0).choice(len(images), size=batch, replace=False)
    x = torch.from_numpy(np.asarray(images[pick], dtype=np.float64))[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, channels, 1, 1)
    return name, (x - x.mean()) / x.std()


def embeddings(x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """z (B, 512) float64: independent of x, and a fixed nonlinear function of x."""
    gen = torch.Generator().manual_seed(123)
    flat = x.reshape(len(x), -1)
    weights = torch.randn(flat.shape[1], EMBED_DIM, generator=gen, dtype=torch.float64) / flat.shape[1] ** 0.5
    return {"independent": torch.randn(len(x), EMBED_DIM, generator=gen, dtype=torch.float64),
            "dependent": torch.tanh(flat @ weights)}


def dcor_pair(phi: torch.Tensor, z: torch.Tensor) -> Tuple[float, float]:
    """(V-statistic dCor, bias-corrected dCor²) in float64."""
    phi, z = phi.double(), z.double()
    return distance_correlation(phi, z).item(), distance_correlation(phi, z, unbiased=True).item()


def errors(phi: torch.Tensor, z: torch.Tensor, dims: List[int], seeds: int) -> Dict[str, np.ndarray]:
    """Column -> (|ΔV|, |ΔU|) per seed; columns are 'fp16' and each projection dimension d < D."""
    exact = np.array(dcor_pair(phi, z))
    out = {"fp16": np.abs(np.array([dcor_pair(phi.half(), z)]) - exact)}
    for d in dims:
        if d < phi.shape[1]:
            projected = [dcor_pair(RandomProjection(phi.shape[1], d, seed)(phi.float()), z) for seed in range(seeds)]
            out[str(d)] = np.abs(np.array(projected) - exact)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--reps", nargs="+", default=["scatnet", "hog", "pixels"])
    args = parser.parse_args()
    torch.manual_seed(0)

    name, x = load_images(args.batch, args.size, args.channels)
    targets = embeddings(x)
    print(f"{name}: B={args.batch}, images {args.channels}x{args.size}x{args.size}, z (B, {EMBED_DIM}), "
          f"{args.seeds} projection seeds; |error| mean / max over seeds")
    columns = ["fp16"] + [str(d) for d in args.dims]
    print(f"{'representation':<16}{'D':>7} {'z':<12}{'stat':<6}{'exact':>8}  "
          + "".join(f"{c:>18}" for c in columns))
    for rep_name in args.reps:
        rep = build_representation(rep_name, None, in_channels=args.channels, image_size=args.size)
        phi = rep(x.float()).double()
        for z_name, z in targets.items():
            exact = dcor_pair(phi, z)
            errs = errors(phi, z, args.dims, args.seeds)
            for stat, (label, value) in enumerate((("dCor", exact[0]), ("dCor²u", exact[1]))):
                cells = [f"{errs[c][:, stat].mean():9.1e} /{errs[c][:, stat].max():7.1e}" if c in errs
                         else f"{'(no proj.)':>18}" for c in columns]
                print(f"{rep_name:<16}{phi.shape[1]:>7} {z_name:<12}{label:<6}{value:8.4f}  "
                      + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
