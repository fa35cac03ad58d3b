"""The image itself, and an independently augmented copy of it, flattened."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torchvision import transforms

from mvmr.data.views import VIEW_POLICIES
from mvmr.errors import ConfigError
from mvmr.representations.base import Param, Representation
from mvmr.representations.registry import register_representation

DRAWS = ("sample", "batch")


def authors_batch_transform(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The authors' ``self._transform`` for size×size images (``get_feature_extraction`` in their
    src/model/self_supervised_module.py), built from torchvision's own transforms.

    Applied to a (B, C, H, W) tensor it draws one set of parameters for the whole batch; the float-tensor
    colour ops clamp to [0, 1]. ``antialias=False``: their torchvision 0.13 resized tensors without
    antialiasing (today's default is True).
    """
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size=size, antialias=False),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.GaussianBlur(kernel_size=2 * int(0.05 * size) + 1),
        ]
    )


def _policy_name(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value in VIEW_POLICIES)


@register_representation
class Pixels(Representation):
    """The flattened normalised image: (B, C, H, W) -> (B, C·H·W).

    For a 3×96×96 input with the defaults: (B, 27648).
    """

    name = "pixels"
    dim_formula = "C·H·W"

    def output_dim(self) -> int:
        return self.in_channels * self.image_size**2

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register_representation
class AugmentedPixels(Representation):
    """An independently augmented copy of x̄, flattened: (B, C, H, W) -> (B, C·H·W). Not cacheable.

    ``draw: sample`` (default): ``augment``, (B, C, H, W) -> (B, C, H, W) normalised images with random
    parameters per sample (the training view policy), injected by the training code. It is held as a
    plain callable, not a submodule, so the training code keeps owning (and moving) it.
    ``draw: batch``: the authors' ``self._transform(im_orig)`` (``_step_dc('full_img_augment')``), see
    :func:`authors_batch_transform`: torchvision's Compose applied to the normalised batch x̄ at once, one
    random draw for the whole batch, colour ops clamping the NORMALISED values to [0, 1] as theirs did;
    ``augment`` is not used (may be None). Only to reproduce their runs; needs 1 or 3 channels.
    For a 3×96×96 input with the defaults: (B, 27648).
    """

    name = "augmented_pixels"
    param_specs = {
        "draw": Param(
            "sample",
            f"one of {', '.join(DRAWS)}",
            lambda value: value in DRAWS,
            "sample: the training view policy, drawn per sample; batch: the authors' torchvision "
            "transform of the normalised batch, one draw per batch",
        ),
        "policy": Param(
            None,
            "null or a view policy name (dataset.aug_policy's choices)",
            _policy_name,
            "view policy of the copy (null: the x' view's dataset.aug_policy; the authors' copy "
            "always uses their 'custom' transform, the `authors` policy)",
        ),
    }
    dim_formula = "C·H·W"
    deterministic = False
    needs_augment = True

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        **params: Any,
    ):
        super().__init__(in_channels, image_size, **params)
        if self.draw == "batch":
            if in_channels not in (1, 3):
                raise self.invalid(
                    "draw",
                    f"sample for {in_channels}-channel images (torchvision's colour transforms take 1 or 3 channels)",
                )
            augment = authors_batch_transform(image_size)
        elif augment is None or not callable(augment):
            raise ConfigError(
                "augmented_pixels needs the training augmentation: build it through the pretraining "
                "module (build_representation(..., augment=<view policy>)), not on its own"
            )
        object.__setattr__(self, "augment", augment)  # not registered as a submodule

    @property
    def draws_from_training_view(self) -> bool:
        """Whether the training step should draw this copy from its view policy and pass it to
        :meth:`from_augmented` (draw: sample); False: call the representation on x̄ (draw: batch)."""
        return self.draw == "sample"

    def output_dim(self) -> int:
        return self.in_channels * self.image_size**2

    def from_augmented(self, augmented: torch.Tensor) -> torch.Tensor:
        """The representation of a copy the caller already augmented (the training step draws it in the same
        batched call as the x' view): (B, C, H, W) normalised -> (B, C·H·W). Only for draw: sample."""
        if not self.draws_from_training_view:
            raise RuntimeError(
                "augmented_pixels with draw: batch augments x̄ itself: call it on x̄, not "
                "from_augmented (see draws_from_training_view)"
            )
        return augmented.detach().reshape(augmented.shape[0], -1).float()

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        out = self.augment(x)
        if out.shape != x.shape:
            raise ValueError(f"augmented_pixels: augment must keep the shape {tuple(x.shape)}, got {tuple(out.shape)}")
        return out
