"""``scripts/embed.py``: backbone features of every image in a folder, for a nearest-neighbour search or a plot."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mvmr.cli.flags import run_main

EXAMPLE = "python scripts/embed.py --ckpt runs/my_images/checkpoints/last.ckpt --data my_images/ --out embeddings.npz"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Embed every image under a folder with a trained encoder; writes features (N, D) and paths (N,)",
        epilog=f"example: {EXAMPLE}\nread it back: d = numpy.load('embeddings.npz'); d['features'], d['paths']",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", "-p", required=True, help="checkpoint of a run (or a .ckpt / .pth of the authors')")
    parser.add_argument("--data", "-d", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", "-o", required=True, help="output .npz file (features float32, paths)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the first GPU, else the CPU)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def embed(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    import numpy as np

    from mvmr.api import embed_images
    from mvmr.data.datasets.folders import IMAGE_EXTENSIONS, list_images
    from mvmr.errors import DataError
    from mvmr.hardware import default_device

    folder = Path(args.data).expanduser()
    if not folder.is_dir():
        raise DataError(f"--data '{folder}' is not a folder; pass the folder that holds your images")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) under '{folder}'")
    features = embed_images(
        args.ckpt, paths, args.device or default_device(), args.batch_size, args.workers, progress=not args.no_progress
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    relative = np.array([str(p.relative_to(folder)) for p in paths])
    np.savez(out, features=features, paths=relative, root=str(folder.resolve()))
    print(f"{len(paths)} images, {features.shape[1]} features each -> {out} (keys: features, paths, root)")
    return out


def main() -> int:
    return run_main(embed)()
