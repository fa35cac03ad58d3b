"""A bank of complex Gabor filters; pooled response magnitudes per channel, scale and orientation."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from mvmr.representations.base import Representation, int_param, number_param
from mvmr.representations.registry import register_representation

N_STDS = 3  # kernel half-size in envelope standard deviations


def gabor_sigma(wavelength: float, bandwidth: float) -> float:
    """Envelope std (px) of a Gabor filter with a half-magnitude bandwidth of ``bandwidth`` octaves."""
    return wavelength / math.pi * math.sqrt(math.log(2) / 2) * (2**bandwidth + 1) / (2**bandwidth - 1)


def gabor_kernel(wavelength: float, theta: float, sigma: float, radius: int) -> torch.Tensor:
    """Complex Gabor kernel (2r+1, 2r+1) complex128, rows = y (down), columns = x.

    g(x, y) = exp(−(x² + y²) / (2σ²)) / (2πσ²) · exp(2πi·x_θ / λ), x_θ = x·cos θ + y·sin θ: the wave
    runs along θ (θ = 0: along the columns, i.e. vertical stripes). Same values as
    ``skimage.filters.gabor_kernel(1/λ, θ, sigma_x=σ, sigma_y=σ)`` on the common support.
    """
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    along = x * math.cos(theta) + y * math.sin(theta)
    envelope = torch.exp(-(x**2 + y**2) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    return envelope * torch.exp(1j * (2 * math.pi / wavelength) * along)


@register_representation
class Gabor(Representation):
    """Gabor energy: (B, C, H, W) -> (B, C·scales·orientations·(H//pool)·(W//pool)), laid out
    (C, S, O, H//pool, W//pool).

    Scale s has wavelength λ_s = wavelength·2^s px, orientation o has θ_o = o·π/orientations.
    Each channel is correlated (replicate padding) with the real and imaginary parts of each kernel
    (:func:`gabor_kernel`, σ from ``bandwidth``, half-size ⌈3σ⌉, so 9, 15 and 29 px wide by
    default); the magnitude √(re² + im²) is average-pooled over pool×pool cells.
    For a 3×96×96 input with the defaults: (B, 20736).
    """

    name = "gabor"
    param_specs = {
        "scales": int_param(3, "wavelengths, doubling from `wavelength`", minimum=1),
        "orientations": int_param(4, "orientations over [0, π)", minimum=1),
        "wavelength": number_param(2.0, "smallest wavelength in px", greater_than=0),
        "bandwidth": number_param(1.0, "frequency bandwidth in octaves (sets the envelope width)", greater_than=0),
        "pool": int_param(4, "average pooling cell size in px", minimum=1),
    }
    dim_formula = "C·scales·orientations·(H//pool)·(W//pool)"

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        if self.pool > image_size:
            raise self.invalid("pool", f"<= the image size {image_size}")
        thetas = [math.pi * o / self.orientations for o in range(self.orientations)]
        for s, wavelength in enumerate(self.wavelengths):
            sigma = gabor_sigma(wavelength, self.bandwidth)
            radius = max(1, math.ceil(N_STDS * sigma))
            bank = torch.stack([gabor_kernel(wavelength, theta, sigma, radius) for theta in thetas])
            weights = torch.cat([bank.real, bank.imag]).unsqueeze(1).float()  # (2·O, 1, k, k)
            self.register_buffer(f"kernels_{s}", weights, persistent=False)

    @property
    def wavelengths(self) -> list[float]:
        return [self.wavelength * 2**s for s in range(self.scales)]

    def output_dim(self) -> int:
        return self.in_channels * self.scales * self.orientations * (self.image_size // self.pool) ** 2

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        planes = x.reshape(-1, 1, *x.shape[-2:])
        pooled = []
        for s in range(self.scales):
            kernels = getattr(self, f"kernels_{s}")
            radius = kernels.shape[-1] // 2
            response = F.conv2d(F.pad(planes, (radius,) * 4, mode="replicate"), kernels)
            real, imag = response.split(self.orientations, dim=1)
            pooled.append(F.avg_pool2d(torch.hypot(real, imag), self.pool))
        out = torch.stack(pooled, dim=1)  # (B·C, S, O, H//pool, W//pool)
        return out.reshape(*x.shape[:2], *out.shape[1:])
