"""Dataset registry: ``build_dataset(cfg, split)`` -> :class:`ImageDataset` or None.

Builders (one module per family) register themselves in ``DATASETS``; every module of this
package is imported here, so a new dataset is one new file with ``@DATASETS.register(name)``:
digits (default, embedded), mnist, fashion_mnist, cifar10, cifar100, cifar20, stl10, imagenet,
image_folder. Splits: "train", "test", "extra_unlabeled" (only stl10's unlabelled part).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mvmr.data.datasets.base import (
    DATASETS,
    SPLITS,
    UNLABELLED,
    ArrayImageDataset,
    DatasetInfo,
    FileImageDataset,
    ImageDataset,
    load_image,
    pixel_stats,
)
from mvmr.data.datasets.splits import balanced_subset, stratified_split
from mvmr.errors import ConfigError
from mvmr.registry import import_submodules

import_submodules(__name__, __path__)  # each module registers its builders: a new dataset is one new file

__all__ = [
    "DATASETS",
    "SPLITS",
    "UNLABELLED",
    "ArrayImageDataset",
    "DatasetInfo",
    "FileImageDataset",
    "ImageDataset",
    "balanced_subset",
    "build_dataset",
    "load_image",
    "pixel_stats",
    "stratified_split",
]


def with_normalisation(info: DatasetInfo, mean: list[float], std: list[float]) -> DatasetInfo:
    """``info`` with the configured ``dataset.mean`` / ``dataset.std`` (one value per channel)."""
    if len(mean) != info.channels or len(std) != info.channels:
        raise ConfigError(
            f"dataset.mean / dataset.std need {info.channels} values (one per channel of the "
            f"images), got {list(mean)} / {list(std)}"
        )
    return dataclasses.replace(info, mean=tuple(mean), std=tuple(std))


def build_dataset(cfg: Any, split: str) -> ImageDataset | None:
    """The ``split`` of dataset ``cfg.name``; checks ``cfg.n_classes`` against the data when both are known."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dataset = DATASETS.get(cfg.name, key="dataset.name")(cfg, split)
    if dataset is not None and getattr(cfg, "mean", None) is not None:
        dataset.info = with_normalisation(dataset.info, cfg.mean, cfg.std)
    n_classes = getattr(cfg, "n_classes", None)
    if dataset is not None and n_classes is not None and dataset.info.n_classes and n_classes != dataset.info.n_classes:
        raise ConfigError(
            f"dataset.n_classes is {n_classes} but {cfg.name} has {dataset.info.n_classes} classes; "
            f"set dataset.n_classes to {dataset.info.n_classes} or remove it"
        )
    return dataset
