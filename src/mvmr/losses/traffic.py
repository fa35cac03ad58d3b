"""Bytes the MV-MR loss's collectives move per rank and training step under DDP (``gather=True``).

What :class:`~mvmr.losses.objective.MVMRObjective` does on each of W ranks with B rows each:

* forward, the ranks' row counts once (:func:`~mvmr.losses.distributed.batch_sizes`, one int64 each: W·8
  bytes, listed as ``row_counts``), then one all-gather per tensor
  (:func:`~mvmr.losses.distributed.gather_with_grad`): z̄ and z (B, D) in the compute dtype (float32; float64
  for float64 inputs: the objective upcasts before gathering, so bf16 embeddings still travel as float32), then
  every φ_k (B, d_k) in its own dtype, or, with ``gather_dim=k`` and d_k > k, its (B, k) sketch in the compute
  dtype. all_gather returns W tensors: W·B·row bytes per gather.
* forward, with ``gather_dim`` and a standardised φ_k that is sketched: two all-reduces of d_k values
  (its global column sums and centred sums of squares).
* backward: the gathers of z̄ and z all-reduce their (W·B, D) gradients in the compute dtype.

``received_bytes`` is what one rank receives over the network with ring algorithms (NCCL's): an
all-gather returning n bytes receives (W−1)/W·n; an all-reduce of n bytes receives 2(W−1)/W·n.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Optional

import torch

SIZE_BYTES = 8  # the int64 row count each rank contributes, once per step


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


@dataclass(frozen=True)
class LossTraffic:
    """Per rank and step. ``gathered``: name -> bytes the forward all-gathers return (W slices, this rank's
    included; ``row_counts``: the ranks' row counts, gathered once); ``forward_reduced``: name -> bytes
    all-reduced in the forward (the global column moments of sketched, standardised φ_k); ``backward_reduced``:
    name -> bytes all-reduced by the backward of the gathers of z̄ and z; ``sketched``: name -> (d_k, k) for
    the sketched φ_k."""

    world_size: int
    batch_per_rank: int
    gathered: Dict[str, int] = field(default_factory=dict)
    forward_reduced: Dict[str, int] = field(default_factory=dict)
    backward_reduced: Dict[str, int] = field(default_factory=dict)
    sketched: Dict[str, tuple] = field(default_factory=dict)

    @property
    def forward_bytes(self) -> int:
        """Bytes the forward collectives return or reduce on each rank (all-gather outputs + all-reduce tensors)."""
        return sum(self.gathered.values()) + sum(self.forward_reduced.values())

    @property
    def backward_bytes(self) -> int:
        """Bytes all-reduced by the backward of the gathers of z̄ and z."""
        return sum(self.backward_reduced.values())

    @property
    def received_bytes(self) -> float:
        """Bytes one rank receives over the network per step with ring all-gather and all-reduce."""
        w = self.world_size
        if w <= 1:
            return 0.0
        reduced = sum(self.forward_reduced.values()) + self.backward_bytes
        return (w - 1) / w * sum(self.gathered.values()) + 2 * (w - 1) / w * reduced

    def seconds(self, link_gbit_s: float = 100.0) -> float:
        """``received_bytes`` over a link of ``link_gbit_s`` Gb/s (no overlap, no protocol overhead)."""
        return self.received_bytes * 8 / (link_gbit_s * 1e9)

    def summary(self, link_gbit_s: float = 100.0) -> str:
        """One line: totals, the time on the link, and the largest contributor."""
        if self.world_size <= 1 or not self.gathered:
            return f"loss collectives: none (world size {self.world_size}, nothing gathered)"
        per_name = {
            name: self.gathered.get(name, 0) + self.forward_reduced.get(name, 0) + self.backward_reduced.get(name, 0)
            for name in {**self.gathered, **self.backward_reduced}
        }
        top = max(per_name, key=per_name.get)
        sketch = (
            f", sketched {', '.join(f'{n} {d}->{k}' for n, (d, k) in self.sketched.items())}" if self.sketched else ""
        )
        return (
            f"loss collectives per rank and step ({self.world_size} ranks x {self.batch_per_rank}): "
            f"forward {_format_bytes(self.forward_bytes)} gathered/reduced, backward "
            f"{_format_bytes(self.backward_bytes)} reduced; {_format_bytes(self.received_bytes)} received "
            f"~ {1000 * self.seconds(link_gbit_s):.1f} ms at {link_gbit_s:g} Gb/s; largest {top} "
            f"{_format_bytes(per_name[top])}{sketch}"
        )


def gathered_bytes_per_step(
    world_size: int,
    batch_per_rank: int,
    embedding_dim: int,
    representation_dims: Mapping[str, int],
    representation_dtypes: torch.dtype | Mapping[str, torch.dtype] = torch.float32,
    *,
    gather: bool = True,
    gather_dim: Optional[int] = None,
    standardized: Iterable[str] = (),
    compute_dtype: torch.dtype = torch.float32,
) -> LossTraffic:
    """Bytes the loss's collectives move on each rank per training step (module docstring).

    ``representation_dims``: name -> d_k as the loss receives φ_k (flattened; after the cache's ``max_dim``
    when cached); ``representation_dtypes``: their dtype (one for all, or per name; a cached φ_k arrives in
    the cache's storage dtype, float16 or float32); ``compute_dtype``: the objective's (float32, or float64
    for float64 embeddings), in which z̄, z, their gradients and the sketches travel. Every rank is assumed
    to hold ``batch_per_rank`` rows (with unequal batches each gather pads to the largest).
    """
    traffic = LossTraffic(world_size, batch_per_rank)
    if not gather or world_size <= 1:
        return traffic
    w, b = world_size, batch_per_rank
    compute = _dtype_bytes(compute_dtype)
    standardized = frozenset(standardized)

    def gather_bytes(row_bytes: int) -> int:
        return w * b * row_bytes

    traffic.gathered["row_counts"] = w * SIZE_BYTES
    for name in ("z_bar", "z"):
        traffic.gathered[name] = gather_bytes(embedding_dim * compute)
        traffic.backward_reduced[name] = w * b * embedding_dim * compute
    for name, dim in representation_dims.items():
        dtype = representation_dtypes if isinstance(representation_dtypes, torch.dtype) else representation_dtypes[name]
        if gather_dim is not None and dim > gather_dim:
            traffic.sketched[name] = (dim, gather_dim)
            traffic.gathered[name] = gather_bytes(gather_dim * compute)
            if name in standardized:
                traffic.forward_reduced[name] = 2 * dim * compute
        else:
            traffic.gathered[name] = gather_bytes(dim * _dtype_bytes(dtype))
    return traffic
