"""Linear (soft) binning shared by the histogram representations (HOG orientations, colour intensities)."""

from __future__ import annotations

from typing import Tuple

import torch


def linear_bins(
    position: torch.Tensor, nbins: int, *, circular: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split each value between its two nearest bin centres by linear interpolation.

    position (...): value in bin units, the centre of bin k at k. Returns (lower, upper, upper_share),
    each (...): the two bins (int64) and the share of the upper one in [0, 1); the lower gets
    1 − upper_share. ``circular``: positions in [0, nbins], bin nbins is bin 0 (e.g. angles mod π).
    Otherwise positions are clamped to [0, nbins − 1] (values beyond the outer centres go to the outer bin).
    """
    if circular:
        floor = position.floor()
        upper_share = position - floor
        lower = floor.long().remainder(nbins)
        return lower, (lower + 1).remainder(nbins), upper_share
    position = position.clamp(0, nbins - 1)
    lower = position.floor().clamp(max=nbins - 2)
    upper_share = position - lower
    lower = lower.long()
    return lower, lower + 1, upper_share


def scatter_two_bins(
    lower: torch.Tensor, upper: torch.Tensor, lower_mass: torch.Tensor, upper_mass: torch.Tensor, length: int
) -> torch.Tensor:
    """Histograms (N, length) from per-element targets lower, upper (N, P) int64 and masses (N, P)."""
    out = lower_mass.new_zeros(lower.shape[0], length)
    out.scatter_add_(1, lower, lower_mass)
    out.scatter_add_(1, upper, upper_mass)
    return out
