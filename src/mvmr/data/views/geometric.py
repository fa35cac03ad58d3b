"""Random geometry drawn per sample: resized crop + flip (SimCLR style) and padded crop + flip (CIFAR style).

Parameters are drawn on the CPU from torch's global generator (as kornia does), so a seed gives the same
crops on CPU and CUDA; only the resampling runs on the images' device.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mvmr.data.views.resample import INTERPOLATIONS, resample_boxes, resize_center_crop
from mvmr.data.views.tensors import to_device
from mvmr.errors import ConfigError

CROP_ATTEMPTS = 10


def first_fitting_sizes(
    batch: int,
    height: int,
    width: int,
    scale: Tuple[float, float],
    ratio: Tuple[float, float],
    attempts: int,
    aspect_is_height_over_width: bool = False,
    strict: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's box-size rejection sampler, per sample: ``attempts`` draws of an area fraction ~ U(scale)
    and a log aspect ~ U(log ratio) (aspect = width / height, or height / width when
    ``aspect_is_height_over_width``, as ``RandomErasing``), sides rounded; the first draw that fits the image
    (``strict``: strictly smaller than it) is kept. -> (box_h (B,), box_w (B,), found (B,) bool); where nothing
    fits, the sides are the first draw's and found is False."""
    target_area = height * width * torch.empty(batch, attempts).uniform_(*scale)
    aspect = torch.exp(torch.empty(batch, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    long_side, short_side = torch.round(torch.sqrt(target_area * aspect)), torch.round(torch.sqrt(target_area / aspect))
    box_h, box_w = (long_side, short_side) if aspect_is_height_over_width else (short_side, long_side)
    if strict:
        fits = (box_h > 0) & (box_h < height) & (box_w > 0) & (box_w < width)
    else:
        fits = (box_h > 0) & (box_h <= height) & (box_w > 0) & (box_w <= width)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # index of the first fitting attempt
    return box_h.gather(1, first)[:, 0], box_w.gather(1, first)[:, 0], fits.any(1)


def random_offsets(
    height: int, width: int, box_h: torch.Tensor, box_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, left) (B,) integer-valued floats, uniform over the positions where the boxes fit the image."""
    top = torch.floor(torch.rand(box_h.shape[0]) * (height - box_h + 1))
    left = torch.floor(torch.rand(box_w.shape[0]) * (width - box_w + 1))
    return top, left


def sample_resized_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: Tuple[float, float],
    ratio: Tuple[float, float],
    attempts: int = CROP_ATTEMPTS,
) -> torch.Tensor:
    """(B, 4) integer-valued float boxes (top, left, height, width), one per sample, as torchvision's
    ``RandomResizedCrop.get_params``: area fraction ~ U(scale), log aspect ~ U(log ratio); the first of
    ``attempts`` draws that fits is kept, else the whole image centre-cropped to the nearest allowed ratio."""
    crop_h, crop_w, found = first_fitting_sizes(batch, height, width, scale, ratio, attempts)
    fallback_h, fallback_w = _fallback_crop(height, width, ratio)
    crop_h = torch.where(found, crop_h, torch.tensor(float(fallback_h)))
    crop_w = torch.where(found, crop_w, torch.tensor(float(fallback_w)))
    top, left = random_offsets(height, width, crop_h, crop_w)
    top = torch.where(found, top, torch.floor((height - crop_h) / 2))
    left = torch.where(found, left, torch.floor((width - crop_w) / 2))
    return torch.stack([top, left, crop_h, crop_w], dim=1)


def _fallback_crop(height: int, width: int, ratio: Tuple[float, float]) -> Tuple[int, int]:
    """(height, width) of the largest crop whose aspect is clamped into ``ratio`` (torchvision's fallback)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"view probability {name} must be in [0, 1]; got {p}")
    return float(p)


class ResizedCropFlip(nn.Module):
    """(B, C, H, W) float in [0, 1] -> (B, C, size, size): a random resized crop per sample (antialiased
    ``interpolation``, "bilinear" or "bicubic", see ``resample_boxes``; bicubic may overshoot [0, 1]), mirrored
    with probability ``p_flip``."""

    def __init__(
        self,
        size: int,
        scale: Tuple[float, float],
        ratio: Tuple[float, float] = (3 / 4, 4 / 3),
        p_flip: float = 0.5,
        interpolation: str = "bilinear",
    ):
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
            raise ConfigError(
                f"crop scale must satisfy 0 < lo <= hi <= 1 and ratio 0 < lo <= hi; got scale={scale}, ratio={ratio}"
            )
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"crop interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.p_flip = _check_probability("p_flip", p_flip)
        self.interpolation = interpolation

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, scale={self.scale}, ratio={self.ratio}, p_flip={self.p_flip}, "
            f"interpolation={self.interpolation}"
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        boxes = sample_resized_crop_boxes(batch, height, width, self.scale, self.ratio)
        flip = torch.rand(batch) < self.p_flip
        return resample_boxes(images, boxes, self.size, flip, self.interpolation)


class PaddedCropFlip(nn.Module):
    """(B, C, H, W) float -> (B, C, size, size): resize to ``size`` (as the eval view), zero-pad ``padding``
    pixels, crop size x size at a random integer offset per sample, mirror with probability ``p_flip``."""

    def __init__(self, size: int, padding: int, p_flip: float = 0.5):
        super().__init__()
        if padding < 0:
            raise ConfigError(f"crop padding must be >= 0; got {padding}")
        self.size, self.padding = size, int(padding)
        self.p_flip = _check_probability("p_flip", p_flip)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        resized = resize_center_crop(images, self.size)
        batch, pad, device = resized.shape[0], self.padding, resized.device
        top = torch.randint(0, 2 * pad + 1, (batch,))
        left = torch.randint(0, 2 * pad + 1, (batch,))
        flip = torch.rand(batch) < self.p_flip
        span = torch.arange(self.size)
        cols = left[:, None] + span
        rows, cols = to_device(device, top[:, None] + span, torch.where(flip[:, None], cols.flip(1), cols))
        padded = F.pad(resized, (pad, pad, pad, pad)) if pad else resized
        picked = padded[torch.arange(batch, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2).contiguous()  # advanced indexing put channels last
