"""The representation terms of the loss, resolved from the config in one place: which φ_k (unique keys), with which
parameters (the entry's own, then the defaults: HOG and ScatNet from the seed's top-level ``hog:`` / ``scatnet:``
sections, a CLIP teacher from ``clip:``, x̄'s normalisation from the data), and how the loss uses it (weight,
signed power, standardisation, statistic). The pretraining module builds the representations from these specs and
hands the same specs to the objective, so a term is described once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# representation name -> the keys of its top-level config section that give defaults (the seed's configs)
SEED_SECTIONS = {"hog": ("nbins", "pool"), "scatnet": ("J", "L")}


@dataclass(frozen=True)
class TermSpec:
    """One representation term: ``key`` (unique), the registry ``name``, resolved ``params`` and the loss's
    ``weight`` w (``w · (1 − dCor(φ, z))``), ``power`` (signed power before anything), ``standardize`` (z-score
    per feature over the batch) and ``statistic`` (dcor / dcov; None: the loss's)."""

    key: str
    name: str
    params: Dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    power: float = 1.0
    standardize: bool = False
    statistic: Optional[str] = None


def representation_keys(names: List[str]) -> List[str]:
    """Unique module keys: the name itself, or ``name_i`` when a name is used twice."""
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def default_params(cfg: Any, info: Any, name: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """``params`` completed with the defaults this project and the seed's configs give a representation."""
    params = dict(params)
    for seed_key in SEED_SECTIONS.get(name, ()):
        params.setdefault(seed_key, getattr(getattr(cfg, name), seed_key))
    if name == "teacher":
        if params.get("kind", "open_clip") == "open_clip":  # the seed's `clip:` section
            params.setdefault("model_name", cfg.clip.model_name)
            params.setdefault("pretrained", cfg.clip.pretrained)
        params.setdefault("dataset_mean", list(info.mean))
        params.setdefault("dataset_std", list(info.std))
    return params


def resolve_terms(cfg: Any, info: Any) -> List[TermSpec]:
    """The config's ``representations`` as :class:`TermSpec` s, defaults filled in (``info``: the data's
    DatasetInfo, whose normalisation a teacher undoes)."""
    entries = list(cfg.representations or [])
    keys = representation_keys([entry.name for entry in entries])
    return [
        TermSpec(
            key=key,
            name=entry.name,
            params=default_params(cfg, info, entry.name, entry.params),
            weight=float(entry.weight),
            power=float(entry.power),
            standardize=bool(entry.standardize),
            statistic=entry.statistic,
        )
        for key, entry in zip(keys, entries)
    ]
