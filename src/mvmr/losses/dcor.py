"""Sample distance correlation and distance covariance (Székely, Rizzo & Bakirov 2007) as
differentiable torch loss terms.

Shapes: ``x`` (B, p) and ``y`` (B, q) with any p, q; inputs with more dims are flattened from dim 1.
Everything is computed in float32, or float64 when an input is float64, with autocast disabled and without
TensorFloat-32 matrix products (:func:`mvmr.numerics.exact_float32`), because the statistic is a ratio of sums
over B² products and the distances cancel (n_i + n_j − 2 G_ij), which half precision or TF32 cannot hold.

Pairwise distances come from a Gram matrix accumulated over column chunks, so a (B, D) input with
huge D (flattened images: D ~ 10⁵) costs O(B²) extra memory, never a (B, B, D) broadcast.
"""

from __future__ import annotations

import threading
from typing import Iterator, Optional, Tuple

import torch

from mvmr.errors import ConfigError
from mvmr.numerics import exact_float32

# Auto chunk: about max(B², 4 Mi) elements per chunk of columns (16 MiB in float32 for B <= 2048).
_MIN_CHUNK_ELEMENTS = 1 << 22


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (half/bfloat16/integer inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def as_batch_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, D): flatten every dim after the first (a view when possible)."""
    if x.dim() == 0:
        raise ValueError("distance correlation needs a batch tensor of shape (B, ...), got a scalar")
    return x.reshape(x.shape[0], -1)


def auto_chunk_size(batch: int) -> int:
    """Number of columns per Gram chunk: a (B, chunk) slice holds about max(B², 4 Mi) elements."""
    return max(1, max(batch * batch, _MIN_CHUNK_ELEMENTS) // max(batch, 1))


_WORKSPACES = threading.local()  # per thread: (device, dtype) -> a reusable 1-D buffer


def _workspace(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 1-D buffer of ``numel`` elements, reused by every later call from this thread with the same device
    and dtype (grown when too small).

    On the CPU a fresh 16 MiB tensor per Gram chunk is page-faulted in anew when the allocator has returned the
    previous one to the system: with 96-px ScatNet rows (140k columns, B=64) that churn cost more than the
    Gram products themselves (benchmarks/results/speed.md). Holds the largest chunk asked for (with the auto chunk size,
    about max(B², 4 Mi) elements).
    """
    buffers = getattr(_WORKSPACES, "buffers", None)
    if buffers is None:
        buffers = _WORKSPACES.buffers = {}
    key = (device, dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]


def _centred_chunks(x: torch.Tensor, dtype: torch.dtype, chunk_size: int) -> Iterator[torch.Tensor]:
    """Column chunks (B, c) of ``x``, upcast to ``dtype`` and centred over the batch.

    Centring does not change distances and keeps the Gram formula accurate for features whose mean
    is large next to their spread (e.g. non-negative histograms).
    Each chunk is written into one reusable workspace: use it before asking for the next one.
    """
    batch = x.shape[0]
    workspace = _workspace(batch * min(chunk_size, x.shape[1]), dtype, x.device)
    for chunk in x.split(chunk_size, dim=1):
        centred = workspace[: chunk.numel()].view(chunk.shape)
        if chunk.dtype == dtype:  # no upcast: centre straight into the workspace (one pass fewer over the chunk)
            yield torch.sub(chunk, chunk.mean(dim=0, keepdim=True), out=centred)
        else:  # upcast first (a mixed-dtype subtraction is slower than the copy), then centre in place
            centred.copy_(chunk)
            yield centred.sub_(centred.mean(dim=0, keepdim=True))


