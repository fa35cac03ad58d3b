"""Per-sample colour and policy augmentations (kornia), on float images in [0, 1].

kornia draws factors and gates per sample, but its RandAugment / AutoAugment pick the operations once per
batch; ``PerSampleChoice`` makes that choice per sample by running each kornia branch on its own samples.
"""
from __future__ import annotations

from typing import Sequence

import kornia.augmentation as K
import torch
from kornia.augmentation.auto import AutoAugment, RandAugment
from kornia.augmentation.auto.autoaugment.autoaugment import cifar10_policy, imagenet_policy
from kornia.augmentation.auto.rand_augment.rand_augment import default_policy as rand_augment_ops
from torch import nn

from mvmr.errors import ConfigError

JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue at strength 1
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 0.5


def blur_kernel_size(size: int) -> int:
    """Gaussian-blur kernel for ``size`` pixels: 10% of the side, made odd, at least 3 (224 -> 23, 96 -> 9)."""
    kernel = max(3, int(0.1 * size))
    return kernel if kernel % 2 else kernel + 1


def colour_ops(size: int, channels: int, strength: float = 1.0, p_jitter: float = 0.8, p_grayscale: float = 0.2,
               p_blur: float = 0.5, p_solarize: float = 0.1) -> nn.Sequential:
    """Colour jitter (magnitudes ``JITTER`` x strength), grayscale, Gaussian blur, solarize; each op on a random
    subset of the batch (probability p per sample), factors drawn per sample. 1-channel images get brightness and
    contrast only (no saturation, hue or grayscale). (B, C, size, size) -> same, in [0, 1].

    kornia's ColorJitter uses torchvision's formulas but draws the order of its four steps once per batch.
    """
    brightness, contrast, saturation, hue = (m * strength for m in JITTER)
    ops = []
    if channels == 3:
        ops += [K.ColorJitter(brightness, contrast, saturation, min(hue, 0.5), p=p_jitter),
                K.RandomGrayscale(p=p_grayscale)]
    else:
        ops += [K.ColorJitter(brightness, contrast, 0.0, 0.0, p=p_jitter)]
    kernel = blur_kernel_size(size)
    ops += [K.RandomGaussianBlur((kernel, kernel), BLUR_SIGMA, border_type="reflect", p=p_blur),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=p_solarize)]  # pixels >= 0.5 -> 1 - x
    return nn.Sequential(*ops)


class PerSampleChoice(nn.Module):
    """Apply ``picks`` distinct branches, chosen uniformly and independently for every sample, one after the
    other (RandAugment's n ops; AutoAugment's one sub-policy). (B, C, H, W) -> (B, C, H, W).

    Each branch runs once on the samples that chose it, so per-sample choice costs at most
    picks x len(branches) branch calls.
    """

    def __init__(self, branches: Sequence[nn.Module], picks: int = 1):
        super().__init__()
        if not 1 <= picks <= len(branches):
            raise ConfigError(f"cannot pick {picks} distinct operations out of {len(branches)}")
        self.branches = nn.ModuleList(branches)
        self.picks = picks

    def draw(self, batch: int) -> torch.Tensor:
        """(B, picks) branch indices, distinct within a row (CPU, global generator)."""
        return torch.rand(batch, len(self.branches)).argsort(dim=1)[:, :self.picks]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        choice = self.draw(images.shape[0])
        out = images.clone()
        for step in range(self.picks):
            for index, branch in enumerate(self.branches):
                members = (choice[:, step] == index).nonzero()[:, 0]
                if len(members):
                    members = members.to(images.device)
                    out[members] = branch(out[members])
        return out


class OnThreeChannels(nn.Module):
    """Run an RGB-only ``module`` on 1-channel images by repeating them to 3 channels and keeping the first
    (grey stays grey under every policy op, so the channels stay equal). 3-channel input passes straight."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 3:
            return self.module(images)
        return self.module(images.repeat(1, 3, 1, 1))[:, :1]


def rand_augment(n: int = 2, magnitude: int = 10) -> nn.Module:
    """kornia's RandAugment (its default 15 ops, magnitude m/30 of each range), with the n distinct ops drawn per
    sample instead of per batch. Works on 1 and 3 channels (1 via ``OnThreeChannels``)."""
    branches = [RandAugment(n=1, m=magnitude, policy=[op]) for op in rand_augment_ops]
    return OnThreeChannels(PerSampleChoice(branches, picks=n))


def auto_augment(size: int) -> nn.Module:
    """kornia's AutoAugment, policy 'cifar10' for size <= 64 else 'imagenet', with the sub-policy drawn per sample
    instead of per batch. Works on 1 and 3 channels (1 via ``OnThreeChannels``)."""
    policy = cifar10_policy if size <= 64 else imagenet_policy
    return OnThreeChannels(PerSampleChoice([AutoAugment(policy=[sub]) for sub in policy]))
