"""How many loader workers one GPU needs on ImageNet: decode + crop images/s per worker core, next to the images/s
one GPU's MV-MR step consumes.

    python benchmarks/data_path.py [--images 200] [--rounds 3] [--step_images_per_s N]

Writes ImageNet-like JPEGs first (sizes drawn around ImageNet's mean of about 400 x 350, quality 90, smooth
content with noise), then times, in this process (one core), round by round interleaved:
- ``square``: the decode of the x̄ square alone (shorter side 256, centre square), what the cache build and
  evaluation loaders do;
- ``square + crops``: the pretraining loader with crops in the loader: the square plus x' and one augmented
  copy cut from the whole image (the authors' five: ``augmented_pixels`` needs one), with reduced-size decoding.
``--step_images_per_s``: images/s one GPU's training step consumes, if you measured it (``benchmarks/step_time.py``
on the GPU); otherwise an estimate from FLOPs is used and said so.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvmr.cli.flags import doc_summary, int_at_least
from mvmr.data.datasets.base import load_image
from mvmr.data.loader_crops import decode_with_crops
from mvmr.data.views import LoaderCrops
from mvmr.tables import format_table

SIZE, LOAD = 224, 256
CROPS = LoaderCrops(SIZE, (0.08, 1.0), (3 / 4, 4 / 3), 0.5, count=2)
# ResNet-50, 224 px, two views + the probe's labelled batch: 7 x 4.09 GMACs + 0.9 for the projector = 29.5 GMACs
# (59 GFLOP) per image; one A100 sustains about 64 TFLOPS in mixed precision (docs/reproducing.md)
ESTIMATED_STEP_IMAGES_PER_S = 64e12 / 59e9


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs (quality 90) of ImageNet-like sizes: width ~ N(400, 80), height ~ N(350, 70), at least 150."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        width, height = (max(150, int(v)) for v in (rng.normal(400, 80), rng.normal(350, 70)))
        coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        noisy = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, size=(height, width, 3))
        path = folder / f"img{i:05d}.JPEG"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def time_pass(paths: list[Path], with_crops: bool) -> float:
    """Images/s of one pass over ``paths`` in this process."""
    start = time.perf_counter()
    for path in paths:
        if with_crops:
            decode_with_crops(path, "RGB", LOAD, CROPS)
        else:
            np.asarray(load_image(path, "RGB", LOAD))
    return len(paths) / (time.perf_counter() - start)


def run(images: int, rounds: int, step_images_per_s: float | None) -> str:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), images)
        time_pass(paths[:10], True)  # warm-up
        rates = {"square": [], "square + crops": []}
        for _ in range(rounds):
            rates["square"].append(time_pass(paths, False))
            rates["square + crops"].append(time_pass(paths, True))
    consumed = step_images_per_s or ESTIMATED_STEP_IMAGES_PER_S
    source = (
        "measured (--step_images_per_s)"
        if step_images_per_s
        else ("ESTIMATED from FLOPs, not measured: 59 GFLOP per image at 64 TFLOPS (one A100, ResNet-50, 224 px)")
    )
    rows = []
    for name, values in rates.items():
        median = statistics.median(values)
        rows.append([name, median, int(np.ceil(consumed / median))])
    table = format_table(["loader work per image", "images/s per worker core (median)", "workers per GPU"], rows)
    return (
        f"{images} ImageNet-like JPEGs, {rounds} rounds, one core; one GPU's step consumes {consumed:.0f} "
        f"images/s, {source}\n{table}\nSet n_workers to the 'square + crops' row's workers per GPU (per process "
        "under DDP), within the node's cores."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--images", type=int_at_least(1), default=200, help="JPEGs written and decoded per round")
    parser.add_argument("--rounds", type=int_at_least(1), default=3, help="interleaved rounds (the median is kept)")
    parser.add_argument(
        "--step_images_per_s",
        type=float,
        default=None,
        help="images/s one GPU's training step consumes, measured (default: a FLOP estimate)",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print(run(args.images, args.rounds, args.step_images_per_s))


if __name__ == "__main__":
    main()
