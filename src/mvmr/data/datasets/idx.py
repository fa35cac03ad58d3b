"""MNIST and Fashion-MNIST from their IDX files (plain or gzip), parsed with numpy."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from mvmr.data.datasets.base import DATASETS, ArrayImageDataset, cached, file_key, make_info, pixel_stats
from mvmr.errors import DataError

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip detected by its magic bytes): 0, 0, dtype code, ndim, big-endian uint32 dims, data."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"'{path}' is not an IDX file (bad magic number {raw[:4].hex()}); replace it with the original")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - 4 - 4 * ndim != expected:
        raise DataError(
            f"'{path}' is truncated or corrupt ({len(raw) - 4 - 4 * ndim} data bytes, expected "
            f"{expected} for shape {dims}); replace it with the original"
        )
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def _candidate_dirs(root: Path) -> list[Path]:
    """root, its sub-folders and their raw/ folders (torchvision's <root>/FashionMNIST/raw layout)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [root, *subdirs, *(d / "raw" for d in subdirs)]


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            if (directory / (name + suffix)).is_file():
                return directory / (name + suffix)
    return None


def find_idx_files(name: str, root: Path, split: str, hint: str) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` in the first folder holding both; DataError naming them if none."""
    for directory in _candidate_dirs(root):
        found = [_find(directory, stem) for stem in FILE_STEMS[split]]
        if all(found):
            return found[0], found[1]
    expected = ", ".join(f"{stem}[.gz]" for stem in FILE_STEMS[split])
    raise DataError(
        f"{name}: no IDX files under '{root}' (expected {expected}, also looked in its sub-folders "
        f"and their raw/); {hint}"
    )


def _load(name: str, root: Path, split: str, hint: str) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = find_idx_files(name, root, split, hint)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{name}: '{images_path}' / '{labels_path}' hold {images.dtype} {images.shape} images and "
            f"{labels.shape} labels, expected uint8 (N, H, W) and (N,); replace them with the originals"
        )
    return images[..., None], labels.astype(np.int64)


def _build(name: str, default_path: str | None, class_names: list[str], hint: str, cfg: Any, split: str):
    if split not in ("train", "test"):
        return None
    path = cfg.path or default_path
    if path is None:
        raise DataError(
            f"{name}: dataset.path is not set (expected a folder with {FILE_STEMS['train'][0]}[.gz] ...); {hint}"
        )
    root = Path(path).expanduser()
    images, labels = _load(name, root, split, hint)
    train_images = find_idx_files(name, root, "train", hint)[0]
    mean, std = cached(("idx", *file_key(train_images)), lambda: pixel_stats(_load(name, root, "train", hint)[0]))
    return ArrayImageDataset(images, labels, make_info(class_names, 1, mean, std, cfg.to_rgb))


@DATASETS.register("mnist")
def build_mnist(cfg: Any, split: str) -> ArrayImageDataset | None:
    """MNIST from IDX files under cfg.path; mean/std from the train images."""
    hint = "download the four IDX files of MNIST and set dataset.path to their folder"
    return _build("mnist", None, [str(d) for d in range(10)], hint, cfg, split)


@DATASETS.register("fashion_mnist")
def build_fashion_mnist(cfg: Any, split: str) -> ArrayImageDataset | None:
    """Fashion-MNIST from IDX files under cfg.path (default: the Debian package's folder)."""
    hint = "run 'apt-get install -y dataset-fashion-mnist' or set dataset.path"
    return _build("fashion_mnist", FASHION_MNIST_DEFAULT, FASHION_MNIST_CLASSES, hint, cfg, split)
