"""The x' view: a registered augmentation policy between uint8 -> [0, 1] conversion and normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from mvmr.data.views.erasing import RandomErasing
from mvmr.data.views.geometric import PaddedCropFlip, ResizedCropFlip
from mvmr.data.views.photometric import (
    BLUR_SIGMA,
    COMPILABLE_OPS,
    GaussianBlur,
    authors_blur_kernel_size,
    auto_augment,
    colour_ops,
    jitter_grayscale_ops,
    rand_augment,
)
from mvmr.data.views.tensors import Normalize, check_normalisation, check_size, make_stateless, to_unit_float, view_mode
from mvmr.errors import ConfigError
from mvmr.registry import Registry

# name -> factory(size, channels, strength, crop_scale) -> nn.Module mapping (B, C, H, W) float in [0, 1] to
# (B, C, size, size) float in [0, 1], every random parameter drawn per sample. ``crop_scale`` (lo, hi) is the area
# range of the random resized crop (None: ``default_crop_scale(size)``); policies without one ignore it.
VIEW_POLICIES = Registry("aug_policy")


def default_crop_scale(size: int) -> Tuple[float, float]:
    """Area range of the random resized crop: (0.08, 1) as on ImageNet, (0.2, 1) for small images (<= 64)."""
    return (0.2, 1.0) if size <= 64 else (0.08, 1.0)


@dataclass(frozen=True)
class CustomKnobs:
    """Probabilities and crop ranges of the ``custom`` policy; the defaults are SimCLR/VICReg's."""

    crop_scale: Optional[Tuple[float, float]] = None  # None: default_crop_scale(size)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    p_jitter: float = 0.8
    p_grayscale: float = 0.2
    p_blur: float = 0.5
    p_solarize: float = 0.1


@VIEW_POLICIES.register("custom")
def custom_policy(
    size: int,
    channels: int,
    strength: float = 1.0,
    crop_scale: Optional[Tuple[float, float]] = None,
    knobs: CustomKnobs = CustomKnobs(),
) -> nn.Module:
    """Random resized crop + flip, colour jitter (x strength), grayscale, blur, solarize (see ``colour_ops``)."""
    scale = crop_scale or knobs.crop_scale or default_crop_scale(size)
    crop = ResizedCropFlip(size, scale, knobs.crop_ratio, knobs.p_flip)
    colour = colour_ops(size, channels, strength, knobs.p_jitter, knobs.p_grayscale, knobs.p_blur, knobs.p_solarize)
    return nn.Sequential(crop, *colour)


@VIEW_POLICIES.register("cifar")
def cifar_policy(
    size: int, channels: int, strength: float = 1.0, crop_scale: Optional[Tuple[float, float]] = None
) -> nn.Module:
    """Resize to size, random crop with 4 pixels of zero padding per 32 pixels of size, flip; no colour ops
    (``strength`` and ``crop_scale`` are unused)."""
    return PaddedCropFlip(size, padding=int(round(4 * size / 32)), p_flip=0.5)


@VIEW_POLICIES.register("crop")
def crop_policy(
    size: int, channels: int, strength: float = 1.0, crop_scale: Optional[Tuple[float, float]] = None
) -> nn.Module:
    """Random resized crop + flip only, no colour ops (``strength`` is unused): for grayscale data."""
    return ResizedCropFlip(size, crop_scale or default_crop_scale(size))


@VIEW_POLICIES.register("randaugment")
def randaugment_policy(
    size: int, channels: int, strength: float = 1.0, crop_scale: Optional[Tuple[float, float]] = None
) -> nn.Module:
    """Random resized crop + flip, then RandAugment(n=2, m=10) with ops drawn per sample (``strength`` unused)."""
    return nn.Sequential(ResizedCropFlip(size, crop_scale or default_crop_scale(size)), rand_augment(n=2, magnitude=10))


@VIEW_POLICIES.register("autoaugment")
def autoaugment_policy(
    size: int, channels: int, strength: float = 1.0, crop_scale: Optional[Tuple[float, float]] = None
) -> nn.Module:
    """Random resized crop + flip, then AutoAugment ('cifar10' policy for size <= 64, else 'imagenet') with the
    sub-policy drawn per sample (``strength`` unused)."""
    return nn.Sequential(ResizedCropFlip(size, crop_scale or default_crop_scale(size)), auto_augment(size))


