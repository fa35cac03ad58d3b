"""Image files on disk: ImageNet (train/<wnid>/, val/<wnid>/) and the user's own folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mvmr.data.datasets.base import DATASETS, UNLABELLED, FileImageDataset, cached, load_image, make_info, pixel_stats
from mvmr.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STATS_SAMPLE = 256  # image_folder: mean/std from this many evenly spaced train images


def default_load_size(cfg: Any) -> int:
    """cfg.load_size, else round(size * 256 / 224) (the usual resize-256 / crop-224 ratio)."""
    return int(cfg.load_size) if cfg.load_size else int(round(cfg.size * 256 / 224))


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, extensions case-insensitive), sorted."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs.sort()
        found.extend(Path(directory) / f for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
    return found


def read_classes_file(path: str) -> list[str]:
    """Class folder names, one per line: the line's first word, so the authors' subset files ("<wnid> <class
    name>", vkinakh/mv-mr data/imagenet_subsets/*.txt) read as they are (blank lines and '#' comments skipped,
    duplicates dropped)."""
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"dataset.classes_file: cannot read '{path}' ({err.strerror})") from None
    names = [line.split()[0] for line in lines if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise ConfigError(f"dataset.classes_file: '{path}' lists no class")
    return list(dict.fromkeys(names))


def class_names_of(name: str, train_dir: Path, classes_file: str | None) -> list[str]:
    """Sorted class folders of the train split, restricted to ``classes_file`` when given."""
    folders = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{name}: no class folders in '{train_dir}' (expected {train_dir}/<class>/<image files>)")
    if classes_file is None:
        return folders
    wanted = read_classes_file(classes_file)
    unknown = sorted(set(wanted) - set(folders))
    if unknown:
        raise DataError(
            f"{name}: classes_file '{classes_file}' lists {len(unknown)} class(es) with no folder in "
            f"'{train_dir}' (e.g. {unknown[0]!r}); fix the file or dataset.path"
        )
    return sorted(wanted)


def labelled_files(name: str, split_dir: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Files of split_dir/<class>/ for each class (label = position in class_names)."""
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        files = list_images(split_dir / class_name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError(f"{name}: no images ({'/'.join(IMAGE_EXTENSIONS)}) in the class folders of '{split_dir}'")
    return paths, np.asarray(labels, dtype=np.int64)


def _root(name: str, cfg: Any, layout: str) -> Path:
    if cfg.path is None:
        raise DataError(f"{name}: dataset.path is not set (expected {layout})")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: dataset.path '{root}' is not a folder (expected {layout})")
    return root


def _sampled_stats(paths: list[Path], load_size: int) -> tuple[tuple, tuple]:
    """Per-channel mean/std of up to STATS_SAMPLE evenly spaced images, decoded as the loader does."""
    picks = np.unique(np.linspace(0, len(paths) - 1, num=min(STATS_SAMPLE, len(paths))).round().astype(int))
    return pixel_stats(np.stack([np.asarray(load_image(paths[i], "RGB", load_size)) for i in picks]))


@DATASETS.register("imagenet")
def build_imagenet(cfg: Any, split: str) -> FileImageDataset | None:
    """ImageNet (or a class subset via cfg.classes_file): train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    if split not in ("train", "test"):
        return None
    layout = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; prepare ImageNet in that ImageFolder layout"
    root = _root("imagenet", cfg, layout)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(f"imagenet: no '{sub}' folder in '{root}' (expected {layout})")
    class_names = class_names_of("imagenet", root / "train", cfg.classes_file)
    paths, labels = labelled_files("imagenet", root / ("train" if split == "train" else "val"), class_names)
    load_size = default_load_size(cfg)
    info = make_info(class_names, 3, IMAGENET_MEAN, IMAGENET_STD, cfg.to_rgb, eval_resize=load_size)
    return FileImageDataset(paths, labels, info, load_size)


@DATASETS.register("image_folder")
def build_image_folder(cfg: Any, split: str) -> FileImageDataset | None:
    """Labelled: cfg.path/train/<class>/ (+ test/<class>/ or val/<class>/ if present). Else every image
    under cfg.path, unlabelled (targets -1), with no test split. Mean/std sampled from train images."""
    if split not in ("train", "test"):
        return None
    root = _root("image_folder", cfg, "train/<class>/<images> or a folder of images")
    load_size = default_load_size(cfg)
    if (root / "train").is_dir():
        class_names = class_names_of("image_folder", root / "train", cfg.classes_file)
        train_paths, train_labels = labelled_files("image_folder", root / "train", class_names)
        test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        if split == "train":
            paths, labels = train_paths, train_labels
        elif test_dir is None:
            return None
        else:
            paths, labels = labelled_files("image_folder", test_dir, class_names)
    else:
        if cfg.classes_file is not None:
            raise ConfigError(
                f"dataset.classes_file needs class folders ('{root}/train/<class>/'); '{root}' has no train/ folder"
            )
        if split == "test":
            return None
        class_names, train_paths = [], list_images(root)
        if not train_paths:
            raise DataError(
                f"image_folder: no images ({'/'.join(IMAGE_EXTENSIONS)}) under '{root}' "
                f"(expected train/<class>/<images> or a folder of images)"
            )
        paths, labels = train_paths, np.full(len(train_paths), UNLABELLED, dtype=np.int64)
    key = ("image_folder", str(root.resolve()), len(train_paths), load_size)
    mean, std = cached(key, lambda: _sampled_stats(train_paths, load_size))
    info = make_info(class_names, 3, mean, std, cfg.to_rgb, eval_resize=load_size)
    return FileImageDataset(paths, labels, info, load_size)
