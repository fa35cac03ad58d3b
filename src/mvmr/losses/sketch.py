"""Sketched representations for the global-batch loss under DDP (``loss.gather_dim``).

With ``gather=True`` every rank would all-gather each φ_k (B, d_k): at 224 px the authors' five
representations are about 1.27 M values per image. With ``gather_dim=k`` each rank instead maps its own
rows φ_k (B, d_k), d_k > k, through one fixed random linear map S_k (d_k -> k), the SAME on every rank,
and gathers the (B, k) sketch. S_k is linear, so the sketch of a global batch is the concatenation of the
ranks' sketches, and the pairwise distances ‖S(x_i − x_j)‖ approximate ‖x_i − x_j‖
(Johnson–Lindenstrauss): dCor(φ_k, z) on sketches approximates the exact term (the measured error is
quoted at ``RECOMMENDED_GATHER_DIM``; tests/losses/test_gather_sketch.py).

S_k is a count sketch (Charikar, Chen & Farach-Colton 2002; as a JL map: Clarkson & Woodruff 2013):
column i of φ goes, with a random sign s_i = ±1, into bucket h(i) of k. It is never a d×k matrix: it is
stored as a permutation and a sign vector (d values each), applied in O(B·d) time, with no matrix product
(hence no TF32 rounding either). For every vector x: E‖Sx‖² = ‖x‖² and Var ‖Sx‖² <= 2‖x‖⁴/k, the
variance of a dense Gaussian projection to k dims.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from mvmr.losses.dcor import as_batch_matrix, compute_dtype
from mvmr.losses.distributed import distributed_world_size

# The recommended loss.gather_dim, and the |dCor(sketch) − dCor(exact)| it kept to on every image-derived input
# measured: 150k-d pixels, 762k-d ScatNet (raw and standardised) and 56k-d HOG of photo crops at 224 px, batch
# 256 (5 sketch seeds: max 0.0036) and 1024 (max 0.0027); the relative error of ∂dCor/∂z was 2–9 %.
# Unstructured i.i.d. 150k/762k-d noise is the worst case: 0.0019 at batch 256 but 0.0065 at 1024 (the error
# grows with the batch there). k = 4096 halves the traffic; its worst image-derived error was 0.0049.
RECOMMENDED_GATHER_DIM = 8192
SKETCH_DCOR_TOLERANCE = 5e-3

# Columns per chunk: about this many (B × chunk) elements (64 MiB in float32), a multiple of k.
SKETCH_CHUNK_ELEMENTS = 1 << 24

# (block (B, c) in the compute dtype, its source columns (c,) as int64) -> the transformed block
ColumnTransform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sketch_seed(name: str, seed: int = 0) -> int:
    """A 63-bit seed for representation ``name``: a hash of (seed, name), the same in every process
    (Python's ``hash`` of a str is not)."""
    digest = hashlib.sha256(f"mvmr-gather-sketch:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class CountSketch:
    """x (B, d) -> x S (B, k): y_j = Σ_{i: h(i) = j} s_i x_i, a fixed function of (d, k, seed).

    A random permutation π of the d columns puts column π[p] at position p, in bucket p mod k, with the
    sign s_p = ±1: every bucket holds ⌊d/k⌋ or ⌈d/k⌉ columns (fewer collisions than an independent hash,
    and none when d <= k). π and s are drawn on the CPU from a ``torch.Generator`` seeded with ``seed``, so
    S is identical on every rank and device.

    Applied over chunks of positions (a multiple of k columns, about ``SKETCH_CHUNK_ELEMENTS`` elements per
    chunk): each chunk's columns are gathered, upcast to the compute dtype, optionally transformed (the
    objective's signed power and standardisation), signed, and summed block by block of k. Deterministic
    (no atomics), O(B·d) time, O(B·chunk) scratch memory.
    """

    def __init__(self, in_dim: int, out_dim: int, seed: int):
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"count sketch needs positive dimensions, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        generator = torch.Generator().manual_seed(seed)
        self.source = torch.randperm(in_dim, generator=generator)  # position p holds column source[p]
        self.signs = torch.randint(0, 2, (in_dim,), generator=generator, dtype=torch.int8).mul_(2).sub_(1)
        self._on_device: Dict[Tuple[torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"CountSketch({self.in_dim} -> {self.out_dim}, seed={self.seed})"

    def buckets(self) -> torch.Tensor:
        """h (d,) int64: the bucket of each column."""
        out = torch.empty(self.in_dim, dtype=torch.long)
        out[self.source] = torch.arange(self.in_dim) % self.out_dim
        return out

    def column_signs(self) -> torch.Tensor:
        """s (d,) int8: the sign of each column."""
        out = torch.empty(self.in_dim, dtype=torch.int8)
        out[self.source] = self.signs
        return out

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """S (d, k) dense, with S[i, h(i)] = s_i: for tests and small d only."""
        out = torch.zeros(self.in_dim, self.out_dim, dtype=dtype)
        out[torch.arange(self.in_dim), self.buckets()] = self.column_signs().to(dtype)
        return out

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._on_device:
            self._on_device[key] = (self.source.to(device), self.signs.to(device=device, dtype=dtype))
        return self._on_device[key]

    def chunk_positions(self, batch: int) -> int:
        """Positions (columns) per chunk: a multiple of k holding about ``SKETCH_CHUNK_ELEMENTS`` elements."""
        return self.out_dim * max(1, SKETCH_CHUNK_ELEMENTS // max(1, batch * self.out_dim))

    def __call__(
        self, x: torch.Tensor, dtype: Optional[torch.dtype] = None, transform: Optional[ColumnTransform] = None
    ) -> torch.Tensor:
        """x (B, ...) flattened to (B, d) -> (B, k) in ``dtype`` (default: float32, float64 for float64 x).

        ``transform(block, columns)`` is applied to each upcast chunk of columns before the sketch (it must
        act column by column: a function of each column alone, given its index).
        """
        x = as_batch_matrix(x)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"count sketch expects (B, {self.in_dim}), got {tuple(x.shape)}")
        dtype = dtype or compute_dtype(x)
        batch, k = x.shape[0], self.out_dim
        source, signs = self._tensors(x.device, dtype)
        out = torch.zeros(batch, k, dtype=dtype, device=x.device)
        step = self.chunk_positions(batch)
        for start in range(0, self.in_dim, step):  # each chunk starts at a multiple of k: position p -> p mod k
            stop = min(start + step, self.in_dim)
            columns = source[start:stop]
            block = x.index_select(1, columns).to(dtype)
            if transform is not None:
                block = transform(block, columns)
            block = block * signs[start:stop]
            full = (stop - start) // k * k
            if full:
                out += block[:, :full].reshape(batch, -1, k).sum(dim=1)
            if full < stop - start:  # only in the last chunk
                out[:, : stop - start - full] += block[:, full:]
        return out


def global_column_moments(
    x: torch.Tensor,
    count: int,
    dtype: torch.dtype,
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    chunk_columns: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and biased std (d,) of ``transform(x)`` over the GLOBAL batch of ``count`` rows.

    x (B_r, ...) is this rank's part; two all-reduces of d values (the sums, then the centred sums of
    squares: the two-pass formula, as accurate as the std of the gathered batch). Without
    torch.distributed (or world size 1) the local batch is the global one.
    """
    x = as_batch_matrix(x)
    chunk_columns = chunk_columns or max(1, SKETCH_CHUNK_ELEMENTS // max(1, x.shape[0]))
    world = distributed_world_size()

    def column_sums(fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> torch.Tensor:
        sums = torch.empty(x.shape[1], dtype=dtype, device=x.device)
        for start in range(0, x.shape[1], chunk_columns):
            cols = slice(start, min(start + chunk_columns, x.shape[1]))
            block = x[:, cols].to(dtype)
            sums[cols] = fn(block if transform is None else transform(block), cols).sum(dim=0)
        if world > 1:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        return sums

    mean = column_sums(lambda block, cols: block).div_(count)
    var = column_sums(lambda block, cols: (block - mean[cols]).square_()).div_(count)
    return mean, var.sqrt_()
