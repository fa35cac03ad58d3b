"""``scripts/plot_run.py <run dir>``: PNG curves of every loss term and the online probe, and a t-SNE of
test-set backbone features coloured by class."""
from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from mvmr.errors import DataError

TRAIN_PREFIX, EPOCH_SUFFIX = "train/", "_epoch"


def read_epoch_metrics(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(epoch, value), ...]} of the epoch-level columns of a Lightning ``metrics.csv``
    (``train/*_epoch`` and ``val/*``), the last value per epoch."""
    if not metrics_csv.is_file():
        raise DataError(f"'{metrics_csv}' not found; pass a run directory written by the trainers (runs/<name>)")
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch")
            if not epoch:
                continue
            for key, value in row.items():
                epoch_level = (key.startswith(TRAIN_PREFIX) and key.endswith(EPOCH_SUFFIX)) or key.startswith("val/")
                if value and epoch_level:
                    series[key.removesuffix(EPOCH_SUFFIX)][int(epoch)] = float(value)
    return {key: sorted(values.items()) for key, values in sorted(series.items())}


def plot_curves(series: dict[str, list[tuple[int, float]]], out_dir: Path) -> list[Path]:
    """loss_terms.png (one panel per training term) and probe_accuracy.png (val top-1/top-5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    terms = [k for k in series if k.startswith(TRAIN_PREFIX) and "probe" not in k]
    if terms:
        cols = min(4, len(terms))
        rows = math.ceil(len(terms) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        for ax, key in zip(axes.flat, terms):
            epochs, values = zip(*series[key])
            ax.plot(epochs, values, marker="o", ms=3)
            ax.set_title(key.removeprefix(TRAIN_PREFIX), fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(terms):]:
            ax.axis("off")
        fig.suptitle("MV-MR loss terms (epoch means)")
        fig.tight_layout()
        written.append(out_dir / "loss_terms.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    accuracy = [k for k in series if k.startswith("val/top")]
    if accuracy:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for key in accuracy:
            epochs, values = zip(*series[key])
            ax.plot(epochs, values, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy %")
        ax.set_title("online linear probe (validation split)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(out_dir / "probe_accuracy.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA-initialised) of standardised features (N, D) -> (N, 2)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    n_components = min(50, *x.shape)
    if x.shape[1] > n_components:
        x = PCA(n_components, random_state=seed).fit_transform(x)
    perplexity = min(30.0, max(2.0, (x.shape[0] - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        mask = labels == k
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=4, color=cmap(k % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    if len(class_names) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tsne_of_run(run_dir: Path, ckpt: Path, n_points: int, out_dir: Path, progress: bool) -> Path:
    """Backbone features of ``n_points`` test images (evenly spaced indices) -> tsne.png."""
    import torch

    from mvmr.api import load_encoder
    from mvmr.config import PretrainConfig, load_config
    from mvmr.data import MVMRDataModule
    from mvmr.evaluation.features import extract_features

    cfg = load_config(run_dir / "config.yaml", schema=PretrainConfig)
    backbone, transform = load_encoder(ckpt)
    dm = MVMRDataModule(cfg.dataset, 256, 0, seed=cfg.seed)
    dm.setup("test")
    view = transform.view  # x̄ of the run, for batches
    loader = dm.test_dataloader()
    keep = np.linspace(0, len(loader.dataset) - 1, min(n_points, len(loader.dataset))).astype(int)
    subset = torch.utils.data.Subset(loader.dataset, keep.tolist())
    sub_loader = torch.utils.data.DataLoader(subset, batch_size=256, shuffle=False)
    feats, labels = extract_features(backbone, sub_loader, view, "cpu", "t-SNE features", progress)
    points = tsne_embedding(feats.numpy(), cfg.seed)
    names = dm.info.class_names or [str(k) for k in range(int(labels.max()) + 1)]
    title = f"t-SNE of {cfg.dataset.name} test features ({len(keep)} images, {ckpt.name})"
    return plot_tsne(points, labels.numpy(), names, out_dir / "tsne.png", title)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Plot a run: loss terms, online-probe accuracy, t-SNE")
    parser.add_argument("run_dir", help="a run directory (holds metrics.csv, config.yaml, checkpoints/)")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/plots)")
    parser.add_argument("--ckpt", default=None, help="checkpoint for the t-SNE (default: best, else last)")
    parser.add_argument("--tsne_points", type=int, default=2000, help="test images in the t-SNE (0: skip it)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    out_dir = Path(args.out) if args.out else run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = plot_curves(read_epoch_metrics(run_dir / "metrics.csv"), out_dir)
    if args.tsne_points > 0:
        ckpt = Path(args.ckpt) if args.ckpt else run_dir / "checkpoints" / "best.ckpt"
        if not ckpt.is_file():
            ckpt = run_dir / "checkpoints" / "last.ckpt"
        written.append(tsne_of_run(run_dir, ckpt, args.tsne_points, out_dir, not args.no_progress))
    for path in written:
        print(f"wrote {path}")
    return written
