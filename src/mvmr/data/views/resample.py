"""Resizing: torchvision's antialiased bilinear resize, deterministic (whole batch) or per-sample crop boxes.

Pixel ``j`` of an axis covers [j, j + 1) and has its centre at j + 0.5 (``align_corners=False``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    return images[..., top:top + size, left:left + size]


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size): shorter side to ``size``, then the centre square."""
    return center_crop(resize_shorter_side(images, size), size)


def axis_weights(start: torch.Tensor, extent: torch.Tensor, length: int, in_length: int) -> torch.Tensor:
    """Per-sample interpolation matrix (B, length, in_length) of one axis.

    Output ``i`` of sample ``b`` reads the window [start_b, start_b + extent_b) resized to ``length``: a triangle
    of half-width max(1, extent_b / length) pixels around start_b + (i + 0.5) * extent_b / length, restricted to
    the window and renormalised. This is the kernel of ``F.interpolate(mode="bilinear", antialias=True)`` (PIL's),
    so upscaling is plain bilinear and downscaling is antialiased. ``start``/``extent``: (B,) integer-valued floats.
    """
    step = extent / length
    centre = start[:, None] + (torch.arange(length, device=start.device, dtype=start.dtype) + 0.5) * step[:, None]
    pixel = torch.arange(in_length, device=start.device, dtype=start.dtype) + 0.5
    half_width = step.clamp(min=1.0)[:, None, None]
    weights = (1.0 - (pixel - centre[:, :, None]).abs() / half_width).clamp(min=0.0)
    inside = (pixel >= start[:, None]) & (pixel < (start + extent)[:, None])
    weights = weights * inside[:, None, :]
    return weights / weights.sum(-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)


def resample_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """Crop one box per sample, resize it to size x size and mirror it where ``flip``.

    images (B, C, H, W) float; boxes (B, 4) = (top, left, height, width) in pixels, inside the image;
    flip (B,) bool -> (B, C, size, size). Equals torchvision's ``resized_crop(..., antialias=True)`` (+ ``hflip``)
    applied sample by sample, computed as two batched matrix products. (Under
    ``torch.set_float32_matmul_precision("high")`` CUDA runs them in TF32: errors ~1e-3 of a pixel's value,
    below uint8 quantisation.)
    """
    height, width = images.shape[-2:]
    boxes = boxes.to(device=images.device, dtype=images.dtype)
    rows = axis_weights(boxes[:, 0], boxes[:, 2], size, height)
    cols = axis_weights(boxes[:, 1], boxes[:, 3], size, width)
    cols = torch.where(flip.to(images.device)[:, None, None], cols.flip(1), cols)
    return rows[:, None] @ images @ cols[:, None].transpose(-1, -2)
