"""scikit-learn's digits: 1,797 real 8x8 grayscale images shipped with scikit-learn (no download)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mvmr.data.datasets.base import DATASETS, ArrayImageDataset, cached, make_info, pixel_stats
from mvmr.data.datasets.splits import stratified_split

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 images (1797, 8, 8, 1) with values 0..16 mapped to 0..255, and labels (1797,)."""
    from sklearn.datasets import load_digits  # here: scikit-learn's import is slow and only the digits need it

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.int64)


def _splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    images, labels = load_digits_uint8()
    test, train = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


@DATASETS.register("digits")
def build_digits(cfg: Any, split: str) -> ArrayImageDataset | None:
    """80/20 stratified train/test split with seed 0; mean/std from the train images."""
    if split not in ("train", "test"):
        return None
    splits = cached("digits", _splits)
    images, labels = splits[split]
    mean, std = cached("digits-stats", lambda: pixel_stats(splits["train"][0]))
    info = make_info([str(d) for d in range(10)], 1, mean, std, cfg.to_rgb)
    return ArrayImageDataset(images, labels, info)
