"""Kymatio's 2-D scattering transform (torch frontend, ``out_type='array'``), reorganised for speed.

:class:`Scattering2D` computes what ``kymatio.scattering2d.frontend.torch_frontend.ScatteringTorch2D`` computes,
from the same filters (kymatio's ``filter_bank`` on its padded grid, its reflect padding, its output order), with
the same sequence of linear maps and moduli; only the arithmetic is organised differently, so the outputs agree to
float32 rounding (tests/representations/test_representation_speed.py checks them against kymatio's frontend itself):

* every filter product is batched over the planes (B·C images) and the L angles, written once, and fused with the
  Fourier-domain subsampling (kymatio: ``subsample_fourier``, the mean of the k² aliased blocks, here accumulated
  block by block into one output instead of materialising the full-size product and reducing a 6-d view);
* the spectrum of a real map (the padded input, the first-order moduli) is one real FFT (``rfft2``) completed by
  Hermitian symmetry, not a complex FFT of a zero-imaginary copy;
* the complex modulus is sqrt(re² + im²) on the real view (kymatio's formula) in place;
* the low-pass φ_J, its subsampling by 2^(J−j), the inverse FFT, the real part and the unpadding, a linear map from
  a real (Q, Q) map to the (Q/k − 2)² output, is applied as two small matrix products ``A_r · U · A_cᵀ``: kymatio's φ
  levels are real, even and separable (an isotropic Gaussian: φ[a, b] = r[a]·c[b] to float32 rounding, checked at
  construction), so the map factorises into one 1-D map per axis, each built in float64 by applying the 1-D
  version of kymatio's steps (multiply by r, average the k aliases, inverse FFT, real part, drop the border sample)
  to the unit vectors. Were a φ level not separable (never for kymatio's filter bank), that level falls back to
  kymatio's own sequence (full FFT, product, alias mean, inverse FFT);
* planes go through in chunks small enough (``chunk_bytes``) that the intermediates stay in cache.

The FFTs are the same in number and size as kymatio's; what goes is the memory traffic around them (full-size
products, 6-d reductions, complex copies of real maps) and its per-call Python work. benchmarks/step_time.py times
it inside the training step.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

# Kymatio's own filter bank, padding size and padding module (the exact ones its torch frontend uses).
from kymatio.scattering2d.backend.torch_backend import Pad
from kymatio.scattering2d.filter_bank import filter_bank, gabor_2d, periodize_filter_fft
from kymatio.scattering2d.utils import compute_padding
from scipy.fft import fft2
from torch import nn

SEPARABLE_TOLERANCE = 1e-6  # max |φ − r cᵀ| / max |φ| below which a φ level is applied as two 1-D maps
# Bytes of the largest complex intermediate per chunk of planes: on the CPU small enough to stay in cache; on a GPU
# large, because each chunk launches a few hundred kernels (at 224 px the CPU size would mean one plane per chunk).
CHUNK_BYTES = {"cpu": 10 << 20}
ACCELERATOR_CHUNK_BYTES = 1 << 30


def scattering_channels(J: int, L: int, max_order: int) -> int:
    """Coefficients per input channel: 1 + J·L (order 1) + L²·J·(J−1)/2 (order 2)."""
    return 1 + J * L + (L * L * J * (J - 1) // 2 if max_order == 2 else 0)


def rank_one_factors(phi: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """phi (M, N) -> (r, c, relative error) with phi ≈ outer(r, c) (leading singular pair, float64)."""
    u, s, vt = np.linalg.svd(phi.astype(np.float64))
    r, c = u[:, 0] * math.sqrt(s[0]), vt[0] * math.sqrt(s[0])
    if r[np.argmax(np.abs(r))] < 0:
        r, c = -r, -c
    scale = float(np.abs(phi).max()) or 1.0
    return r, c, float(np.abs(np.outer(r, c) - phi).max()) / scale


def lowpass_matrix(phi_1d: np.ndarray, k: int) -> np.ndarray:
    """(Q/k − 2, Q) float64: the 1-D version of kymatio's low-pass path applied to each unit vector e_m of length Q:
    FFT, times ``phi_1d``, mean of the k aliases (subsample_fourier), inverse FFT, real part, unpad [1:-1]."""
    q = phi_1d.shape[0]
    spectrum = np.fft.fft(np.eye(q), axis=0) * phi_1d[:, None]
    folded = spectrum.reshape(k, q // k, q).mean(axis=0)
    return np.fft.ifft(folded, axis=0).real[1:-1]


def full_spectrum(u: torch.Tensor) -> torch.Tensor:
    """fft2 of a real (..., M, N) tensor: ``rfft2`` and, for the columns it leaves out, the Hermitian symmetry
    X[a, b] = conj(X[−a mod M, N − b])."""
    m, n = u.shape[-2:]
    half = torch.fft.rfft2(u)
    out = half.new_empty(u.shape)
    h = n // 2 + 1
    out[..., :h] = half
    if n > h:
        mirrored = half[..., 1 : n - h + 1].flip(-1, -2).conj()  # rows m−1 .. 0, columns n−h .. 1
        out[..., 1:, h:] = mirrored[..., : m - 1, :]  # row a >= 1 takes row m − a
        out[..., 0, h:] = mirrored[..., m - 1, :]  # row 0 takes row 0
    return out


def modulus_(w: torch.Tensor) -> torch.Tensor:
    """|w| = sqrt(re² + im²) (kymatio's formula) of a complex tensor as a new real tensor; squares w's parts in
    place (w is overwritten)."""
    parts = torch.view_as_real(w)
    parts.mul_(parts)
    return torch.add(parts[..., 0], parts[..., 1]).sqrt_()


def filter_and_subsample(spectra: torch.Tensor, filter_blocks: List[torch.Tensor], k: int) -> torch.Tensor:
    """Complex (c, L1, F, Q1/k, Q2/k): the mean of the k² aliased blocks of spectra[:, l] · filter[f] (kymatio's
    ``cdgmm`` then ``subsample_fourier``), accumulated block by block into one output per filter.

    ``spectra``: the real view (c, L1, Q1, Q2, 2) of complex spectra; ``filter_blocks``: the k² blocks (row-major)
    of the (F, Q1, Q2) real filters, each (F, Q1/k, Q2/k, 2) contiguous, repeated for the real and imaginary parts
    and scaled by 1/k² (a power of two: exact).
    """
    c, l1, q1, q2, _ = spectra.shape
    h1, h2 = q1 // k, q2 // k
    blocks = [spectra[..., i * h1 : (i + 1) * h1, j * h2 : (j + 1) * h2, :] for i in range(k) for j in range(k)]
    n_filters = filter_blocks[0].shape[0]
    out = spectra.new_empty(c, l1, n_filters, h1, h2, 2)
    for f in range(n_filters):
        target = out[:, :, f]
        torch.mul(blocks[0], filter_blocks[0][f], out=target)
        for block, weights in zip(blocks[1:], filter_blocks[1:]):
            target.addcmul_(block, weights[f])
    return torch.view_as_complex(out)


class Scattering2D(nn.Module):
    """(..., M, N) -> (..., K, M', N') with K = :func:`scattering_channels`, M' = M // 2^J (unpadded), like kymatio's
    ``ScatteringTorch2D(J, (M, N), L, max_order)``: S0, then the J·L first-order paths (j1, θ1), then the
    second-order paths (j1, θ1, j2 > j1, θ2) in kymatio's order. Filters are non-persistent buffers.

    ``chunk_bytes``: planes per chunk chosen so that the largest complex intermediate holds about this many bytes
    (None: ``CHUNK_BYTES`` for the input's device type, else ``ACCELERATOR_CHUNK_BYTES``).
    ``subsample_second_order`` (an approximation, off by default): each second-order modulus
    |(|x ⋆ ψ_{j1}| ⋆ ψ_{j2})↓2^J| is taken at the output resolution 2^J instead of 2^j2 and low-passed there by φ_J
    periodised to that resolution (kymatio's ``periodize_filter_fft`` at resolution J), instead of low-passed at
    2^j2 and then subsampled by 2^(J−j2): the second-order FFTs, moduli and low-passes run on 4^(J−j2) times fewer
    samples. S0 and the first order are unchanged (bitwise). The second-order coefficients then differ from
    kymatio's by the aliasing of the modulus's high frequencies before the low-pass
    (tests/representations/test_representation_speed.py bounds the change and its effect on the dCor terms on
    natural images).
    """

    def __init__(
        self,
        J: int,
        shape: Tuple[int, int],
        L: int = 8,
        max_order: int = 2,
        chunk_bytes: Optional[int] = None,
        subsample_second_order: bool = False,
    ):
        super().__init__()
        self.subsample_second_order = subsample_second_order
        m, n = shape
        if 2**J > m or 2**J > n:
            raise ValueError(f"the image size {shape} must be at least 2^J = {2**J}")
        if max_order not in (1, 2):
            raise ValueError(f"max_order must be 1 or 2, got {max_order}")
        self.J, self.L, self.max_order, self.shape = J, L, max_order, (m, n)
        self.chunk_bytes = chunk_bytes
        mp, np_ = compute_padding(m, n, J)
        self.padded = (mp, np_)
        self.pad = Pad([(mp - m) // 2, (mp - m + 1) // 2, (np_ - n) // 2, (np_ - n + 1) // 2], [m, n])
        bank = filter_bank(mp, np_, J, L)
        phi_levels = list(bank["phi"]["levels"])
        if subsample_second_order and max_order == 2:  # φ at resolution J too, as kymatio's filter_bank builds levels
            phi_levels.append(periodize_filter_fft(np.real(fft2(gabor_2d(mp, np_, 0.8 * 2 ** (J - 1), 0, 0))), J))
        # low-pass φ at resolutions 0..J−1 (and J): two 1-D matrices when separable, else the 2-D filter
        self.separable: List[bool] = []
        for res, phi in enumerate(phi_levels):
            r, c, error = rank_one_factors(phi)
            k = 2 ** (J - res)
            separable = error <= SEPARABLE_TOLERANCE
            self.separable.append(separable)
            rows = torch.from_numpy(lowpass_matrix(r, k)).float() if separable else torch.empty(0)
            cols_t = torch.from_numpy(lowpass_matrix(c, k).T.copy()).float() if separable else torch.empty(0)
            self.register_buffer(f"lowpass_rows{res}", rows, persistent=False)  # (Q1/k − 2, Q1)
            self.register_buffer(f"lowpass_cols_t{res}", cols_t, persistent=False)  # (Q2, Q2/k − 2)
            self.register_buffer(f"phi{res}", torch.from_numpy(np.ascontiguousarray(phi)), persistent=False)
        # ψ_{j, θ} at each resolution kymatio keeps for it, stacked over θ, repeated for the real and imaginary parts
        for j in range(J):
            for res, _ in enumerate(bank["psi"][j * L]["levels"]):
                stacked = torch.stack([torch.from_numpy(bank["psi"][j * L + t]["levels"][res]) for t in range(L)])
                self.register_buffer(
                    f"psi{j}_{res}", stacked[..., None].expand(*stacked.shape, 2).contiguous(), persistent=False
                )  # (L, Q1, Q2, 2)
        self._blocks: Dict[tuple, List[torch.Tensor]] = {}  # the filters cut for filter_and_subsample (a cache)

    def extra_repr(self) -> str:
        return f"J={self.J}, shape={self.shape}, L={self.L}, max_order={self.max_order}" + (
            ", subsample_second_order=True" if self.subsample_second_order else ""
        )

    def output_channels(self) -> int:
        return scattering_channels(self.J, self.L, self.max_order)

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ...: drop the cut filters, recut from the buffers
        self._blocks = {}
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ pieces
    def _filter_blocks(self, j: int, res: int, k: int, like: torch.Tensor) -> List[torch.Tensor]:
        """ψ_{j, ·} at resolution ``res`` cut into its k² aliased blocks and scaled by 1/k², in ``like``'s dtype."""
        key = (j, res, k, like.dtype)
        if key not in self._blocks:
            filters = getattr(self, f"psi{j}_{res}").to(like.dtype) * (1.0 / (k * k))
            h1, h2 = filters.shape[1] // k, filters.shape[2] // k
            self._blocks[key] = [
                filters[:, a * h1 : (a + 1) * h1, b * h2 : (b + 1) * h2].contiguous()
                for a in range(k)
                for b in range(k)
            ]
        return self._blocks[key]

    def _lowpass_real(self, u: torch.Tensor, res: int) -> torch.Tensor:
        """Real (..., Q1, Q2) maps at resolution ``res`` -> their low-passed, subsampled, unpadded coefficients."""
        if not self.separable[res]:
            return self._lowpass_spectrum(full_spectrum(u), res)
        rows = getattr(self, f"lowpass_rows{res}").to(u.dtype)
        cols_t = getattr(self, f"lowpass_cols_t{res}").to(u.dtype)
        *batch, q1, q2 = u.shape
        left = torch.matmul(rows, u.reshape(-1, q1, q2))  # A_r · U: (b, M', Q2)
        out = left.reshape(-1, q2) @ cols_t  # (A_r · U) · A_cᵀ
        return out.reshape(*batch, rows.shape[0], cols_t.shape[1])

    def _lowpass_spectrum(self, spectrum: torch.Tensor, res: int) -> torch.Tensor:
        """Kymatio's own low-pass path (any φ): product, alias mean, inverse FFT, real part, unpad."""
        phi = getattr(self, f"phi{res}").to(spectrum.real.dtype)
        k = 2 ** (self.J - res)
        *batch, q1, q2 = spectrum.shape
        folded = (spectrum * phi).reshape(*batch, k, q1 // k, k, q2 // k).mean(dim=(-4, -2))
        return torch.fft.ifft2(folded).real[..., 1:-1, 1:-1]

    # ------------------------------------------------------------------ forward
    def planes_per_chunk(self, device: torch.device) -> int:
        """How many (M, N) planes go through together on ``device`` (see ``chunk_bytes``)."""
        budget = self.chunk_bytes or CHUNK_BYTES.get(device.type, ACCELERATOR_CHUNK_BYTES)
        area = self.padded[0] * self.padded[1]
        per_plane = 8 * max(self.L * area, self.L * self.L * area // 4 if self.max_order == 2 else 0)
        return max(1, budget // per_plane)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.shape:
            raise ValueError(f"scattering expects (..., {self.shape[0]}, {self.shape[1]}) inputs, got {tuple(x.shape)}")
        planes = x.reshape(-1, *self.shape)
        side = (self.padded[0] // 2**self.J - 2, self.padded[1] // 2**self.J - 2)
        out = x.new_empty(planes.shape[0], self.output_channels(), *side)
        step = self.planes_per_chunk(x.device)
        for start in range(0, planes.shape[0], step):
            self._chunk(planes[start : start + step], out[start : start + step])
        return out.reshape(*x.shape[:-2], *out.shape[1:])

    def _chunk(self, planes: torch.Tensor, out: torch.Tensor) -> None:
        J, L = self.J, self.L
        u = self.pad(planes.contiguous())[..., 0]
        out[:, 0] = self._lowpass_real(u, 0)
        spectrum = torch.view_as_real(full_spectrum(u))[:, None]  # (c, 1, Mp, Np, 2)
        second = 1 + J * L  # the next second-order channel
        for j1 in range(J):
            k = 2**j1
            first = filter_and_subsample(spectrum, self._filter_blocks(j1, 0, k, u), k)[:, 0]
            u1 = modulus_(torch.fft.ifft2(first))  # (c, L, Mp / 2^j1, Np / 2^j1)
            out[:, 1 + j1 * L : 1 + (j1 + 1) * L] = self._lowpass_real(u1, j1)
            if self.max_order < 2 or j1 == J - 1:
                continue
            spectrum1 = torch.view_as_real(full_spectrum(u1))
            per_theta = (J - 1 - j1) * L  # second-order paths per (j1, θ1)
            block = out[:, second : second + L * per_theta].unflatten(1, (L, per_theta))
            for j2 in range(j1 + 1, J):
                res = J if self.subsample_second_order else j2  # the resolution of the second-order modulus
                k = 2 ** (res - j1)
                w2 = filter_and_subsample(spectrum1, self._filter_blocks(j2, j1, k, u), k)
                u2 = modulus_(torch.fft.ifft2(w2))  # (c, L θ1, L θ2, Mp / 2^res, Np / 2^res)
                offset = (j2 - j1 - 1) * L
                block[:, :, offset : offset + L] = self._lowpass_real(u2, res)
            second += L * per_theta


__all__ = ["Scattering2D", "scattering_channels", "full_spectrum", "lowpass_matrix", "rank_one_factors"]
