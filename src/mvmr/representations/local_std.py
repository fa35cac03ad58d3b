"""Local standard deviation over 3×3 neighbourhoods, per channel."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mvmr.errors import ConfigError
from mvmr.representations.base import Representation
from mvmr.representations.registry import register_representation


@register_representation
class LocalStd(Representation):
    """Population std of each pixel's 3×3 neighbourhood: (B, C, H, W) -> (B, C·H·W).

    Borders use reflect padding without repeating the edge pixel (torch's ``reflect``; SciPy's
    ``mode='mirror'``). Computed from differences to the centre pixel, d = x_n − x_c:
    var = mean(d²) − mean(d)², which avoids the cancellation of mean(x²) − mean(x)² in float32.
    Needs image_size >= 2. For a 3×96×96 input with the defaults: (B, 27648).
    """

    name = "local_std"
    dim_formula = "C·H·W"

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        if image_size < 2:
            raise ConfigError(f"local_std needs images of at least 2×2 (reflect padding); got image_size {image_size}")

    def output_dim(self) -> int:
        return self.in_channels * self.image_size**2

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        sum_d = torch.zeros_like(x)
        sum_d2 = torch.zeros_like(x)
        d = torch.empty_like(x)
        for dy in range(3):
            for dx in range(3):
                if dy == dx == 1:
                    continue  # the centre: d = 0 adds nothing to either sum
                torch.sub(padded[..., dy : dy + size, dx : dx + size], x, out=d)
                sum_d += d
                sum_d2.addcmul_(d, d)
        mean_d = sum_d.div_(9)
        return sum_d2.div_(9).addcmul_(mean_d, mean_d, value=-1).clamp_(min=0).sqrt_()
