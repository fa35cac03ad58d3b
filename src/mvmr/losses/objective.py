"""The MV-MR objective: invariance + variance hinge + distance correlations or covariances (METHOD.md,
"The loss"; docs/statistics.md)."""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mvmr.errors import ConfigError
from mvmr.losses.dcor import centred_distances, compute_dtype, correlation_from_centred, covariance_from_centred
from mvmr.losses.distributed import batch_sizes, distributed_world_size, gather_with_grad
from mvmr.losses.sketch import CountSketch, global_column_moments, sketch_seed
from mvmr.losses.traffic import LossTraffic, gathered_bytes_per_step
from mvmr.numerics import exact_float32

STD_EPS = 1e-4
COLUMN_STD_FLOOR = 1e-6
STATISTICS = ("dcor", "dcov")  # dependence statistic of the z̄–z and φ_k–z terms


def standardize_columns(rep: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, d): each feature z-scored over the batch, (x − mean) / max(std, 1e-6) (biased std);
    a feature constant over the batch becomes 0."""
    flat = rep.flatten(1)
    mean = flat.mean(dim=0, keepdim=True)
    std = flat.std(dim=0, unbiased=False, keepdim=True).clamp_min(COLUMN_STD_FLOOR)
    return (flat - mean) / std


def signed_power(rep: torch.Tensor, p: float) -> torch.Tensor:
    """sign(x)·|x|^p elementwise, same shape (p = 1 returns ``rep`` itself)."""
    return rep if p == 1.0 else torch.sign(rep) * rep.abs().pow(p)


def std_hinge(z: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_j relu(margin − sqrt(var_j(z) + 1e-4)) for z (B, D); var_j is the unbiased batch variance."""
    std = torch.sqrt(z.var(dim=0, unbiased=True) + STD_EPS)
    return F.relu(margin - std).mean()


