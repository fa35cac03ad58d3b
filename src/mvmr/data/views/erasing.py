"""Random erasing (Zhong et al. 2020; torchvision's ``RandomErasing``) drawn per sample, vectorised over the batch.

An occlusion the encoder must see past: x' loses a rectangle, while x̄ and the representations φ_k(x̄) it is tied
to keep the whole image. Parameters are drawn on the CPU from torch's global generator, like the other views.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from mvmr.data.views.geometric import first_fitting_sizes, random_offsets
from mvmr.data.views.tensors import to_device
from mvmr.errors import ConfigError

ERASE_SCALE = (0.02, 0.33)  # torchvision's defaults: area fraction and aspect range of the rectangle
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10


def sample_erase_boxes(
    batch: int,
    height: int,
    width: int,
    scale: Tuple[float, float] = ERASE_SCALE,
    ratio: Tuple[float, float] = ERASE_RATIO,
    attempts: int = ERASE_ATTEMPTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes (B, 4) integer-valued floats (top, left, height, width), found (B,) bool), as torchvision's
    ``RandomErasing.get_params`` per sample: area fraction ~ U(scale), log aspect ~ U(log ratio), the first of
    ``attempts`` draws strictly smaller than the image is kept; a sample with none is not erased (found False)."""
    box_h, box_w, found = first_fitting_sizes(
        batch, height, width, scale, ratio, attempts, aspect_is_height_over_width=True, strict=True
    )
    top, left = random_offsets(height, width, box_h, box_w)
    return torch.stack((top, left, box_h, box_w), 1), found


def erase_boxes(images: torch.Tensor, boxes: torch.Tensor, erase: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W); boxes (B, 4) as above; erase (B,) bool; fill (C,) -> the images with each erased
    sample's box set to ``fill`` (one value per channel)."""
    height, width = images.shape[-2:]
    boxes, erase, fill = to_device(images.device, boxes, erase, fill)
    rows = torch.arange(height, device=images.device, dtype=boxes.dtype)
    cols = torch.arange(width, device=images.device, dtype=boxes.dtype)
    top, left, box_h, box_w = (boxes[:, i, None] for i in range(4))
    in_rows = (rows >= top) & (rows < top + box_h)  # (B, H)
    in_cols = (cols >= left) & (cols < left + box_w)  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]) & erase[:, None, None]
    return torch.where(mask[:, None], fill.to(images.dtype).view(1, -1, 1, 1), images)


class RandomErasing(nn.Module):
    """With probability ``p`` per sample, one rectangle (area 2-33 % of the image, aspect 0.3-3.3) set to ``fill``
    (per channel; the dataset mean, so 0 once normalised, as torchvision's ``RandomErasing`` after ``Normalize``).
    (B, C, H, W) float in [0, 1] -> same."""

    def __init__(self, p: float, fill: Sequence[float]):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"dataset.erase_p must be a probability in [0, 1]; got {p}")
        self.p = p
        self.register_buffer("fill", torch.tensor([float(v) for v in fill]), persistent=False)

    def extra_repr(self) -> str:
        return f"p={self.p}, fill={self.fill.tolist()}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        erase = torch.rand(batch) < self.p
        boxes, found = sample_erase_boxes(batch, height, width)
        if not bool((erase & found).any()):
            return images
        return erase_boxes(images, boxes, erase & found, self.fill)
