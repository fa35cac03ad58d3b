"""2-D wavelet scattering (ScatNet) per channel: kymatio's transform, computed by
:class:`~mvmr.representations.scattering2d.Scattering2D` (kymatio's filters, order and formula, reorganised)."""

from __future__ import annotations

from typing import Any

import torch

from mvmr.representations.base import Param, Representation, int_param
from mvmr.representations.registry import register_representation
from mvmr.representations.scattering2d import Scattering2D, scattering_channels

__all__ = ["ScatNet", "scattering_channels"]


@register_representation
class ScatNet(Representation):
    """Wavelet scattering: (B, C, H, W) -> (B, C·K·(H//2^J)·(W//2^J)), laid out (C, K, H//2^J, W//2^J).

    K = 1 + J·L + L²·J·(J−1)/2 for max_order 2 (1 + J·L for max_order 1): the low-pass average, then
    |x ⋆ ψ_{j,θ}| ⋆ φ_J and ||x ⋆ ψ_{j1,θ1}| ⋆ ψ_{j2,θ2}| ⋆ φ_J (j1 < j2), subsampled by 2^J; kymatio's
    Scattering2D (Morlet wavelets, J scales, L angles, reflect padding), computed by
    :class:`~mvmr.representations.scattering2d.Scattering2D`: the same filters, output order and sequence of
    linear maps and moduli as kymatio's torch frontend, equal to it to float32 rounding
    (tests/representations/test_representation_speed.py), with less memory traffic around the same FFTs. Its filters are
    non-persistent buffers of the ``scattering`` submodule, so ``.to(device)`` moves them and checkpoints omit them.
    ``subsample_second_order: true`` (default false) is an approximation that is not kymatio's transform: the
    second-order moduli are taken at the output resolution before the low-pass (see
    :class:`~mvmr.representations.scattering2d.Scattering2D`): its second-order FFTs, moduli and low-passes
    run on 4^(J−j2) times fewer samples.
    Needs image_size >= 2^J. For a 3×96×96 input with the defaults: (B, 139968).
    """

    name = "scatnet"
    param_specs = {
        "J": int_param(2, "scales (subsampling by 2^J)", minimum=1),
        "L": int_param(8, "angles per scale", minimum=1),
        "max_order": int_param(2, "scattering order", minimum=1, maximum=2),
        "subsample_second_order": Param(
            False,
            "true or false",
            lambda value: isinstance(value, bool),
            "an approximation, cheaper: second-order moduli taken at the output "
            "resolution 2^J, then low-passed (kymatio: at 2^j2, low-passed, then "
            "subsampled); S0 and the first order unchanged",
        ),
    }
    dim_formula = "C·(1 + J·L + L²·J·(J−1)/2)·(H//2^J)·(W//2^J)  (1 + J·L when max_order=1)"

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        if 2**self.J > image_size:
            raise self.invalid("J", f"<= log2 of the image size {image_size} (2^J <= image size)")
        self.scattering = Scattering2D(
            self.J,
            (image_size, image_size),
            L=self.L,
            max_order=self.max_order,
            subsample_second_order=self.subsample_second_order,
        )

    def output_dim(self) -> int:
        side = self.image_size // 2**self.J
        return self.in_channels * scattering_channels(self.J, self.L, self.max_order) * side * side

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.scattering(x)
