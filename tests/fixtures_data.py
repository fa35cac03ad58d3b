"""Tiny datasets in their real file formats, for tests (import these helpers; write under tmp_path).

Each writer returns the arrays it wrote, in (N, H, W, C) uint8 layout unless stated, so tests can
compare what a reader returns with what is on disk.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import types
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}


def dataset_cfg(name: str = "digits", path: str | Path | None = None, **overrides) -> types.SimpleNamespace:
    """A dataset config object with the schema's defaults (size 32, val_fraction 0.1, ...)."""
    fields = dict(
        name=name,
        path=None if path is None else str(path),
        size=32,
        n_classes=None,
        classes_file=None,
        to_rgb=False,
        val_fraction=0.1,
        load_size=None,
        percentage=None,
        split_file=None,
        mean=None,
        std=None,
    )
    unknown = set(overrides) - set(fields)
    if unknown:
        raise TypeError(f"unknown dataset keys {sorted(unknown)}")
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n labels, every class equally often (up to one), in random order."""
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


# ------------------------------------------------------------------------------ IDX
def write_idx_file(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` (uint8 or int32) as an IDX file: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, IDX_TYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_idx(
    root: Path, n_train: int = 12, n_test: int = 6, shape: tuple[int, int] = (28, 28), gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """MNIST-style files (train-images-idx3-ubyte, ... t10k-labels-idx1-ubyte) in ``root``.

    Returns images (N, H, W) uint8 and labels (N,) of both splits (10 classes, balanced).
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        labels = balanced_labels(n, 10, rng).astype(np.uint8)
        write_idx_file(Path(root) / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx_file(Path(root) / f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.int64)
    return arrays


# ------------------------------------------------------------------------------ CIFAR
def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): all red values row by row, then green, then blue."""
    return np.stack([np.concatenate([img[:, :, c].reshape(-1) for c in range(3)]) for img in images])


def write_cifar10(root: Path, n_per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch, batches.meta (python pickles)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    train_images = rng.integers(0, 256, size=(5 * n_per_batch, 32, 32, 3), dtype=np.uint8)
    train_labels = balanced_labels(5 * n_per_batch, 10, rng)
    for b in range(5):
        part = slice(b * n_per_batch, (b + 1) * n_per_batch)
        _pickle(
            folder / f"data_batch_{b + 1}",
            {
                "batch_label": f"training batch {b + 1} of 5",
                "data": _cifar_rows(train_images[part]),
                "labels": train_labels[part].tolist(),
            },
        )
    test_images = rng.integers(0, 256, size=(n_test, 32, 32, 3), dtype=np.uint8)
    test_labels = balanced_labels(n_test, 10, rng)
    _pickle(
        folder / "test_batch",
        {"batch_label": "testing batch 1 of 1", "data": _cifar_rows(test_images), "labels": test_labels.tolist()},
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": n_per_batch, "num_vis": 3072})
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


def write_cifar100(root: Path, n_train: int = 24, n_test: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-100-python`` with train, test, meta; fine label f has coarse label f // 5."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        fine = balanced_labels(n, 100, rng)
        coarse = fine // 5
        _pickle(
            folder / split,
            {"data": _cifar_rows(images), "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()},
        )
        arrays.update({f"{split}_images": images, f"{split}_fine": fine, f"{split}_coarse": coarse})
    _pickle(
        folder / "meta",
        {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]},
    )
    return arrays


# ------------------------------------------------------------------------------ STL10
def stl10_bytes(images: np.ndarray) -> bytes:
    """(N, 96, 96, 3) -> STL-10 binary: per image, per channel, column after column."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


def write_stl10(
    root: Path, n_train: int = 10, n_test: int = 6, n_unlabeled: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """``root/stl10_binary`` with train_X/y, test_X/y, unlabeled_X (.bin) and class_names.txt."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        images = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(images))
        arrays[f"{split}_images"] = images
        if split != "unlabeled":
            labels = balanced_labels(n, 10, rng)
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
            arrays[f"{split}_labels"] = labels
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return arrays


# ------------------------------------------------------------------------------ image folders
def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Path:
    """A random image of (width, height) ``size``; the format follows the extension (PNG: lossless)."""
    width, height = size
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path)
    return path


def write_image_folder(
    root: Path,
    classes: Sequence[str] = ("cat", "dog", "fox"),
    per_class: int = 4,
    splits: Sequence[str] = ("train", "test"),
    ext: str = "png",
    size: tuple[int, int] = (48, 40),
    seed: int = 0,
) -> dict[str, list[Path]]:
    """``root/<split>/<class>/img<i>.<ext>`` (ImageFolder layout); returns each split's files, class by class."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    for split in splits:
        files[split] = [
            write_image(Path(root) / split / name / f"img{i}.{ext}", rng, size)
            for name in classes
            for i in range(per_class)
        ]
    return files


def write_flat_folder(
    root: Path,
    n: int = 5,
    exts: Sequence[str] = ("png", "JPG", "jpeg"),
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> list[Path]:
    """``n`` unlabelled images directly in ``root`` (extensions cycled), plus a non-image file."""
    rng = np.random.default_rng(seed)
    files = [write_image(Path(root) / f"photo{i}.{exts[i % len(exts)]}", rng, size) for i in range(n)]
    (Path(root) / "notes.txt").write_text("not an image\n")
    return files
