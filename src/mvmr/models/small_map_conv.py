"""Convolutions on tiny feature maps as one matrix product (same function, faster on the CPU).

A k x k convolution whose input map has at most k²/2 positions (the last ResNet stage on 28-32 px images: 2x2 or
1x1 maps) spends most of its multiply-adds on zero padding, and oneDNN's backward for such maps is slow (4-7x its
forward on the Fashion-MNIST config). Written as a dense matrix from every input position to every output
position, the same convolution is one GEMM with at most half the direct form's multiply-adds:

    y[b, (q, o)] = sum_{(p, c)} x[b, (p, c)] * D[(p, c), (q, o)],   D[(p, c), (q, o)] = W[o, c, tap(p, q)]

where ``tap(p, q)`` is the kernel tap that links input position p to output position q (none: a zero). D is
built from W by one product with a fixed 0/1 selection matrix, so autograd's backward is plain GEMMs too.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn


@lru_cache(maxsize=None)
def tap_selection(
    kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], in_hw: tuple[int, int]
) -> torch.Tensor:
    """0/1 matrix (P_in * P_out, kh * kw): row (p, q) selects the tap linking input position p to output q.

    Positions are row-major over the map; rows whose pair no tap links are all zero. float32, CPU.
    """
    (kh, kw), (sh, sw), (ph, pw), (h, w) = kernel, stride, padding, in_hw
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    select = torch.zeros(h, w, out_h, out_w, kh * kw)
    for iy in range(h):
        for ix in range(w):
            for oy in range(out_h):
                for ox in range(out_w):
                    ky, kx = iy - oy * sh + ph, ix - ox * sw + pw
                    if 0 <= ky < kh and 0 <= kx < kw:
                        select[iy, ix, oy, ox, ky * kw + kx] = 1.0
    return select.reshape(h * w * out_h * out_w, kh * kw)


def conv2d_as_matmul(
    x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding)`` (no bias, groups 1, dilation 1) as one GEMM.

    x: (B, C, H, W), weight: (O, C, kh, kw) -> (B, O, H_out, W_out), laid out channels_last (the (B, C, H, W)
    view of a (B, H_out, W_out, O) buffer). The dense matrix has (H W C) x (H_out W_out O) entries, so this is
    meant for maps of a few positions. Under CPU autocast the products run in the autocast dtype, as conv2d's do.
    """
    batch, channels, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    select = tap_selection((kh, kw), tuple(stride), tuple(padding), (h, w))
    out_h, out_w = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    p_in, p_out = h * w, out_h * out_w
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
    with torch.autocast("cpu", enabled=False):
        taps = weight.to(dtype).permute(2, 3, 1, 0).reshape(kh * kw, channels * out_channels)
        pairs = select.to(device=weight.device, dtype=dtype) @ taps  # (p_in * p_out, C * O)
        dense = pairs.view(p_in, p_out, channels, out_channels).transpose(1, 2)
        dense = dense.reshape(p_in * channels, p_out * out_channels)  # rows (p, c), columns (q, o)
        rows = x.to(dtype).permute(0, 2, 3, 1).reshape(batch, p_in * channels)
        out = rows @ dense
    return out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) that runs as ``conv2d_as_matmul`` on the CPU when the input
    map has at most kh * kw / 2 positions, i.e. when the dense form does at most half the direct form's
    multiply-adds (P_in * P_out * C * O against P_out * kh * kw * C * O): faster there, slower on 3x3 maps, where
    the counts are equal (benchmarks/results/speed.md records both). Everything else (larger maps, CUDA, groups,
    dilation, bias, other padding modes) takes ``nn.Conv2d``'s path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_matmul(x):
            return conv2d_as_matmul(x, self.weight, self.stride, self.padding)
        return super().forward(x)

    def uses_matmul(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the matrix-product path."""
        kh, kw = self.kernel_size
        return (
            x.device.type == "cpu"
            and x.dim() == 4
            and self.groups == 1
            and self.bias is None
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and 2 * x.shape[-2] * x.shape[-1] <= kh * kw
        )


def use_small_map_matmul(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn every plain ``nn.Conv2d`` inside ``module`` into a ``SmallMapConv2d`` sharing its parameters, in
    place (state-dict keys unchanged); returns ``module``."""
    if enabled:
        for child in module.modules():
            if type(child) is nn.Conv2d:
                child.__class__ = SmallMapConv2d  # same attributes and parameters; only forward changes
    return module
