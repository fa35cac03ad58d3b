"""How well each representation's Euclidean distances separate the classes: k-NN top-1 on φ_k(x̄) of real images.

Usage: python benchmarks/representation_knn.py [--config configs/fashion_mnist_self_supervised.yaml]
                                               [--train 20000] [--test 6000] [--k 20] [--powers 0.25 0.5] [--pca 64]

dCor(φ_k, z) compares pairwise Euclidean distances, so a representation whose distances put images of a class
together is a better target. For every deterministic representation of the config (its params), on ``--train``
random images of the training split against ``--test`` other training images (never the test split): k-NN
(majority of the k nearest, Euclidean) top-1 of the features raw, z-scored (statistics of the --train rows),
after the signed power sign(φ)|φ|^p then z-scored, and the power followed by a ``--pca``-component projection.
Prints a Markdown table. Labels are used only to score; no model is trained.
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List

import numpy as np
import torch

from mvmr.cli.flags import doc_summary
from mvmr.config import PretrainConfig, load_config
from mvmr.data.datasets import build_dataset
from mvmr.data.views import build_eval_view
from mvmr.losses.objective import COLUMN_STD_FLOOR, signed_power
from mvmr.representations import REPRESENTATIONS, build_representation


def knn_top1(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor, k: int) -> float:
    """Top-1 % of the majority vote of the k Euclidean-nearest train rows; (N, d), (N,), (M, d), (M,)."""
    squared = (train * train).sum(1)
    correct = 0
    for start in range(0, len(test), 1000):
        query = test[start : start + 1000]
        nearest = (squared[None] - 2 * query @ train.T).topk(k, largest=False).indices  # |q|² is constant per row
        votes = torch.zeros(len(query), int(train_y.max()) + 1).scatter_add_(
            1, train_y[nearest], torch.ones(nearest.shape)
        )
        correct += int((votes.argmax(1) == test_y[start : start + 1000]).sum())
    return 100.0 * correct / len(test)


def z_score(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(COLUMN_STD_FLOOR)
    return (train - mean) / std, (test - mean) / std


def pca(train: torch.Tensor, test: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(0)
    basis = torch.pca_lowrank(train - mean, q=components, center=False, niter=4)[2]
    return (train - mean) @ basis, (test - mean) @ basis


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="configs/fashion_mnist_self_supervised.yaml")
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--test", type=int, default=6000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--powers", type=float, nargs="*", default=[0.25, 0.5])
    parser.add_argument("--pca", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)  # torch.pca_lowrank draws a random starting matrix
    cfg = load_config(args.config, [], schema=PretrainConfig)
    dataset = build_dataset(cfg.dataset, "train")
    order = np.random.default_rng(args.seed).permutation(len(dataset))[: args.train + args.test]
    images = torch.stack([dataset[int(i)][0] for i in order])
    labels = torch.as_tensor(dataset.targets[order])
    size = cfg.dataset.size
    x_bar = build_eval_view(size, dataset.info.mean, dataset.info.std, dataset.info.eval_resize)(images)
    variants: Dict[str, Callable] = {"raw": lambda a, b: (a, b), "z-scored": z_score}
    for p in args.powers:
        variants[f"power {p:g}, z-scored"] = lambda a, b, p=p: z_score(signed_power(a, p), signed_power(b, p))
        variants[f"power {p:g}, PCA {args.pca}"] = lambda a, b, p=p: pca(
            signed_power(a, p), signed_power(b, p), args.pca
        )
    rows: List[str] = []
    seen = set()
    for rep_cfg in cfg.representations:
        key = (rep_cfg.name, tuple(sorted(rep_cfg.params.items())))
        if not REPRESENTATIONS.get(rep_cfg.name).deterministic or key in seen:  # augmented_pixels: a new view each step
            continue
        rep = build_representation(rep_cfg.name, rep_cfg.params, in_channels=x_bar.shape[1], image_size=size)
        seen.add(key)
        feats = torch.cat([rep(x_bar[i : i + 2000]) for i in range(0, len(x_bar), 2000)]).flatten(1)
        train, test = feats[: args.train], feats[args.train :]
        scores = [
            knn_top1(a, labels[: args.train], b, labels[args.train :], args.k)
            for a, b in (variant(train, test) for variant in variants.values())
        ]
        params = ", ".join(f"{k}={v}" for k, v in rep_cfg.params.items())
        rows.append(
            f"| {rep_cfg.name}{f' ({params})' if params else ''} | {feats.shape[1]} | "
            + " | ".join(f"{s:.2f}" for s in scores)
            + " |"
        )
        print(rows[-1], flush=True)
    print(
        f"\nk-NN (k={args.k}, Euclidean) top-1 %, {args.train} {cfg.dataset.name} training images against "
        f"{args.test} others\n"
    )
    print("| representation | dim | " + " | ".join(variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
