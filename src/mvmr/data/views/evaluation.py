"""Deterministic views: x̄ (resize + centre crop + normalise), x̄ with its mirror image, ten crops for testing,
and a one-image transform."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from mvmr.data.datasets.base import square_of
from mvmr.data.views.resample import center_crop, resize_shorter_side
from mvmr.data.views.tensors import Normalize, check_normalisation, check_size, to_unit_float, view_mode
from mvmr.errors import ConfigError, DataError

TEN_CROP_RATIO = 256 / 224
TEN_CROP_MIN_SIZE = 64  # below this, corner crops cut off too much of the object (digits, CIFAR): centre only


class EvalView(nn.Module):
    """x̄: (B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float32: shorter side resized to
    ``resize_to`` (default ``size``; bilinear, antialiased), centre crop ``size``, normalised. With
    ``resize_to`` = 256 and ``size`` = 224 this is torchvision's Resize(256) + CenterCrop(224), the x̄ of
    ImageNet-style file datasets (``DatasetInfo.eval_resize``)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize_to: int | None = None):
        super().__init__()
        self.size = check_size(size)
        self.resize_to = size if resize_to is None else int(resize_to)
        if self.resize_to < self.size:
            raise ConfigError(
                f"x̄ cannot resize to {self.resize_to} pixels and then crop {self.size}; "
                "dataset.load_size must be >= dataset.size"
            )
        self.channels = check_normalisation(mean, std)
        self.normalize = Normalize(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with view_mode(images):
            unit = resize_shorter_side(to_unit_float(images, self.channels), self.resize_to)
            return self.normalize(center_crop(unit, self.size))


class MirroredView(nn.Module):
    """(B, C, H, W) -> (B, 2, C, size, size): x̄ and x̄ flipped left-right (the two crops ten-crop has at the
    centre, without the corners)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize_to: int | None = None):
        super().__init__()
        self.center = EvalView(size, mean, std, resize_to)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x_bar = self.center(images)
        return torch.stack([x_bar, x_bar.flip(-1)], dim=1)


class TenCropView(nn.Module):
    """(B, C, H, W) -> (B, 10, C, size, size): shorter side resized to round(size * resize_ratio), then
    torchvision's ``ten_crop`` order: corners (top-left, top-right, bottom-left, bottom-right), centre, and the
    same five crops of the mirrored image; normalised."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize_ratio: float = TEN_CROP_RATIO):
        super().__init__()
        self.size = check_size(size)
        self.resize_to = int(round(size * resize_ratio))
        if self.resize_to < size:
            raise ConfigError(f"ten-crop resize_ratio must be >= 1; got {resize_ratio}")
        self.channels = check_normalisation(mean, std)
        self.normalize = Normalize(mean, std)

    def five_crops(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Four corners and the centre, each (B, C, size, size)."""
        height, width, s = images.shape[-2], images.shape[-1], self.size
        return [
            images[..., :s, :s],
            images[..., :s, width - s :],
            images[..., height - s :, :s],
            images[..., height - s :, width - s :],
            center_crop(images, s),
        ]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with view_mode(images):
            resized = resize_shorter_side(to_unit_float(images, self.channels), self.resize_to)
            crops = self.five_crops(resized) + self.five_crops(resized.flip(-1))
            return self.normalize(torch.stack(crops, dim=1))


class EvalTransform:
    """x̄ of ONE image: PIL.Image, or uint8 tensor (C, H, W) / (H, W) -> float32 (C, size, size), normalised.
    PIL images are converted to 'L' or 'RGB' to match len(mean). Picklable (usable in DataLoader workers)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize_to: int | None = None):
        self.view = EvalView(size, mean, std, resize_to)

    def __call__(self, image: Union[Image.Image, torch.Tensor]) -> torch.Tensor:
        return self.view(self.as_tensor(image)[None])[0]

    def as_tensor(self, image: Union[Image.Image, torch.Tensor]) -> torch.Tensor:
        """uint8 (C, H, W) of a PIL image or tensor. A PIL image of a run on image files is first brought to the
        square its loader stores (``square_of``, PIL's resize), so that x̄ is the one the run trained with."""
        if isinstance(image, Image.Image):
            image = image.convert("L" if self.view.channels == 1 else "RGB")
            if self.view.resize_to != self.view.size:
                image = square_of(image, self.view.resize_to)
            array = np.asarray(image)
            tensor = torch.from_numpy(array.copy())
            return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        if isinstance(image, torch.Tensor) and image.ndim in (2, 3):
            return image[None] if image.ndim == 2 else image
        raise DataError(
            f"eval_transform takes a PIL image or a (C, H, W) / (H, W) tensor; got "
            f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}"
        )


def build_eval_view(size: int, mean: Sequence[float], std: Sequence[float], resize_to: int | None = None) -> nn.Module:
    """x̄ for batches on the device, see ``EvalView``."""
    return EvalView(size, mean, std, resize_to)


def build_ten_crop_view(
    size: int, mean: Sequence[float], std: Sequence[float], resize_ratio: float = TEN_CROP_RATIO
) -> nn.Module:
    """Ten normalised crops per image, see ``TenCropView``."""
    return TenCropView(size, mean, std, resize_ratio)


def build_feature_view(
    size: int, mean: Sequence[float], std: Sequence[float], mirror: bool = False, resize_to: int | None = None
) -> nn.Module:
    """The view the linear head trains and validates on: x̄ (B, C, s, s), or with ``mirror`` x̄ and its mirror
    image (B, 2, C, s, s)."""
    return MirroredView(size, mean, std, resize_to) if mirror else EvalView(size, mean, std, resize_to)


def build_test_view(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    ten_crop: bool = True,
    mirror: bool = False,
    resize_to: int | None = None,
) -> tuple[nn.Module, str]:
    """(view, description) for test images: ten crops when asked and ``size >= TEN_CROP_MIN_SIZE``, else x̄ and
    its mirror image with ``mirror``, else x̄."""
    if ten_crop and size >= TEN_CROP_MIN_SIZE:
        return TenCropView(size, mean, std), "ten-crop"
    reason = f", ten-crop needs size >= {TEN_CROP_MIN_SIZE}" if ten_crop else ""
    if mirror:
        return MirroredView(size, mean, std, resize_to), f"center + mirror{reason}"
    return EvalView(size, mean, std, resize_to), f"center{reason}"


def eval_transform(
    size: int, mean: Sequence[float], std: Sequence[float], resize_to: int | None = None
) -> EvalTransform:
    """x̄ of one image (PIL or uint8 tensor), the same maths as ``build_eval_view``."""
    return EvalTransform(size, mean, std, resize_to)