class MVMRObjective(nn.Module):
    """MV-MR loss for embeddings z̄ = g(f(x̄)), z = g(f(x')) and representations φ_k(x̄)::

        L = mse_weight · MSE(z̄, z)
          + std_weight · [mean_j relu(γ − std_j(z)) + mean_j relu(γ − std_j(z̄))]
          + dcor_weight · (1 − dCor(z̄, z))
          + Σ_k w_k · (1 − dCor(φ_k, z))

    ``statistic="dcov"`` replaces every dependence term 1 − dCor(·, z) by −dCov²(·, z) (the squared
    distance covariance, :func:`~mvmr.losses.dcor.covariance_from_centred`), so a positive weight still
    maximises the dependence; ``statistics`` (name -> "dcor" | "dcov" | None) overrides it for the named
    representations (None, or a name not listed: ``statistic``). dCov² is not bounded and scales with
    its inputs (docs/statistics.md): weights tuned for dCor do not carry over.

    φ_k named in ``powers`` first go through the signed power sign(φ)·|φ|^p (:func:`signed_power`);
    φ_k named in ``standardized`` are then z-scored per feature over the batch (:func:`standardize_columns`;
    the global batch under DDP).

    std_j = sqrt(var_j + 1e-4) with the unbiased variance over the batch; γ = ``std_margin``.
    ``unbiased=True`` uses the bias-corrected estimator of dCor² in every dCor term, i.e. each term
    is 1 − u_dCor² (not square-rooted; u_dCor² can be slightly negative, so a term can exceed 1), and
    the bias-corrected u_dCov² in every dCov term.
    ``normalize_z=True`` L2-normalises z and z̄ along dim 1 first (the authors' option).
    ``gather=True`` computes every term on the global batch under DDP (z̄, z and every φ_k are
    gathered from all ranks with :func:`gather_with_grad`); ``gather=False`` uses the local batch.
    ``gather_dim=k`` (with ``gather`` and world size > 1): each rank first maps its own rows of every φ_k
    with d_k > k (after the signed power and the standardisation, both on the global batch) through a
    count sketch to k dims, the same map on every rank (:class:`~mvmr.losses.sketch.CountSketch`, seeded
    by ``sketch_seed`` and the representation's name), and gathers the (B, k) sketch instead of φ_k: the
    representation terms are then computed on the global batch's sketches, which approximate the exact
    terms (Johnson–Lindenstrauss; tests/losses/test_gather_sketch.py). φ_k with d_k <= k, z̄, z and every other
    term are unchanged and exact. ``gather_dim=None`` gathers every φ_k exactly. One process (no DDP)
    never sketches: there is nothing to gather.

    A negative w_k reproduces the authors' public code, which adds +dCor(φ_k, z) for the hand-crafted
    representations (minimising the dependence): w_k(1 − dCor) differs from |w_k|·dCor by a constant.

    Representations are constants (detached). All terms are computed in float32 (float64 inputs
    stay float64) with autocast disabled and no TF32 products (:func:`mvmr.numerics.exact_float32`).
    """

    def __init__(
        self,
        mse_weight: float = 1.0,
        std_weight: float = 1.0,
        dcor_weight: float = 1.0,
        std_margin: float = 1.0,
        unbiased: bool = False,
        normalize_z: bool = False,
        gather: bool = True,
        standardized: Iterable[str] = (),
        powers: Mapping[str, float] | None = None,
        statistic: str = "dcor",
        statistics: Mapping[str, Optional[str]] | None = None,
        gather_dim: Optional[int] = None,
        sketch_seed: int = 0,
        representation_weights: Mapping[str, float] | None = None,
    ):
        super().__init__()
        self.representation_weights = {name: float(w) for name, w in (representation_weights or {}).items()}
        if gather_dim is not None and (
            isinstance(gather_dim, bool) or not isinstance(gather_dim, int) or gather_dim < 1
        ):
            raise ValueError(f"gather_dim must be a positive integer or None, got {gather_dim!r}")
        self.gather_dim = gather_dim
        self.sketch_seed = int(sketch_seed)
        self._sketches: Dict[Tuple[str, int], CountSketch] = {}
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {list(STATISTICS)}, got {statistic!r}")
        self.statistic = statistic
        self.statistics = {name: stat for name, stat in (statistics or {}).items() if stat is not None}
        bad_stats = {name: stat for name, stat in self.statistics.items() if stat not in STATISTICS}
        if bad_stats:
            raise ValueError(f"representation statistics must be one of {list(STATISTICS)} (or None), got {bad_stats}")
        self.standardized = frozenset(standardized)
        self.powers = {name: float(p) for name, p in (powers or {}).items() if float(p) != 1.0}
        bad = {name: p for name, p in self.powers.items() if not p > 0}
        if bad:
            raise ValueError(f"representation powers must be > 0, got {bad}")
        self.mse_weight = mse_weight
        self.std_weight = std_weight
        self.dcor_weight = dcor_weight
        self.std_margin = std_margin
        self.unbiased = unbiased
        self.normalize_z = normalize_z
        self.gather = gather

    def extra_repr(self) -> str:
        return (
            f"mse_weight={self.mse_weight}, std_weight={self.std_weight}, dcor_weight={self.dcor_weight}, "
            f"std_margin={self.std_margin}, unbiased={self.unbiased}, normalize_z={self.normalize_z}, "
            f"gather={self.gather}, standardized={sorted(self.standardized)}, powers={self.powers}, "
            f"statistic={self.statistic!r}, statistics={self.statistics}, gather_dim={self.gather_dim}, "
            f"representation_weights={self.representation_weights}"
        )

    def forward(
        self,
        z_bar: torch.Tensor,
        z: torch.Tensor,
        representations: Mapping[str, torch.Tensor],
        representation_weights: Mapping[str, float] | None = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """z_bar, z: (B, D); representations: name -> (B, d_k); weights: name -> w_k (None: the weights given to
        the constructor).

        Returns (loss, terms): the weighted scalar loss and the detached UNWEIGHTED terms "mse",
        "std", "dcor_zz" (= 1 − dCor(z̄, z)), "dcor/<name>" (= 1 − dCor(φ_k, z)) and "loss"; a term
        computed with dCov² is logged as "dcov_zz" (= −dCov²(z̄, z)) or "dcov/<name>" (= −dCov²(φ_k, z)).
        """
        if representation_weights is None:
            representation_weights = self.representation_weights
        self._check_inputs(z_bar, z, representations, representation_weights)
        dtype = compute_dtype(z_bar, z)
        with exact_float32(z.device):
            z_bar, z = z_bar.to(dtype), z.to(dtype)
            if self.normalize_z:
                z_bar, z = F.normalize(z_bar, dim=1), F.normalize(z, dim=1)
            reps = {name: rep.detach() for name, rep in representations.items()}
            sketched: frozenset = frozenset()  # already powered, standardised (globally) and sketched
            if self.gather:
                sizes = batch_sizes(z.shape[0], z.device) if distributed_world_size() > 1 else None  # asked once
                z_bar, z = gather_with_grad(z_bar, sizes), gather_with_grad(z, sizes)
                if self.gather_dim is not None and distributed_world_size() > 1:
                    reps, sketched = self._sketch_local(reps, z.shape[0], dtype)
                reps = {name: gather_with_grad(rep, sizes) for name, rep in reps.items()}
            if z.shape[0] < 2:
                raise ConfigError(
                    f"the MV-MR loss needs at least 2 samples per batch, got {z.shape[0]}; "
                    "use a larger batch or drop the last incomplete batch"
                )

            centred_z = centred_distances(z, self.unbiased)  # shared by every dCor / dCov²(·, z) term
            terms = {
                "mse": F.mse_loss(z_bar, z),
                "std": std_hinge(z, self.std_margin) + std_hinge(z_bar, self.std_margin),
            }
            zz_key = f"{self.statistic}_zz"
            terms[zz_key] = self._dependence(self.statistic, centred_distances(z_bar, self.unbiased), centred_z)
            loss = self.mse_weight * terms["mse"] + self.std_weight * terms["std"] + self.dcor_weight * terms[zz_key]
            for name, rep in reps.items():
                if name in self.powers and name not in sketched:
                    rep = signed_power(rep.to(dtype), self.powers[name])
                if name in self.standardized and name not in sketched:
                    rep = standardize_columns(rep.to(dtype))
                statistic = self.statistics.get(name, self.statistic)
                term = self._dependence(statistic, centred_distances(rep, self.unbiased, dtype=dtype), centred_z)
                terms[f"{statistic}/{name}"] = term
                loss = loss + float(representation_weights[name]) * term
        terms["loss"] = loss
        return loss, {key: value.detach() for key, value in terms.items()}

    def sketch(self, name: str, dim: int) -> Optional[CountSketch]:
        """The count sketch of representation ``name`` of width ``dim`` (None when gathered exactly:
        ``gather_dim`` None or dim <= gather_dim). Built once, from ``sketch_seed(name, self.sketch_seed)``."""
        if self.gather_dim is None or dim <= self.gather_dim:
            return None
        key = (name, dim)
        if key not in self._sketches:
            self._sketches[key] = CountSketch(dim, self.gather_dim, sketch_seed(name, self.sketch_seed))
        return self._sketches[key]

    def _sketch_local(
        self, reps: Mapping[str, torch.Tensor], global_batch: int, dtype: torch.dtype
    ) -> Tuple[Dict[str, torch.Tensor], frozenset]:
        """This rank's rows of every φ_k wider than ``gather_dim`` -> (B_r, gather_dim) sketches in ``dtype``,
        after the signed power and the standardisation with the global batch's column moments (all-reduced;
        the same on every rank). Returns (representations, names sketched); the others are unchanged."""
        out, sketched = dict(reps), set()
        for name, rep in reps.items():
            flat = rep.reshape(rep.shape[0], -1)
            sketch = self.sketch(name, flat.shape[1])
            if sketch is None:
                continue
            power = self.powers.get(name)
            powered = (lambda block, p=power: signed_power(block, p)) if power is not None else None
            if name in self.standardized:
                mean, std = global_column_moments(flat, global_batch, dtype, powered)
                std.clamp_min_(COLUMN_STD_FLOOR)

                def transform(block, columns, mean=mean, std=std, powered=powered):
                    block = block if powered is None else powered(block)
                    return (block - mean[columns]) / std[columns]
            else:
                transform = None if powered is None else (lambda block, columns, fn=powered: fn(block))
            out[name] = sketch(flat, dtype, transform)
            sketched.add(name)
        return out, frozenset(sketched)

    def traffic(
        self,
        world_size: int,
        batch_per_rank: int,
        embedding_dim: int,
        representation_dims: Mapping[str, int],
        representation_dtypes: torch.dtype | Mapping[str, torch.dtype] = torch.float32,
        compute_dtype: torch.dtype = torch.float32,
    ) -> LossTraffic:
        """Bytes this objective's collectives move per rank and step:
        :func:`~mvmr.losses.traffic.gathered_bytes_per_step` with this objective's ``gather``, ``gather_dim`` and
        ``standardized``."""
        return gathered_bytes_per_step(
            world_size,
            batch_per_rank,
            embedding_dim,
            representation_dims,
            representation_dtypes,
            gather=self.gather,
            gather_dim=self.gather_dim,
            standardized=self.standardized,
            compute_dtype=compute_dtype,
        )

    def _dependence(self, statistic: str, centred_a: torch.Tensor, centred_b: torch.Tensor) -> torch.Tensor:
        """The term to minimise: 1 − dCor (``"dcor"``) or −dCov² (``"dcov"``) of two centred matrices."""
        if statistic == "dcov":
            return -covariance_from_centred(centred_a, centred_b, self.unbiased)
        return 1 - correlation_from_centred(centred_a, centred_b, self.unbiased)

    @staticmethod
    def _check_inputs(
        z_bar: torch.Tensor,
        z: torch.Tensor,
        representations: Mapping[str, torch.Tensor],
        representation_weights: Mapping[str, float],
    ) -> None:
        if z.dim() != 2 or z_bar.shape != z.shape:
            raise ValueError(
                f"z_bar and z must both be (B, D) embeddings, got {tuple(z_bar.shape)} and {tuple(z.shape)}"
            )
        for name, rep in representations.items():
            if rep.dim() < 1 or rep.shape[0] != z.shape[0]:
                raise ValueError(
                    f"representation '{name}' must have the batch size {z.shape[0]} of z "
                    f"as its first dim, got shape {tuple(rep.shape)}"
                )
        missing = sorted(set(representations) - set(representation_weights))
        unused = sorted(set(representation_weights) - set(representations))
        if missing or unused:
            raise ValueError(
                f"representation weights must match the representations: "
                f"no weight for {missing}, no representation for {unused}"
            )