AUTHORS_JITTER = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue of the authors' 'custom' policy
CIFAR20_JITTER = (0.4, 0.4, 0.4, 0.1)  # ... and of their 'cifar20' policy
TORCHVISION_CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop's default area range
CIFAR20_CROP_SCALE = (0.2, 1.0)


@VIEW_POLICIES.register("authors")
def authors_policy(
    size: int, channels: int, strength: float = 1.0, crop_scale: Optional[Tuple[float, float]] = None
) -> nn.Module:
    """The authors' AugTransform policy 'custom' (vkinakh/mv-mr src/transform/transform.py), value for value:
    random resized crop (area (0.08, 1) whatever the size, or ``crop_scale``; ratio (3/4, 4/3); antialiased
    bilinear), flip p=0.5, colour jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale p=0.2, Gaussian blur ALWAYS
    (kernel 2 int(0.05 size) + 1, i.e. none below 20 px; sigma ~ U(0.1, 2)), no solarize. Every draw per sample,
    the jitter's step order too (torchvision's per image). ``strength`` is unused. 1 channel: brightness and
    contrast only, no grayscale."""
    crop = ResizedCropFlip(size, crop_scale or TORCHVISION_CROP_SCALE, (3 / 4, 4 / 3), p_flip=0.5)
    colour = jitter_grayscale_ops(channels, AUTHORS_JITTER, p_jitter=0.8, p_grayscale=0.2, order_per_sample=True)
    blur = GaussianBlur(authors_blur_kernel_size(size), BLUR_SIGMA, p=1.0)
    return nn.Sequential(crop, *colour, blur)


@VIEW_POLICIES.register("cifar20")
def cifar20_policy(
    size: int, channels: int, strength: float = 1.0, crop_scale: Optional[Tuple[float, float]] = None
) -> nn.Module:
    """The authors' AugTransform policy 'cifar20' (vkinakh/mv-mr src/transform/transform.py): colour jitter
    (0.4, 0.4, 0.4, 0.1) with p=0.8 and grayscale p=0.1 on the WHOLE input image, then a random resized crop
    (area (0.2, 1) or ``crop_scale``; ratio (3/4, 4/3); antialiased bicubic, may overshoot [0, 1] until
    ``TrainView`` clamps) and flip p=0.5. Every draw per sample, the jitter's step order too. ``strength`` is
    unused. 1 channel: brightness and contrast only, no grayscale."""
    colour = jitter_grayscale_ops(channels, CIFAR20_JITTER, p_jitter=0.8, p_grayscale=0.1, order_per_sample=True)
    crop = ResizedCropFlip(size, crop_scale or CIFAR20_CROP_SCALE, (3 / 4, 4 / 3), p_flip=0.5, interpolation="bicubic")
    return nn.Sequential(*colour, crop)


# On the CPU a view runs in chunks of about this many bytes of float32 output: each elementwise op then works on
# data that stays in cache instead of streaming the whole batch through memory once per op (96 px, 128 images:
# 75-image chunks; at 32 px a 256-image batch is one chunk). `python benchmarks/views_throughput.py` measures it.
CPU_CHUNK_BYTES = 8 * 2**20


