"""A tiny PASCAL VOC2007 tree in the real file format, for tests (write under tmp_path).

``write_voc`` creates ``<root>/VOCdevkit/VOC2007/{JPEGImages, Annotations, ImageSets/Main}`` with
trainval/train/val(/test).txt. Labels are learnable: every non-difficult object is a full-height
vertical strip painted in its class colour; difficult objects are small squares in a corner.
"""

from __future__ import annotations

import colorsys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = (
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
COLOURS = [
    tuple(round(255 * c) for c in colorsys.hsv_to_rgb(k / 20, 1.0, 1.0 if k % 2 == 0 else 0.6)) for k in range(20)
]
BACKGROUND = (128, 128, 128)


@dataclass
class VOCSplitTruth:
    """What write_voc put in one split: ids (N,), targets float32 (N, 20), difficult_only bool (N, 20)."""

    ids: list
    targets: np.ndarray
    difficult_only: np.ndarray


def image_objects(j: int, rng: np.random.Generator) -> list[tuple[int, bool]]:
    """(class, difficult) objects of the j-th image of a split.

    Class j % 20 is always present (so 20 images cover every class); some images get a second class;
    j % 3 == 1 adds a class seen only as difficult, j % 3 == 2 a difficult copy of a present class.
    """
    primary, only_difficult = j % 20, (j % 20 + 10) % 20
    objects = [(primary, False)]
    if rng.random() < 0.5:
        objects.append((int(rng.choice([k for k in range(20) if k not in (primary, only_difficult)])), False))
    if j % 3 == 1:
        objects.append((only_difficult, True))
    elif j % 3 == 2:
        objects.append((primary, True))
    return objects


def draw(objects: list[tuple[int, bool]], width: int, height: int) -> tuple[np.ndarray, list[tuple]]:
    """uint8 (height, width, 3) image and each object's 1-based (xmin, ymin, xmax, ymax) box."""
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    strips = [k for k, difficult in objects if not difficult]
    edges = np.linspace(0, width, len(strips) + 1).round().astype(int)
    boxes, strip = [], 0
    corner = max(2, min(width, height) // 5)
    for k, difficult in objects:
        if difficult:
            x0, y0, x1, y1 = width - corner, height - corner, width, height
        else:
            x0, y0, x1, y1 = edges[strip], 0, edges[strip + 1], height
            strip += 1
        image[y0:y1, x0:x1] = COLOURS[k]
        boxes.append((x0 + 1, y0 + 1, x1, y1))
    return image, boxes


def annotation_xml(
    image_id: str, objects: list[tuple[int, bool]], boxes: list[tuple], width: int, height: int
) -> ElementTree.ElementTree:
    """A VOC-style <annotation> with <size> and one <object> (name, pose, truncated, difficult, bndbox) each."""
    root = ElementTree.Element("annotation")
    for tag, text in (("folder", "VOC2007"), ("filename", f"{image_id}.jpg")):
        ElementTree.SubElement(root, tag).text = text
    size = ElementTree.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ElementTree.SubElement(size, tag).text = str(value)
    ElementTree.SubElement(root, "segmented").text = "0"
    for (k, difficult), box in zip(objects, boxes):
        obj = ElementTree.SubElement(root, "object")
        for tag, text in (
            ("name", CLASSES[k]),
            ("pose", "Unspecified"),
            ("truncated", "0"),
            ("difficult", str(int(difficult))),
        ):
            ElementTree.SubElement(obj, tag).text = text
        bndbox = ElementTree.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ElementTree.SubElement(bndbox, tag).text = str(value)
    return ElementTree.ElementTree(root)


def write_voc(
    root: str | Path, n_train: int = 40, n_test: int = 20, size: int = 30, with_test: bool = True, seed: int = 0
) -> dict[str, VOCSplitTruth]:
    """Write a VOC2007 tree under ``root``: trainval = train (first n_train // 2) + val, and test (n_test images).

    Images are JPEGs, landscape (size x size*4/3) except every 5th, which is portrait. Returns the truth of
    "train", "val", "trainval" and (with_test) "test". Use n_train >= 40 and n_test >= 20 for every class to be
    positive in every split.
    """
    rng = np.random.default_rng(seed)
    voc = Path(root) / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train // 2, "val": n_train - n_train // 2, "test": n_test if with_test else 0}
    truth, next_id = {}, 1
    for split, n in counts.items():
        ids, targets, difficult_only = [], np.zeros((n, 20), np.float32), np.zeros((n, 20), bool)
        for j in range(n):
            image_id = f"{next_id:06d}"
            next_id += 1
            objects = image_objects(j, rng)
            height, width = (size, size * 4 // 3) if j % 5 else (size * 4 // 3, size)
            pixels, boxes = draw(objects, width, height)
            Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            annotation_xml(image_id, objects, boxes, width, height).write(voc / "Annotations" / f"{image_id}.xml")
            for k, difficult in objects:
                targets[j, k] = max(targets[j, k], 0.0 if difficult else 1.0)
            for k, difficult in objects:
                difficult_only[j, k] = difficult and targets[j, k] == 0
            ids.append(image_id)
        truth[split] = VOCSplitTruth(ids, targets, difficult_only)
    truth["trainval"] = VOCSplitTruth(
        truth["train"].ids + truth["val"].ids,
        np.concatenate([truth["train"].targets, truth["val"].targets]),
        np.concatenate([truth["train"].difficult_only, truth["val"].difficult_only]),
    )
    if not with_test:
        del truth["test"]
    for split, split_truth in truth.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_truth.ids))
    return truth
