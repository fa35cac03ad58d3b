"""2-D orthonormal DCT-II per channel, optionally truncated to the low frequencies."""

from __future__ import annotations

import math
from typing import Any

import torch

from mvmr.representations.base import Representation, int_param
from mvmr.representations.registry import register_representation


def dct_matrix(size: int, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of the orthonormal DCT-II matrix, (rows, size) float32.

    D[k, n] = s_k·cos(π(2n + 1)k / (2·size)), s_0 = √(1/size), s_k = √(2/size); the full D is orthogonal.
    """
    k = torch.arange(rows, dtype=torch.float64)[:, None]
    n = torch.arange(size, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix.float()


@register_representation
class DCT(Representation):
    """Orthonormal 2-D DCT-II per channel, D·X·Dᵀ: (B, C, H, W) -> (B, C·k·k), laid out (C, k, k).

    k = ``keep`` (the top-left keep×keep lowest frequencies), or H when keep is null (all
    coefficients; the transform then preserves the Euclidean norm). Equals
    ``scipy.fft.dctn(x, type=2, norm='ortho', axes=(-2, -1))`` truncated to [:k, :k].
    For a 3×96×96 input with the defaults: (B, 27648).
    """

    name = "dct"
    param_specs = {"keep": int_param(None, "low frequencies kept per axis (null: all)", minimum=1, optional=True)}
    dim_formula = "C·k² (k = keep, or H)"

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        if self.keep is not None and self.keep > image_size:
            raise self.invalid("keep", f"<= the image size {image_size} or null")
        self.register_buffer("basis", dct_matrix(image_size, self.kept), persistent=False)

    @property
    def kept(self) -> int:
        """Coefficients kept per axis."""
        return self.image_size if self.keep is None else self.keep

    def output_dim(self) -> int:
        return self.in_channels * self.kept**2

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.basis @ x @ self.basis.T
