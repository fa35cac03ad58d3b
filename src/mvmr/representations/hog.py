"""Histogram of oriented gradients per channel, soft-binned, average-pooled over square cells."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from mvmr.representations.base import Representation, int_param
from mvmr.representations.binning import linear_bins, scatter_two_bins
from mvmr.representations.registry import register_representation


@register_representation
class HOG(Representation):
    """Per-channel HOG: (B, C, H, W) -> (B, C·nbins·(H//pool)·(W//pool)), laid out (C, nbins, H//pool, W//pool).

    Per pixel: gx = x[i, j+1] − x[i, j−1], gy = x[i+1, j] − x[i−1, j] (the [-1, 0, 1] kernels as a
    depthwise conv2d, replicate padding), magnitude m = √(gx² + gy²), unsigned orientation
    θ = atan2(gy, gx) mod π in [0, π) (rows point down; a vertical edge has θ = 0). Bin k is centred
    at k·π/nbins; θ at t = θ·nbins/π bins gives m·(1 − (t − ⌊t⌋)) to bin ⌊t⌋ and m·(t − ⌊t⌋) to bin
    ⌊t⌋ + 1, wrapping from the last bin to bin 0 (θ near π is near 0). The per-pixel histograms are then
    averaged over non-overlapping pool×pool cells (the H mod pool last rows / columns are dropped).

    The authors' code scatters m and 1 − m to the two adjacent bins, which is wrong: the split must
    depend on the angle and both shares must be proportional to m (here they sum to m).
    For a 3×96×96 input with the defaults: (B, 10368).
    """

    name = "hog"
    param_specs = {
        "nbins": int_param(24, "orientation bins over [0, π)", minimum=2),
        "pool": int_param(8, "cell size in pixels (average pooling)", minimum=1),
    }
    dim_formula = "C·nbins·(H//pool)·(W//pool)"

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        if self.pool > image_size:
            raise self.invalid("pool", f"<= the image size {image_size}")
        central = torch.tensor([-1.0, 0.0, 1.0])
        kernels = torch.zeros(2, 1, 3, 3)
        kernels[0, 0, 1, :] = central  # d/dx along columns
        kernels[1, 0, :, 1] = central  # d/dy along rows
        self.register_buffer("gradient_kernels", kernels, persistent=False)

    @property
    def cells(self) -> int:
        """Cells per side."""
        return self.image_size // self.pool

    def output_dim(self) -> int:
        return self.in_channels * self.nbins * self.cells ** 2

    def gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> gx, gy (B·C, H, W) by central differences."""
        planes = F.pad(x.reshape(-1, 1, *x.shape[-2:]), (1, 1, 1, 1), mode="replicate")
        grad = F.conv2d(planes, self.gradient_kernels)
        return grad[:, 0], grad[:, 1]

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        gx, gy = self.gradients(x)
        covered = self.cells * self.pool
        gx, gy = gx[:, :covered, :covered], gy[:, :covered, :covered]
        magnitude = torch.hypot(gx, gy)
        orientation = torch.atan2(gy, gx).remainder(math.pi)
        lower, upper, upper_share = linear_bins(orientation * (self.nbins / math.pi), self.nbins, circular=True)
        position = torch.arange(covered, device=x.device) // self.pool
        cell = (position[:, None] * self.cells + position[None, :]).expand_as(lower)  # (B·C, h, w)
        n_cells = self.cells ** 2
        hist = scatter_two_bins((lower * n_cells + cell).flatten(1), (upper * n_cells + cell).flatten(1),
                                (magnitude * (1 - upper_share)).flatten(1), (magnitude * upper_share).flatten(1),
                                self.nbins * n_cells)
        return hist.div_(self.pool ** 2).reshape(batch, channels, self.nbins, self.cells, self.cells)
