"""``scripts/plot_run.py <run dir>``: one figure of the run and a t-SNE of its backbone features (:mod:`mvmr.plots`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Plot a run: loss terms, online-probe accuracy, t-SNE")
    parser.add_argument("run_dir", help="a run directory (holds metrics.csv, config.yaml, checkpoints/)")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/plots)")
    parser.add_argument("--ckpt", default=None, help="checkpoint for the t-SNE (default: best, else last)")
    parser.add_argument("--tsne_points", type=int, default=2000, help="test images in the t-SNE (0: skip it)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    from mvmr.plots import plot_curves, read_metrics, tsne_of_run

    run_dir = Path(args.run_dir)
    out_dir = Path(args.out) if args.out else run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    series, rates = read_metrics(run_dir / "metrics.csv")
    written = plot_curves(series, out_dir, rates)
    if args.tsne_points > 0:
        ckpt = Path(args.ckpt) if args.ckpt else run_dir / "checkpoints" / "best.ckpt"
        if not ckpt.is_file():
            ckpt = run_dir / "checkpoints" / "last.ckpt"
        written.append(tsne_of_run(run_dir, ckpt, args.tsne_points, out_dir, not args.no_progress))
    for path in written:
        print(f"wrote {path}")
    return written
