"""STL-10 from the binary version (stl10_binary/*.bin); the 100,000 unlabelled images stay memory-mapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mvmr.data.datasets.base import DATASETS, UNLABELLED, ArrayImageDataset, make_info
from mvmr.errors import DataError

STL10_MEAN, STL10_STD = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "extra_unlabeled": ("unlabeled_X.bin", None),
}


def find_stl10_folder(path: str | None, files: tuple[str, ...]) -> Path:
    """cfg.path/stl10_binary or cfg.path itself, whichever holds ``files``."""
    if path is not None:
        root = Path(path).expanduser()
        for folder in (root / "stl10_binary", root):
            if all((folder / f).is_file() for f in files):
                return folder
    where = f"under '{path}'" if path is not None else "(dataset.path is not set)"
    raise DataError(
        f"stl10: no 'stl10_binary' folder with {', '.join(files)} {where}; download the STL-10 binary "
        f"version from https://cs.stanford.edu/~acoates/stl10/, extract it and set dataset.path to the "
        f"folder holding 'stl10_binary'"
    )


def read_stl10_images(path: Path, memmap: bool) -> np.ndarray:
    """Images (N, 96, 96, 3) uint8. Each image is stored channel by channel, each channel column-major."""
    size = path.stat().st_size
    if size % IMAGE_BYTES:
        raise DataError(f"stl10: '{path}' has {size} bytes, not a multiple of {IMAGE_BYTES}; download it again")
    raw = np.memmap(path, dtype=np.uint8, mode="r") if memmap else np.fromfile(path, dtype=np.uint8)
    # raw axes: (N, channel, column x, row y) -> (N, row y, column x, channel)
    images = raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1)
    return images if memmap else np.ascontiguousarray(images)


def read_stl10_labels(path: Path, n: int) -> np.ndarray:
    """Labels stored as uint8 1..10 -> int64 0..9."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != n or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"stl10: '{path}' does not hold {n} labels in 1..10; download it again")
    return labels


def read_class_names(folder: Path) -> list[str]:
    names_file = folder / "class_names.txt"
    if not names_file.is_file():
        return list(STL10_CLASSES)
    return [line.strip() for line in names_file.read_text().splitlines() if line.strip()]


@DATASETS.register("stl10")
def build_stl10(cfg: Any, split: str) -> ArrayImageDataset | None:
    """train (5,000 labelled), test (8,000), extra_unlabeled (100,000, labels -1, memory-mapped)."""
    images_file, labels_file = FILES[split]
    folder = find_stl10_folder(cfg.path, tuple(f for f in (images_file, labels_file) if f))
    unlabelled = labels_file is None
    images = read_stl10_images(folder / images_file, memmap=unlabelled)
    labels = (
        np.full(len(images), UNLABELLED, dtype=np.int64)
        if unlabelled
        else read_stl10_labels(folder / labels_file, len(images))
    )
    return ArrayImageDataset(images, labels, make_info(read_class_names(folder), 3, STL10_MEAN, STL10_STD, cfg.to_rgb))
