"""Deterministic, class-balanced index selection (held-out splits, semi-supervised subsets)."""

from __future__ import annotations

import numpy as np


def round_half_up(x: float) -> int:
    """Rounding as taught at school (Python's round() sends 0.5 and 2.5 to the even number)."""
    return int(np.floor(x + 0.5))


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into (held (M,), rest (N-M,)), both sorted, with M = round(fraction * N).

    Class c gets floor(fraction * n_c) or one more (largest remainders first, ties broken at
    random), drawn without replacement with ``seed``.
    """
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(targets, return_counts=True)
    quotas = fraction * counts
    per_class = np.floor(quotas).astype(np.int64)
    extra = round_half_up(fraction * len(targets)) - int(per_class.sum())
    order = rng.permutation(len(labels))
    order = order[np.argsort(-(quotas - per_class)[order], kind="stable")]
    per_class[order[:extra]] += 1
    held = [rng.choice(np.flatnonzero(targets == label), size=n, replace=False) for label, n in zip(labels, per_class)]
    held = np.sort(np.concatenate(held)).astype(np.int64) if held else np.empty(0, dtype=np.int64)
    return held, np.setdiff1d(np.arange(len(targets)), held).astype(np.int64)


def balanced_subset(targets: np.ndarray, percentage: float, seed: int) -> np.ndarray:
    """Sorted positions of a class-balanced subset: max(1, round(percentage/100 * n_c)) per class, no repeats."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        count = min(len(members), max(1, round_half_up(percentage / 100.0 * len(members))))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.empty(0, dtype=np.int64)
