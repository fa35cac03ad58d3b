"""CIFAR-10, CIFAR-100 and CIFAR-20 (CIFAR-100's 20 coarse labels) from the python pickle version."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mvmr.data.datasets.base import DATASETS, ArrayImageDataset, make_info
from mvmr.errors import DataError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_FILES = {
    "folder": "cifar-10-batches-py",
    "meta": "batches.meta",
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
CIFAR100_FILES = {"folder": "cifar-100-python", "meta": "meta", "train": ["train"], "test": ["test"]}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DataError(f"cannot read CIFAR file '{path}' ({err}); download and extract it again") from None


def find_cifar_folder(name: str, path: str | None, files: dict, title: str) -> Path:
    """cfg.path itself or its ``files['folder']`` sub-folder, whichever holds every expected file."""
    expected = [*files["train"], *files["test"], files["meta"]]
    if path is not None:
        root = Path(path).expanduser()
        for folder in (root / files["folder"], root):
            if all((folder / f).is_file() for f in expected):
                return folder
    where = f"under '{path}'" if path is not None else "(dataset.path is not set)"
    raise DataError(
        f"{name}: no '{files['folder']}' folder with {', '.join(expected)} {where}; download the "
        f"{title} python version from https://www.cs.toronto.edu/~kriz/cifar.html, extract it and set "
        f"dataset.path to the folder holding '{files['folder']}'"
    )


def load_cifar(folder: Path, batch_names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 from rows of 3072 bytes (1024 R, 1024 G, 1024 B, row-major) and labels (N,)."""
    batches = [_unpickle(folder / name) for name in batch_names]
    rows = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    images = np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return images, labels


def _build(
    name: str, files: dict, title: str, label_key: str, names_key: str, mean: tuple, std: tuple, cfg: Any, split: str
) -> ArrayImageDataset | None:
    if split not in ("train", "test"):
        return None
    folder = find_cifar_folder(name, cfg.path, files, title)
    images, labels = load_cifar(folder, files[split], label_key)
    class_names = _unpickle(folder / files["meta"])[names_key]
    return ArrayImageDataset(images, labels, make_info(class_names, 3, mean, std, cfg.to_rgb))


@DATASETS.register("cifar10")
def build_cifar10(cfg: Any, split: str) -> ArrayImageDataset | None:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 images, 10 classes."""
    return _build("cifar10", CIFAR10_FILES, "CIFAR-10", "labels", "label_names", CIFAR10_MEAN, CIFAR10_STD, cfg, split)


@DATASETS.register("cifar100")
def build_cifar100(cfg: Any, split: str) -> ArrayImageDataset | None:
    """CIFAR-100 with its 100 fine labels."""
    return _build(
        "cifar100",
        CIFAR100_FILES,
        "CIFAR-100",
        "fine_labels",
        "fine_label_names",
        CIFAR100_MEAN,
        CIFAR100_STD,
        cfg,
        split,
    )


@DATASETS.register("cifar20")
def build_cifar20(cfg: Any, split: str) -> ArrayImageDataset | None:
    """CIFAR-100 images with the 20 coarse (superclass) labels."""
    return _build(
        "cifar20",
        CIFAR100_FILES,
        "CIFAR-100",
        "coarse_labels",
        "coarse_label_names",
        CIFAR100_MEAN,
        CIFAR100_STD,
        cfg,
        split,
    )
