"""Resizing: torchvision's antialiased bilinear (or bicubic) resize, deterministic (whole batch) or per-sample crop
boxes.

Pixel ``j`` of an axis covers [j, j + 1) and has its centre at j + 0.5 (``align_corners=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvmr.data.views.tensors import to_device
from mvmr.errors import ConfigError


def resize_shorter_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> shorter side ``size``, longer side int(size * long / short), as torchvision's
    ``Resize(size, antialias=True)``; returned unchanged when the shorter side is already ``size``."""
    height, width = images.shape[-2:]
    short, long = min(height, width), max(height, width)
    if short == size:
        return images
    new_long = int(size * long / short)
    shape = (size, new_long) if height <= width else (new_long, size)
    return F.interpolate(images, size=shape, mode="bilinear", antialias=True, align_corners=False)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) with H, W >= size -> (B, C, size, size), offsets rounded as torchvision's ``center_crop``."""
    height, width = images.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size): shorter side to ``size``, then the centre square."""
    return center_crop(resize_shorter_side(images, size), size)


INTERPOLATIONS = ("bilinear", "bicubic")
BICUBIC_A = -0.5  # PIL's (and torch's antialiased) Keys cubic; torch's plain bicubic uses -0.75


def _keys_cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = ``BICUBIC_A``) at distances ``x`` >= 0: PIL's ``bicubic_filter``,
    zero from 2 on."""
    a = BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def axis_weights(
    start: torch.Tensor, extent: torch.Tensor, length: int, in_length: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Per-sample interpolation matrix (B, length, in_length) of one axis.

    Output ``i`` of sample ``b`` reads the window [start_b, start_b + extent_b) resized to ``length``: a kernel
    centred on start_b + (i + 0.5) * extent_b / length, stretched by max(1, extent_b / length), restricted to the
    window and renormalised; "bilinear": a triangle of half-width 1, "bicubic": Keys' cubic (a = -0.5) of
    half-width 2. These are the kernels of ``F.interpolate(mode=..., antialias=True)`` (PIL's), so upscaling is
    plain interpolation and downscaling is antialiased. ``start``/``extent``: (B,) integer-valued floats.
    """
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
    step = extent / length
    centre = start[:, None] + (torch.arange(length, device=start.device, dtype=start.dtype) + 0.5) * step[:, None]
    pixel = torch.arange(in_length, device=start.device, dtype=start.dtype) + 0.5
    stretch = step.clamp(min=1.0)[:, None, None]
    if interpolation == "bilinear":
        weights = (1.0 - (pixel - centre[:, :, None]).abs() / stretch).clamp(min=0.0)
    else:
        weights = _keys_cubic((pixel - centre[:, :, None]).abs() / stretch)
    inside = (pixel >= start[:, None]) & (pixel < (start + extent)[:, None])
    weights = weights * inside[:, None, :]
    return weights / weights.sum(-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)


def resample_boxes(
    images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Crop one box per sample, resize it to size x size and mirror it where ``flip``.

    images (B, C, H, W) float; boxes (B, 4) = (top, left, height, width) in pixels, inside the image;
    flip (B,) bool -> (B, C, size, size). Equals torchvision's ``resized_crop(..., interpolation, antialias=True)``
    (+ ``hflip``) applied sample by sample, computed as two batched matrix products; ``interpolation`` "bilinear"
    or "bicubic" (which overshoots [0, 1] near edges, as torchvision's on floats). (Under
    ``torch.set_float32_matmul_precision("high")`` CUDA runs them in TF32: errors ~1e-3 of a pixel's value,
    below uint8 quantisation.)
    """
    height, width = images.shape[-2:]
    boxes, flip = to_device(images.device, boxes, flip)
    boxes = boxes.to(images.dtype)
    rows = axis_weights(boxes[:, 0], boxes[:, 2], size, height, interpolation)
    cols = axis_weights(boxes[:, 1], boxes[:, 3], size, width, interpolation)
    cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    return rows[:, None] @ images @ cols[:, None].transpose(-1, -2)
