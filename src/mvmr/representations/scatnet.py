"""2-D wavelet scattering (ScatNet) per channel, computed by kymatio's torch frontend."""
from __future__ import annotations

from typing import Any

import torch
# ``kymatio.torch`` also imports the 1-D/3-D frontends, which fail with the installed SciPy.
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

from mvmr.representations.base import Representation, int_param
from mvmr.representations.registry import register_representation


def scattering_channels(J: int, L: int, max_order: int) -> int:
    """Coefficients per input channel: 1 + J·L (order 1) + L²·J·(J−1)/2 (order 2)."""
    return 1 + J * L + (L * L * J * (J - 1) // 2 if max_order == 2 else 0)


@register_representation
class ScatNet(Representation):
    """Wavelet scattering: (B, C, H, W) -> (B, C·K·(H//2^J)·(W//2^J)), laid out (C, K, H//2^J, W//2^J).

    K = 1 + J·L + L²·J·(J−1)/2 for max_order 2 (1 + J·L for max_order 1): the low-pass average, then
    |x ⋆ ψ_{j,θ}| ⋆ φ_J and ||x ⋆ ψ_{j1,θ1}| ⋆ ψ_{j2,θ2}| ⋆ φ_J (j1 < j2), subsampled by 2^J; kymatio's
    Scattering2D (Morlet wavelets, J scales, L angles, reflect padding). Its filters are non-persistent
    buffers of the ``scattering`` submodule, so ``.to(device)`` moves them and checkpoints omit them.
    Needs image_size >= 2^J. For a 3×96×96 input with the defaults: (B, 139968).
    """

    name = "scatnet"
    param_specs = {
        "J": int_param(2, "scales (subsampling by 2^J)", minimum=1),
        "L": int_param(8, "angles per scale", minimum=1),
        "max_order": int_param(2, "scattering order", minimum=1, maximum=2),
    }
    dim_formula = "C·(1 + J·L + L²·J·(J−1)/2)·(H//2^J)·(W//2^J)  (1 + J·L when max_order=1)"

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        if 2 ** self.J > image_size:
            raise self.invalid("J", f"<= log2 of the image size {image_size} (2^J <= image size)")
        self.scattering = ScatteringTorch2D(J=self.J, shape=(image_size, image_size), L=self.L,
                                            max_order=self.max_order)
        for key, buffer in list(self.scattering.named_buffers(recurse=False)):
            self.scattering.register_buffer(key, buffer, persistent=False)

    def output_dim(self) -> int:
        side = self.image_size // 2 ** self.J
        return self.in_channels * scattering_channels(self.J, self.L, self.max_order) * side * side

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.scattering(x.contiguous())