class TrainView(nn.Module):
    """x': (B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float32, augmented per sample, normalised.
    No parameters, no checkpointed state, no gradients. On the CPU the batch is cut into chunks of at most
    ``chunk_bytes`` of output (0: never), see ``CPU_CHUNK_BYTES``; every parameter is drawn per sample either
    way, so chunking changes which random numbers a sample gets, not their distribution."""

    def __init__(
        self,
        augment: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        size: Optional[int] = None,
        chunk_bytes: int = CPU_CHUNK_BYTES,
    ):
        super().__init__()
        self.channels = check_normalisation(mean, std)
        self.augment = make_stateless(augment)
        self.normalize = Normalize(mean, std)
        self.size, self.chunk_bytes = size, chunk_bytes

    def chunk_size(self, images: torch.Tensor) -> int:
        """Samples per call for ``images`` (B, C, H, W): all of them off the CPU or when they fit."""
        if images.device.type != "cpu" or self.chunk_bytes <= 0:
            return images.shape[0]
        height, width = images.shape[-2:]
        pixels = max(height * width, (self.size or 0) ** 2)
        return max(1, self.chunk_bytes // (4 * images.shape[1] * pixels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        chunk = self.chunk_size(images)
        with view_mode(images):
            if chunk >= images.shape[0]:
                return self._view(images)
            return torch.cat([self._view(part) for part in images.split(chunk)])

    def _view(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.augment(to_unit_float(images, self.channels)).clamp(0.0, 1.0))


@dataclass(frozen=True)
class LoaderCrops:
    """The geometric part of a view policy, done by the data loader's workers on the whole decoded image:
    ``count`` random resized crops per image (area fraction ~ U(``scale``), log aspect ~ U(log ``ratio``), as
    torchvision's RandomResizedCrop), each mirrored with probability ``p_flip`` and resized to ``size`` x ``size``
    (antialiased bilinear). The first crop is x'; the others feed the augmented copies of ``augmented_pixels``."""

    size: int
    scale: Tuple[float, float]
    ratio: Tuple[float, float]
    p_flip: float
    count: int = 1


def split_geometry(augment: nn.Module) -> tuple[Optional[ResizedCropFlip], nn.Module]:
    """(the leading random resized crop + flip, the rest) of a policy's module; (None, augment) when the policy does
    not start with one (cifar's padded crop; cifar20 crops after its colour ops)."""
    if isinstance(augment, ResizedCropFlip):
        return augment, nn.Identity()
    if isinstance(augment, nn.Sequential) and len(augment) and isinstance(augment[0], ResizedCropFlip):
        return augment[0], nn.Sequential(*list(augment)[1:])
    return None, augment


def build_train_view(
    policy: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int,
    strength: float = 1.0,
    crop_scale: Optional[Sequence[float]] = None,
    erase_p: float = 0.0,
    compile_ops: bool = True,
    crops_in_loader: bool = False,
) -> nn.Module:
    """The training view x' of ``policy`` (custom | cifar | crop | randaugment | autoaugment | authors | cifar20),
    see ``TrainView``; ``crop_scale`` overrides the policy's random-resized-crop area range; ``erase_p`` > 0
    appends :class:`RandomErasing` (filled with ``mean``); ``compile_ops``: the colour ops' elementwise formulas
    run fused by torch.compile (the ``compiled`` switch of jitter, grayscale and solarize).

    ``crops_in_loader``: the policy's leading resized crop + flip is left to the data loader, which crops the whole
    decoded image (``LoaderCrops``, in the returned view's ``loader_crops``); the view then runs the rest of the
    policy on those size x size crops. A policy that does not start with a resized crop is a ConfigError."""
    check_size(size)
    check_normalisation(mean, std, channels)
    if strength < 0:
        raise ConfigError(f"dataset.aug_strength must be >= 0; got {strength}")
    if crop_scale is not None:
        crop_scale = tuple(crop_scale)
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ConfigError(f"dataset.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1; got {list(crop_scale)}")
    factory = VIEW_POLICIES.get(policy, key="dataset.aug_policy")
    augment = factory(size, channels, strength, crop_scale)
    loader_crops = None
    if crops_in_loader:
        crop, augment = split_geometry(augment)
        if crop is None:
            raise ConfigError(
                f"dataset.aug_policy={policy} does not start with a random resized crop, so the loader "
                "cannot crop for it; set dataset.crops_in_loader=false or use custom / authors / crop"
            )
        loader_crops = LoaderCrops(size, crop.scale, crop.ratio, crop.p_flip)
    if erase_p > 0:
        augment = nn.Sequential(augment, RandomErasing(erase_p, mean))
    for module in augment.modules():
        if isinstance(module, COMPILABLE_OPS):
            module.compiled = compile_ops
    view = TrainView(augment, mean, std, size)
    view.loader_crops = loader_crops
    return view


def can_crop_in_loader(policy: str) -> bool:
    """Whether ``policy`` starts with a random resized crop (the part ``crops_in_loader`` moves to the loader)."""
    return split_geometry(VIEW_POLICIES.get(policy, key="dataset.aug_policy")(32, 3, 1.0, None))[0] is not None


def train_view_from_config(
    cfg, mean: Sequence[float], std: Sequence[float], channels: int, crops_in_loader: bool = False
) -> nn.Module:
    """``build_train_view`` from a trainer config: its ``dataset`` section (policy, size, strength, crop range,
    erasing) and ``compile_view_ops``."""
    data = cfg.dataset
    return build_train_view(
        data.aug_policy,
        data.size,
        mean,
        std,
        channels,
        strength=data.aug_strength,
        crop_scale=data.crop_scale,
        erase_p=data.erase_p,
        compile_ops=cfg.compile_view_ops,
        crops_in_loader=crops_in_loader,
    )
