"""The image itself, and an independently augmented copy of it, flattened."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from mvmr.errors import ConfigError
from mvmr.representations.base import Representation
from mvmr.representations.registry import register_representation


@register_representation
class Pixels(Representation):
    """The flattened normalised image: (B, C, H, W) -> (B, C·H·W).

    For a 3×96×96 input with the defaults: (B, 27648).
    """

    name = "pixels"
    dim_formula = "C·H·W"

    def output_dim(self) -> int:
        return self.in_channels * self.image_size ** 2

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register_representation
class AugmentedPixels(Representation):
    """An independently augmented copy of x̄, flattened: (B, C, H, W) -> (B, C·H·W). Not cacheable.

    ``augment``: (B, C, H, W) -> (B, C, H, W) normalised images with random parameters per sample (the
    training view policy), injected by the training code. It is held as a plain callable, not a
    submodule, so the training code keeps owning (and moving) it.
    For a 3×96×96 input with the defaults: (B, 27648).
    """

    name = "augmented_pixels"
    dim_formula = "C·H·W"
    deterministic = False
    needs_augment = True

    def __init__(self, in_channels: int, image_size: int, augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 **params: Any):
        super().__init__(in_channels, image_size, **params)
        if augment is None or not callable(augment):
            raise ConfigError("augmented_pixels needs the training augmentation: build it through the pretraining "
                              "module (build_representation(..., augment=<view policy>)), not on its own")
        object.__setattr__(self, "augment", augment)  # not registered as a submodule

    def output_dim(self) -> int:
        return self.in_channels * self.image_size ** 2

    def from_augmented(self, augmented: torch.Tensor) -> torch.Tensor:
        """The representation of a copy the caller already augmented (the training step draws it in the same
        batched call as the x' view): (B, C, H, W) normalised -> (B, C·H·W)."""
        return augmented.detach().reshape(augmented.shape[0], -1).float()

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        out = self.augment(x)
        if out.shape != x.shape:
            raise ValueError(f"augmented_pixels: augment must keep the shape {tuple(x.shape)}, got {tuple(out.shape)}")
        return out