class _SquaredDistances(torch.autograd.Function):
    """d²_ij = ‖x_i − x_j‖² for x (B, D) -> (B, B), from a Gram matrix accumulated over column chunks.

    Saves only ``x`` for backward; the gradient is ∂L/∂x = 2 (diag(S·1) − S) x with S = G + Gᵀ
    (G = ∂L/∂d², zero diagonal), also computed chunk by chunk. Extra memory: O(B² + B·chunk).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype, chunk_size: int) -> torch.Tensor:
        with exact_float32(x.device):
            batch = x.shape[0]
            gram = torch.zeros(batch, batch, dtype=dtype, device=x.device)
            for chunk in _centred_chunks(x, dtype, chunk_size):
                gram.addmm_(chunk, chunk.T)
            sq_norms = gram.diagonal().clone()
            sq_dist = gram.mul_(-2).add_(sq_norms[:, None]).add_(sq_norms[None, :])
            sq_dist.clamp_min_(0).fill_diagonal_(0)  # negatives are rounding only: true d² >= 0
        ctx.save_for_backward(x)
        ctx.dtype, ctx.chunk_size = dtype, chunk_size
        return sq_dist

    @staticmethod
    def backward(ctx, grad_sq_dist: torch.Tensor):
        (x,) = ctx.saved_tensors
        with exact_float32(x.device):
            sym = grad_sq_dist.to(ctx.dtype)
            sym = sym + sym.T
            sym.fill_diagonal_(0)
            laplacian = torch.diag(sym.sum(dim=1)) - sym
            laplacian.mul_(2)
            grad_x = torch.empty_like(x)
            start = 0
            for chunk in _centred_chunks(x, ctx.dtype, ctx.chunk_size):
                stop = start + chunk.shape[1]
                grad_x[:, start:stop] = laplacian @ chunk  # L·1 = 0, so centring changes nothing exactly
                start = stop
        return grad_x, None, None


def safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """sqrt(t) where t > 0, else 0; the gradient is 0 (not inf/NaN) where t <= 0. NaN stays NaN, so a
    non-finite input reaches the loss (and its check) instead of silently becoming a zero distance."""
    positive = t > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, t, torch.ones_like(t))), t.clamp(max=0) * 0)


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den != 0, else 0, with a finite gradient everywhere."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


def pairwise_distances(
    x: torch.Tensor, chunk_size: Optional[int] = None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Euclidean distance matrix: x (B, ...) -> (B, B), zero diagonal, float32 or float64.

    Coinciding rows (the diagonal, exact duplicates) get distance 0 and a zero (sub)gradient; other
    distances are not clamped, so their gradient is the exact unit vector (x_i − x_j)/‖x_i − x_j‖.
    Distances come from the Gram formula on batch-centred columns, accurate to about
    sqrt(eps)·‖x_i − x̄‖ (float32: ~3e-4 relative) for nearly coinciding rows.
    ``chunk_size``: columns per Gram chunk (default: :func:`auto_chunk_size`).
    """
    x = as_batch_matrix(x)
    dtype = dtype or compute_dtype(x)
    chunk_size = chunk_size or auto_chunk_size(x.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of columns, got {chunk_size}")
    with exact_float32(x.device):
        return safe_sqrt(_SquaredDistances.apply(x, dtype, chunk_size))


def double_centre(a: torch.Tensor) -> torch.Tensor:
    """A_ij = a_ij − ā_i· − ā_·j + ā_·· for a (B, B) distance matrix (V-statistic centring)."""
    return a - a.mean(dim=1, keepdim=True) - a.mean(dim=0, keepdim=True) + a.mean()


def u_centre(a: torch.Tensor) -> torch.Tensor:
    """U-centring of a (B, B) distance matrix (B >= 4), zero diagonal:

    Ã_ij = a_ij − a_i·/(B−2) − a_·j/(B−2) + a_··/((B−1)(B−2)) for i ≠ j (a_i· etc. are sums).
    """
    n = a.shape[0]
    centred = (
        a - a.sum(dim=1, keepdim=True) / (n - 2) - a.sum(dim=0, keepdim=True) / (n - 2) + a.sum() / ((n - 1) * (n - 2))
    )
    return centred * (1 - torch.eye(n, dtype=a.dtype, device=a.device))


def check_unbiased_batch(batch: int) -> None:
    """The U-centred estimator divides by (B−2)(B−3)·…: it needs B >= 4."""
    if batch < 4:
        raise ConfigError(
            f"the bias-corrected dCor / dCov² needs at least 4 samples per batch, got {batch}; "
            "use a larger batch or set loss.unbiased=false"
        )


def centred_distances(
    x: torch.Tensor, unbiased: bool = False, chunk_size: Optional[int] = None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """x (B, ...) -> the (B, B) double-centred (or U-centred when ``unbiased``) distance matrix.

    Compute it once per tensor and pair it with several others via :func:`correlation_from_centred`
    or :func:`covariance_from_centred`.
    """
    if unbiased:
        check_unbiased_batch(x.shape[0])
    with exact_float32(x.device):
        distances = pairwise_distances(x, chunk_size, dtype)
        return u_centre(distances) if unbiased else double_centre(distances)


def correlation_from_centred(a: torch.Tensor, b: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """dCor (V-statistic) or u_dCor² (``unbiased``) from two centred (B, B) matrices -> scalar."""
    if a.shape != b.shape:
        raise ValueError(f"distance correlation needs paired samples, got batch sizes {a.shape[0]} and {b.shape[0]}")
    with exact_float32(a.device):
        # Normalisations (1/B² or 1/(B(B−3))) cancel in the ratio.
        cov_ab, var_a, var_b = (a * b).sum(), (a * a).sum(), (b * b).sum()
        dcor_sqr = safe_divide(cov_ab, safe_sqrt(var_a) * safe_sqrt(var_b))
        return dcor_sqr if unbiased else safe_sqrt(dcor_sqr)


def covariance_from_centred(a: torch.Tensor, b: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """dCov² from two centred (B, B) matrices of :func:`centred_distances` (same ``unbiased``) -> scalar.

    V-statistic: mean_ij A_ij B_ij. ``unbiased``: Σ_{i≠j} Ã_ij B̃_ij / (B(B−3)) (the U-centred
    matrices have a zero diagonal, so the sum runs over every entry).
    """
    if a.shape != b.shape:
        raise ValueError(f"distance covariance needs paired samples, got batch sizes {a.shape[0]} and {b.shape[0]}")
    n = a.shape[0]
    if unbiased:
        check_unbiased_batch(n)
    with exact_float32(a.device):
        return (a * b).sum() / (n * (n - 3) if unbiased else n * n)


def distance_correlation(
    x: torch.Tensor, y: torch.Tensor, unbiased: bool = False, chunk_size: Optional[int] = None
) -> torch.Tensor:
    """Sample distance correlation between x (B, p) and y (B, q) -> scalar tensor.

    ``unbiased=False``: the V-statistic dCor = sqrt(dCov²(x,y) / sqrt(dVar²(x)·dVar²(y))) in [0, 1]
    (what ``dcor.distance_correlation`` computes); 0 when either distance variance is 0.
    ``unbiased=True``: the bias-corrected (U-centred) estimator of dCor² (what
    ``dcor.u_distance_correlation_sqr`` computes). It is NOT square-rooted and can be slightly
    negative for (nearly) independent samples; it needs B >= 4.
    The result is float32 (float64 if an input is float64), also under autocast.
    """
    a, b = _centred_pair(x, y, unbiased, chunk_size, "distance correlation")
    return correlation_from_centred(a, b, unbiased)


def distance_covariance_sqr(
    x: torch.Tensor, y: torch.Tensor, unbiased: bool = False, chunk_size: Optional[int] = None
) -> torch.Tensor:
    """Squared sample distance covariance between x (B, p) and y (B, q) -> scalar tensor.

    ``unbiased=False``: the V-statistic dCov² = mean_ij A_ij B_ij >= 0 of the double-centred distance
    matrices (what ``dcor.distance_covariance_sqr`` computes).
    ``unbiased=True``: the bias-corrected estimator Σ_{i≠j} Ã_ij B̃_ij / (B(B−3)) of the U-centred
    matrices (what ``dcor.u_distance_covariance_sqr`` computes); it can be slightly negative for
    (nearly) independent samples and needs B >= 4.
    Not bounded: dCov²(a·x, b·y) = |a|·|b|·dCov²(x, y). The result is float32 (float64 if an input
    is float64), also under autocast.
    """
    a, b = _centred_pair(x, y, unbiased, chunk_size, "distance covariance")
    return covariance_from_centred(a, b, unbiased)


def _centred_pair(
    x: torch.Tensor, y: torch.Tensor, unbiased: bool, chunk_size: Optional[int], statistic: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two centred distance matrices of a paired sample, in one common compute dtype."""
    x, y = as_batch_matrix(x), as_batch_matrix(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{statistic} needs paired samples, got batch sizes {x.shape[0]} and {y.shape[0]}")
    dtype = compute_dtype(x, y)
    return (centred_distances(x, unbiased, chunk_size, dtype), centred_distances(y, unbiased, chunk_size, dtype))
