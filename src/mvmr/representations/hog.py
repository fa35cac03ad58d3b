"""Histogram of oriented gradients per channel, soft-binned, average-pooled over square cells."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from mvmr.representations.base import Param, Representation, int_param
from mvmr.representations.binning import scatter_two_bins
from mvmr.representations.registry import register_representation

VARIANTS = ("mvmr", "authors")
SOBEL = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))  # the authors' kernel (cross-correlated)


@register_representation
class HOG(Representation):
    """Per-channel HOG: (B, C, H, W) -> (B, C·nbins·(H//pool)·(W//pool)), laid out (C, nbins, H//pool, W//pool).

    Per pixel: gx = x[i, j+1] − x[i, j−1], gy = x[i+1, j] − x[i−1, j] (the [-1, 0, 1] kernels as two
    shifted subtractions, replicate padding, over the pixels the cells cover), magnitude m = √(gx² + gy²),
    unsigned orientation θ = atan2(gy, gx) mod π in [0, π) (rows point down; a vertical edge has θ = 0). Bin k
    is centred at k·π/nbins; θ at t = θ·nbins/π bins gives m·(1 − (t − ⌊t⌋)) to bin ⌊t⌋ and m·(t − ⌊t⌋) to bin
    ⌊t⌋ + 1, wrapping from the last bin to bin 0 (θ near π is near 0). The per-pixel histograms are then
    averaged over non-overlapping pool×pool cells (the H mod pool last rows / columns are dropped).

    The authors' code scatters m and 1 − m to the two adjacent bins, which is wrong: the split must
    depend on the angle and both shares must be proportional to m (here they sum to m).
    ``variant: authors`` computes their histogram instead (:meth:`compute_authors`), only to reproduce
    their runs; the output layout and size are the same.
    For a 3×96×96 input with the defaults: (B, 10368).
    """

    name = "hog"
    param_specs = {
        "nbins": int_param(24, "orientation bins over [0, π)", minimum=2),
        "pool": int_param(8, "cell size in pixels (average pooling)", minimum=1),
        "variant": Param(
            "mvmr",
            f"one of {', '.join(VARIANTS)}",
            lambda value: value in VARIANTS,
            "mvmr: angle-weighted soft binning; authors: the authors' HOGLayer (m and 1 − m "
            "shares, to reproduce their runs only)",
        ),
    }
    dim_formula = "C·nbins·(H//pool)·(W//pool)"

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        if self.pool > image_size:
            raise self.invalid("pool", f"<= the image size {image_size}")
        covered = self.cells * self.pool
        position = torch.arange(covered) // self.pool
        # the cell of each covered pixel (row-major cell index), as float: bin·cells² + cell stays exact in float32
        self.register_buffer(
            "cell_index", (position[:, None] * self.cells + position[None, :]).float(), persistent=False
        )
        sobel = torch.tensor(SOBEL)
        self.register_buffer("sobel_kernels", torch.stack([sobel, sobel.t()])[:, None], persistent=False)

    @property
    def cells(self) -> int:
        """Cells per side."""
        return self.image_size // self.pool

    def output_dim(self) -> int:
        return self.in_channels * self.nbins * self.cells**2

    def gradients(self, x: torch.Tensor, covered: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> gx, gy (B·C, h, w) by central differences on the replicate-padded planes, over the
        top-left ``covered``² pixels (default: all). Two shifted subtractions: x[j+1] − x[j−1] is exactly what the
        [-1, 0, 1] kernels' cross-correlation computes (its other taps are zero)."""
        rows, cols = x.shape[-2:] if covered is None else (covered, covered)
        planes = F.pad(x.reshape(-1, 1, *x.shape[-2:]), (1, 1, 1, 1), mode="replicate")[:, 0]
        gx = planes[:, 1 : rows + 1, 2 : cols + 2] - planes[:, 1 : rows + 1, :cols]
        gy = planes[:, 2 : rows + 2, 1 : cols + 1] - planes[:, :rows, 1 : cols + 1]
        return gx, gy

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "authors":
            return self.compute_authors(x)
        batch, channels = x.shape[:2]
        covered = self.cells * self.pool
        gx, gy = self.gradients(x, covered)
        magnitude = torch.hypot(gx, gy)
        position = torch.atan2(gy, gx).remainder_(math.pi).mul_(self.nbins / math.pi)  # θ in bin units, [0, nbins]
        # linear_bins(position, nbins, circular=True) in float32: the bins are small integers (exact), wrapped
        # from nbins to 0 with a comparison instead of an int64 remainder
        lower = position.floor()
        upper_share = position.sub_(lower)
        lower = torch.where(lower >= self.nbins, lower - self.nbins, lower)
        upper = lower + 1
        upper = torch.where(upper >= self.nbins, upper - self.nbins, upper)
        n_cells = self.cells**2
        cell = self.cell_index.to(lower.dtype)
        lower_mass = magnitude * (1 - upper_share)
        upper_mass = magnitude.mul_(upper_share)
        hist = scatter_two_bins(
            lower.mul_(n_cells).add_(cell).long().flatten(1),
            upper.mul_(n_cells).add_(cell).long().flatten(1),
            lower_mass.flatten(1),
            upper_mass.flatten(1),
            self.nbins * n_cells,
        )
        return hist.div_(self.pool**2).reshape(batch, channels, self.nbins, self.cells, self.cells)

    def compute_authors(self, x: torch.Tensor) -> torch.Tensor:
        """The authors' HOG, kept only to reproduce their runs: x (B, C, H, W) -> (B, C, nbins, H//pool, W//pool).

        As their ``HOGLayer.forward`` (src/model/hog.py) applied per channel in ``_step_dc('full_img_hog')``
        (src/model/self_supervised_module.py): each channel plane is cross-correlated (zero padding 1) with
        the Sobel kernel S = [[1, 0, −1], [2, 0, −2], [1, 0, −1]] (response r0) and Sᵀ (r1); m = √(r0² + r1²),
        t = atan2(r0, r1)/π · nbins (in [−nbins, nbins]); bin ⌊t⌋ mod nbins is SET to m, then bin ⌈t⌉ mod nbins
        gets + (1 − m), so an integer t (e.g. a flat region: atan2(0, 0) = 0) leaves 1 in one bin (up to
        rounding) whatever m is; then pool×pool average pooling (stride pool, the H mod pool last rows / columns
        dropped).

        Wrong as a HOG: the two bins share m and 1 − m (not m·(1 − s) and m·s with s the angle's position
        between the centres), so the shares ignore the angle, can be negative (m > 1) and do not scale with
        the gradient.
        """
        batch, channels, height, width = x.shape
        planes = x.reshape(-1, 1, height, width)
        response = F.conv2d(planes, self.sobel_kernels, padding=1)  # (B·C, 2, H, W)
        magnitude = response.norm(dim=1, keepdim=True)
        position = (torch.atan2(response[:, 0], response[:, 1]) / math.pi * self.nbins)[:, None]
        out = magnitude.new_zeros(planes.shape[0], self.nbins, height, width)
        out.scatter_(1, position.floor().long().remainder(self.nbins), magnitude)
        out.scatter_add_(1, position.ceil().long().remainder(self.nbins), 1 - magnitude)
        pooled = F.avg_pool2d(out, self.pool, stride=self.pool)
        return pooled.reshape(batch, channels, self.nbins, self.cells, self.cells)
