"""PASCAL VOC2007 multi-label classification data (``<root>/VOCdevkit/VOC2007``), decoded like other file datasets.

Labels follow the VOC07 classification convention: a class is positive in an image when at least one
non-difficult object of that class is annotated; when it appears only as "difficult" objects the entry is
flagged in ``difficult_only`` and excluded from AP (neither positive nor negative).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mvmr.data.datasets.base import StringTable, load_image
from mvmr.errors import DataError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_SPLITS = ("trainval", "train", "val", "test")
CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


def voc2007_dir(root: str | Path) -> Path:
    """``<root>/VOCdevkit/VOC2007``."""
    return Path(root).expanduser() / "VOCdevkit" / "VOC2007"


def missing_data_error(expected: str, root: str | Path) -> DataError:
    """One-line DataError: what was expected where, and how to obtain VOC2007."""
    return DataError(
        f"VOC2007: {expected} not found; download VOCtrainval_06-Nov-2007.tar and "
        f"VOCtest_06-Nov-2007.tar from the PASCAL VOC site, extract both into '{root}' "
        f"(they create VOCdevkit/VOC2007), set dataset.path"
    )


def split_file(root: str | Path, split: str) -> Path:
    return voc2007_dir(root) / "ImageSets" / "Main" / f"{split}.txt"


def available_splits(root: str | Path) -> list[str]:
    """The splits of VOC_SPLITS whose ``ImageSets/Main/<split>.txt`` exists; DataError when VOC2007 is absent."""
    if not voc2007_dir(root).is_dir():
        raise missing_data_error(f"folder '{voc2007_dir(root)}'", root)
    return [split for split in VOC_SPLITS if split_file(root, split).is_file()]


def resolve_eval_split(root: str | Path) -> tuple[str, str | None]:
    """('test', None) when the test split exists, else ('val', note saying so); DataError when neither does."""
    splits = available_splits(root)
    if "test" in splits:
        return "test", None
    if "val" in splits:
        return "val", (f"VOC2007 test split not found under '{voc2007_dir(root)}'; reporting on 'val' instead")
    raise missing_data_error(f"'{split_file(root, 'test')}' (and '{split_file(root, 'val')}')", root)


def read_split_ids(root: str | Path, split: str) -> list[str]:
    """Image ids listed (one per line) in ``ImageSets/Main/<split>.txt``."""
    if split not in VOC_SPLITS:
        raise ValueError(f"split must be one of {VOC_SPLITS}, got {split!r}")
    path = split_file(root, split)
    if not path.is_file():
        available_splits(root)  # a missing VOC2007 folder is reported as such
        raise missing_data_error(f"split file '{path}'", root)
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"VOC2007: split file '{path}' lists no image; restore it from VOCtrainval/VOCtest tar files")
    return ids


def parse_annotation(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(positive (20,) bool, difficult_only (20,) bool) of one VOC XML annotation file.

    A missing ``<difficult>`` tag counts as 0 (not difficult).
    """
    try:
        objects = ElementTree.parse(path).getroot().findall("object")
    except (OSError, ElementTree.ParseError) as err:
        raise DataError(f"VOC2007: cannot read annotation '{path}' ({err}); restore it from the tar files") from None
    positive, difficult = np.zeros(len(VOC_CLASSES), bool), np.zeros(len(VOC_CLASSES), bool)
    for obj in objects:
        name = (obj.findtext("name") or "").strip()
        if name not in CLASS_INDEX:
            raise DataError(
                f"VOC2007: annotation '{path}' has an object of unknown class {name!r}; "
                f"expected one of the 20 VOC classes"
            )
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise DataError(f"VOC2007: annotation '{path}' has <difficult>{flag}</difficult>; expected 0 or 1")
        (difficult if flag == "1" else positive)[CLASS_INDEX[name]] = True
    return positive, difficult & ~positive


class VOCMultiLabel(Dataset):
    """VOC2007 ``split`` ('trainval' | 'train' | 'val' | 'test') as multi-label data.

    Attributes: ``ids`` (N image ids), ``targets`` float32 (N, 20) in {0, 1}, ``difficult_only`` bool (N, 20).
    Item i: (uint8 (3, load_size, load_size) RGB image, float32 (20,) target, i): the shorter side resized to
    ``load_size`` (bilinear) and centre-cropped, as the other file datasets do.
    """

    def __init__(self, root: str | Path, split: str, load_size: int):
        ids = read_split_ids(root, split)
        folder = voc2007_dir(root)
        for sub in ("JPEGImages", "Annotations"):
            if not (folder / sub).is_dir():
                raise missing_data_error(f"folder '{folder / sub}'", root)
        images = [folder / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
        missing = next((p for p in images if not p.is_file()), None)
        if missing is not None:
            raise missing_data_error(f"image '{missing}' (listed in {split}.txt)", root)
        labels = [parse_annotation(folder / "Annotations" / f"{image_id}.xml") for image_id in ids]
        self.split = split
        self.load_size = int(load_size)
        self.ids = list(ids)
        self._paths = StringTable([p.as_posix() for p in images])
        self.targets = np.stack([positive for positive, _ in labels]).astype(np.float32)
        self.difficult_only = np.stack([difficult for _, difficult in labels])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = torch.from_numpy(np.array(load_image(self._paths[index], "RGB", self.load_size))).permute(2, 0, 1)
        return image, torch.from_numpy(self.targets[index]), int(index)
