"""The two dataset implementations every builder returns, their metadata, and the registry.

Workers only decode: an item is ``(image uint8 (C, H, W), label int)``; normalisation and
augmentation happen on the device.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mvmr.errors import DataError
from mvmr.registry import Registry

DATASETS = Registry("dataset")
SPLITS = ("train", "test", "extra_unlabeled")
UNLABELLED = -1


@dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about a dataset: classes, channels, normalisation (in [0, 1] units)."""

    n_classes: int
    channels: int
    mean: tuple
    std: tuple
    class_names: list = field(default_factory=list)
    eval_resize: Optional[int] = None  # x̄: shorter side resized to this before the centre crop (None: the size)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "class_names", [str(c) for c in self.class_names])
        if not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")


def make_info(
    class_names: Sequence[str],
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    to_rgb: bool,
    eval_resize: Optional[int] = None,
) -> DatasetInfo:
    """DatasetInfo; grayscale data (1 channel) becomes 3 channels with repeated mean/std when ``to_rgb``.
    ``eval_resize``: see ``DatasetInfo`` (file datasets: their decode size, so x̄ = Resize(256) + CenterCrop(224))."""
    if channels == 1 and to_rgb:
        channels, mean, std = 3, tuple(mean) * 3, tuple(std) * 3
    return DatasetInfo(len(class_names), channels, tuple(mean), tuple(std), list(class_names), eval_resize)


def pixel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units of uint8 images (N, H, W, C), via 256-bin counts."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[-1]):
        counts = np.bincount(np.asarray(images[..., c]).reshape(-1), minlength=256).astype(np.float64)
        mean = counts @ values / counts.sum()
        means.append(float(mean))
        stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())))
    return tuple(means), tuple(stds)


_CACHE: dict[Hashable, tuple] = {}


def cached(key: Hashable, compute: Callable[[], Any]) -> Any:
    """Compute once per process (e.g. train-set statistics that the test split needs too)."""
    if key not in _CACHE:
        _CACHE[key] = compute()
    return _CACHE[key]


def file_key(path: Path) -> tuple:
    """A cache key that changes when the file does."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


class ImageDataset(Dataset):
    """Base: ``targets`` (np.int64 (N,), -1 = unlabelled), ``info`` and per-sample ``names``."""

    targets: np.ndarray
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def names(self) -> list[str]:
        """Names a split file may list; array datasets use the sample index ``"<index>"``."""
        return [str(i) for i in range(len(self))]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


def _as_targets(targets: Any, n: int) -> np.ndarray:
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if targets.shape[0] != n:
        raise ValueError(f"{n} images but {targets.shape[0]} targets")
    return targets


class ArrayImageDataset(ImageDataset):
    """In-memory (or memory-mapped) uint8 images (N, H, W, C); grayscale is repeated when info has 3 channels."""

    def __init__(self, images: np.ndarray, targets: Any, info: DatasetInfo):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        self.images = images
        self.targets = _as_targets(targets, images.shape[0])
        self.info = info
        self._repeat = info.channels if images.shape[-1] == 1 else 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.images[index], copy=True)).permute(2, 0, 1)
        if self._repeat > 1:
            image = image.repeat(self._repeat, 1, 1)
        return image, int(self.targets[index])

    # A memory-mapped array (STL10's 2.7 GB unlabelled part) is pickled as a reference to its
    # file, so spawned workers re-map it instead of receiving a copy of the data.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        ref = memmap_reference(self.images)
        if ref is not None:
            state["images"] = ref
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["images"], dict):
            state["images"] = open_memmap_reference(state["images"])
        self.__dict__.update(state)


def memmap_reference(array: np.ndarray) -> dict | None:
    """Where a view of a read-only np.memmap lives (file, offsets, shape, strides); None for other arrays."""
    base = array
    while isinstance(base, np.ndarray) and not (isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap)):
        base = base.base
    if not isinstance(base, np.memmap) or base.mode != "r":
        return None
    start = array.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return {
        "filename": base.filename,
        "file_offset": base.offset,
        "base_shape": base.shape,
        "dtype": base.dtype.str,
        "start": start,
        "shape": array.shape,
        "strides": array.strides,
    }


def open_memmap_reference(ref: dict) -> np.ndarray:
    """Re-map the view described by :func:`memmap_reference`."""
    base = np.memmap(ref["filename"], dtype=ref["dtype"], mode="r", offset=ref["file_offset"], shape=ref["base_shape"])
    return np.ndarray(ref["shape"], dtype=base.dtype, buffer=base, offset=ref["start"], strides=ref["strides"])


class StringTable:
    """An immutable list of strings in two numpy arrays (no per-item Python objects shared with workers)."""

    def __init__(self, strings: Sequence[str]):
        encoded = [s.encode("utf-8") for s in strings]
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return self._bytes[start : int(self._ends[index])].tobytes().decode("utf-8")


class FileImageDataset(ImageDataset):
    """Image files decoded with PIL: shorter side resized to ``load_size`` (bilinear), then a centred square crop.

    Returns uint8 (C, load_size, load_size); RGB, or L when ``info.channels == 1``.
    """

    def __init__(self, paths: Sequence[str | Path], targets: Any, info: DatasetInfo, load_size: int):
        self._paths = StringTable([Path(p).as_posix() for p in paths])
        self.targets = _as_targets(targets, len(self._paths))
        self.info = info
        self.load_size = int(load_size)
        self.mode = "L" if info.channels == 1 else "RGB"

    @property
    def names(self) -> list[str]:
        """The files' paths (a split file's line matches a path's ending: a file name or relative path)."""
        return [self._paths[i] for i in range(len(self))]

    def path(self, index: int) -> str:
        """The file of sample ``index``."""
        return self._paths[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = np.array(load_image(self._paths[index], self.mode, self.load_size))
        tensor = torch.from_numpy(image)
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        return tensor, int(self.targets[index])


def load_image(path: str | Path, mode: str, size: int) -> Image.Image:
    """Decode in ``mode`` ("RGB" or "L"), resize the shorter side to ``size`` (bilinear) and center-crop
    size x size, as torchvision's Resize(size) + CenterCrop(size) do."""
    try:
        with Image.open(path) as file:
            file.draft(mode, (size, size))  # JPEG: decode at a reduced scale >= size (much faster)
            image = file.convert(mode)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot decode image '{path}' ({err}); remove or replace the file") from None
    return square_of(image, size)


def square_of(image: Image.Image, size: int) -> Image.Image:
    """Shorter side resized to ``size`` (PIL bilinear, antialiased), then the centred ``size`` square: how file
    datasets store an image (x̄ is then its centre crop)."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short != size:
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if width <= height else (new_long, size), Image.BILINEAR)
        width, height = image.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))
