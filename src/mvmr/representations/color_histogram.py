"""Soft-binned intensity histograms per channel."""

from __future__ import annotations

from typing import Any

import torch

from mvmr.representations.base import Representation, int_param, number_param
from mvmr.representations.binning import linear_bins, scatter_two_bins
from mvmr.representations.registry import register_representation


@register_representation
class ColorHistogram(Representation):
    """Per-channel intensity histogram summing to 1: (B, C, H, W) -> (B, C·bins), laid out (C, bins).

    [low, high] is cut into ``bins`` equal bins of width w; bin k is centred at c_k = low + (k + ½)·w.
    Each pixel is split between its two nearest centres by linear interpolation (a triangular kernel
    of half-width w); values below c_0 or above c_{bins−1} go entirely to the outer bin. Divided by
    H·W. Values exactly at the centres give np.histogram(x, bins, (low, high)) / (H·W). Defaults
    [-3, 3] suit normalised images (about ±3 standard deviations).
    For a 3×96×96 input with the defaults: (B, 96).
    """

    name = "color_histogram"
    param_specs = {
        "bins": int_param(32, "bins per channel", minimum=2),
        "low": number_param(-3.0, "lower end of the binned range (normalised intensity)"),
        "high": number_param(3.0, "upper end of the binned range"),
    }
    dim_formula = "C·bins"

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        if self.high <= self.low:
            raise self.invalid("high", f"> color_histogram.low ({self.low:g})")

    def output_dim(self) -> int:
        return self.in_channels * self.bins

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        width = (self.high - self.low) / self.bins
        values = x.flatten(2).flatten(0, 1)  # (B·C, H·W)
        lower, upper, upper_share = linear_bins((values - self.low) / width - 0.5, self.bins, circular=False)
        hist = scatter_two_bins(lower, upper, 1 - upper_share, upper_share, self.bins)
        return hist.div_(values.shape[1]).reshape(*x.shape[:2], self.bins)
