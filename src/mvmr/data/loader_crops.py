"""Random resized crops drawn from the whole image in the data loader's workers (ImageNet-style file datasets).

A file dataset stores nothing but paths; its images have their own sizes. x̄ needs the decode-size square
(shorter side resized to ``load_size``, centre square: Resize(256) + CenterCrop(224) happens on the device), but
x' must be cropped from the WHOLE image, as torchvision's RandomResizedCrop does on the authors' PIL images, not
from that square. :func:`decode_with_crops` decodes each file once, at the smallest JPEG scale that still covers
every output (PIL's ``draft``: the decoder skips the detail that the downscaling would throw away), and returns
the square and the crops as fixed-size uint8 tensors; the colour ops then run on the device.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvmr.data.datasets.base import square_of
from mvmr.data.views.geometric import sample_resized_crop_boxes
from mvmr.data.views.policies import LoaderCrops
from mvmr.errors import DataError


def _as_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 (C, H, W)."""
    array = torch.from_numpy(np.array(image))
    return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)


def draft_target(width: int, height: int, load_size: int, boxes: torch.Tensor, size: int) -> tuple[int, int]:
    """The smallest decoded (width, height) that keeps the square's shorter side >= ``load_size`` and every crop
    box (B, 4) = (top, left, h, w) at least ``size`` pixels on each side."""
    reduction = min(width, height) / load_size
    if len(boxes):
        reduction = min(reduction, float(boxes[:, 2:].min()) / size)
    reduction = max(reduction, 1.0)
    return math.ceil(width / reduction), math.ceil(height / reduction)


def decode_with_crops(
    path: str | Path, mode: str, load_size: int, crops: LoaderCrops
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``path`` once: (the load_size square uint8 (C, load_size, load_size), ``crops.count`` random
    resized crops of the whole image uint8 (count, C, size, size)). Crop boxes are drawn per call from torch's
    generator (each loader worker has its own seed) in the coordinates of the full-size image, then mapped onto
    the drafted decode; each crop is cut, then resized with PIL's antialiased bilinear filter (torchvision's
    ``resized_crop`` on a PIL image) and mirrored with probability ``crops.p_flip``."""
    try:
        with Image.open(path) as file:
            width, height = file.size
            boxes = sample_resized_crop_boxes(crops.count, height, width, crops.scale, crops.ratio)
            flips = torch.rand(crops.count) < crops.p_flip
            file.draft(mode, draft_target(width, height, load_size, boxes, crops.size))
            image = file.convert(mode)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot decode image '{path}' ({err}); remove or replace the file") from None
    sx, sy = image.size[0] / width, image.size[1] / height
    out = []
    for (top, left, h, w), flip in zip(boxes.tolist(), flips.tolist()):
        # cut, then resize (torchvision's resized_crop: the filter does not reach outside the box); on a reduced
        # decode the box has fractional corners: cut the whole pixels around it, resize the exact box inside
        x0, y0, x1, y1 = left * sx, top * sy, (left + w) * sx, (top + h) * sy
        outer = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
        inner = (x0 - outer[0], y0 - outer[1], x1 - outer[0], y1 - outer[1])
        crop = image.crop(outer).resize((crops.size, crops.size), Image.BILINEAR, box=inner)
        out.append(_as_tensor(crop.transpose(Image.FLIP_LEFT_RIGHT) if flip else crop))
    return _as_tensor(square_of(image, load_size)), torch.stack(out)
