"""Plots of a run (``scripts/plot_run.py``): one figure of its curves (every loss term as the quantity it
measures, the learning rate, the online probe) and a t-SNE of backbone features (test images coloured by class;
the training images of an unlabelled folder). Reading and plotting the curves needs no torch; the t-SNE imports
it when it runs."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from mvmr.errors import DataError

TRAIN_PREFIX, EPOCH_SUFFIX = "train/", "_epoch"
LR_PREFIX = "lr-"  # LearningRateMonitor's columns: lr-Adam, lr-Adam/pg1, ...


def read_epoch_metrics(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(epoch, value), ...]} of the epoch-level columns of a Lightning ``metrics.csv``
    (``train/*_epoch`` and ``val/*``), the last value per epoch."""
    series, _ = read_metrics(metrics_csv)
    return series


def read_metrics(metrics_csv: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """(epoch-level series as :func:`read_epoch_metrics`, step-level learning rates {lr-*: [(step, value)]})."""
    if not metrics_csv.is_file():
        raise DataError(f"'{metrics_csv}' not found; pass a run directory written by the trainers (runs/<name>)")
    series: dict[str, dict[int, float]] = defaultdict(dict)
    rates: dict[str, dict[int, float]] = defaultdict(dict)
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            epoch, step = row.get("epoch"), row.get("step")
            for key, value in row.items():
                if not value:
                    continue
                if key.startswith(LR_PREFIX) and step:
                    rates[key][int(step)] = float(value)
                epoch_level = (key.startswith(TRAIN_PREFIX) and key.endswith(EPOCH_SUFFIX)) or key.startswith("val/")
                if epoch and epoch_level:
                    series[key.removesuffix(EPOCH_SUFFIX)][int(epoch)] = float(value)
    ordered = lambda table: {key: sorted(values.items()) for key, values in sorted(table.items())}
    return ordered(series), ordered(rates)


def term_curve(key: str, points: list[tuple[int, float]]) -> tuple[str, list[int], list[float]]:
    """(label, epochs, values) of a logged loss term, as the quantity it measures: the dependence terms are
    logged as 1 - dCor and -dCov² (what the loss minimises) and shown as dCor and dCov² (higher: more dependent)."""
    name = key.removeprefix(TRAIN_PREFIX)
    epochs, values = (list(v) for v in zip(*points))
    if name == "dcor_zz" or name.startswith("dcor/"):
        label = "dCor(z̄, z)" if name == "dcor_zz" else f"dCor({name.split('/', 1)[1]}(x̄), z)"
        return label, epochs, [1 - v for v in values]
    if name == "dcov_zz" or name.startswith("dcov/"):
        label = "dCov²(z̄, z)" if name == "dcov_zz" else f"dCov²({name.split('/', 1)[1]}(x̄), z)"
        return label, epochs, [-v for v in values]
    labels = {
        "mse": "MSE(z̄, z)",
        "std": "variance hinge (z and z̄)",
        "loss": "total loss",
        "probe_loss": "probe cross-entropy",
        "probe_top1": "probe top-1 (train batches)",
    }
    return labels.get(name, name), epochs, values


def spans_decades(values: Sequence[float]) -> bool:
    """Positive values whose largest is more than 10 times the smallest: drawn on a log axis."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) > 10 * min(positive)


def plot_curves(
    series: dict[str, list[tuple[int, float]]], out_dir: Path, rates: dict[str, list[tuple[int, float]]] | None = None
) -> list[Path]:
    """One figure, ``run.png``: the total loss, the invariance / variance terms, the dependence terms (dCor or
    dCov² with each representation, higher = more dependent), the learning rate and the online probe's accuracy,
    each panel with a legend; an axis is logarithmic where its curves span more than a decade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = {key: term_curve(key, points) for key, points in series.items() if key.startswith(TRAIN_PREFIX)}
    groups = [
        ("total loss", [k for k in terms if k.endswith("/loss")], "loss"),
        ("invariance and variance terms", [k for k in terms if k.endswith(("/mse", "/std"))], "term"),
        ("dependence with z (higher: more dependent)", [k for k in terms if "/dcor" in k or "/dcov" in k], "statistic"),
        ("online probe (train batches)", [k for k in terms if "probe" in k], "value"),
    ]
    panels = [(title, [terms[k] for k in keys], ylabel) for title, keys, ylabel in groups if keys]
    if rates:
        panels.append(
            (
                "learning rate",
                [(key.removeprefix(LR_PREFIX), *map(list, zip(*points))) for key, points in rates.items()],
                "lr",
            )
        )
    accuracy = [k for k in series if k.startswith("val/top")]
    if accuracy:
        panels.append(
            ("online probe (validation split)", [(k, *map(list, zip(*series[k]))) for k in accuracy], "accuracy %")
        )
    if not panels:
        return []
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, curves, ylabel) in zip(axes.flat, panels):
        for label, xs, ys in curves:
            ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, ms=3, label=label)
        if all(spans_decades(ys) for _, _, ys in curves) or (ylabel == "lr" and all(min(ys) > 0 for *_, ys in curves)):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step" if ylabel == "lr" else "epoch", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"run {out_dir.parent.name if out_dir.name == 'plots' else out_dir.name}")
    fig.tight_layout()
    path = out_dir / "run.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


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
    import torch  # here: the curves are plotted without torch

    from mvmr.api import load_encoder
    from mvmr.config import PretrainConfig, load_config
    from mvmr.data import MVMRDataModule
    from mvmr.evaluation.features import extract_features

    cfg = load_config(run_dir / "config.yaml", schema=PretrainConfig)
    backbone, transform = load_encoder(ckpt)
    dm = MVMRDataModule(cfg.dataset, 256, 0, seed=cfg.seed)
    dm.setup("fit")
    view = transform.view  # x̄ of the run, for batches
    labelled = bool(dm.info.n_classes) and len(dm.test_dataset) > 0
    dataset = dm.test_dataset if labelled else dm.pretrain_dataset  # unlabelled folders: the training images
    keep = np.linspace(0, len(dataset) - 1, min(n_points, len(dataset))).astype(int)
    subset = torch.utils.data.Subset(dataset, keep.tolist())
    sub_loader = torch.utils.data.DataLoader(subset, batch_size=256, shuffle=False)
    feats, labels = extract_features(backbone, sub_loader, view, "cpu", "t-SNE features", progress)
    points = tsne_embedding(feats.numpy(), cfg.seed)
    if not labelled:
        title = f"t-SNE of {cfg.dataset.name} training features ({len(keep)} images, no labels, {ckpt.name})"
        return plot_tsne(points, np.zeros(len(keep), dtype=int), ["images"], out_dir / "tsne.png", title)
    names = dm.info.class_names or [str(k) for k in range(int(labels.max()) + 1)]
    title = f"t-SNE of {cfg.dataset.name} test features ({len(keep)} images, {ckpt.name})"
    return plot_tsne(points, labels.numpy(), names, out_dir / "tsne.png", title)
