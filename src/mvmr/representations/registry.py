"""The representation registry, the builder used by the training code, and the README table."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Type

import torch

from mvmr.errors import ConfigError
from mvmr.registry import Registry
from mvmr.representations.base import Representation, unknown_param_message, unknown_params

REPRESENTATIONS: Registry[Type[Representation]] = Registry("representation")

Augment = Callable[[torch.Tensor], torch.Tensor]
EXAMPLE_SHAPE = (3, 96, 96)  # the input size of the example column (STL10)


def register_representation(cls: Type[Representation]) -> Type[Representation]:
    """Class decorator: registers ``cls`` under ``cls.name``."""
    return REPRESENTATIONS.register(cls.name)(cls)


def build_representation(
    name: str,
    params: Optional[Mapping[str, Any]],
    *,
    in_channels: int,
    image_size: int,
    augment: Optional[Augment] = None,
    index: Optional[int] = None,
) -> Representation:
    """The representation ``name`` with config ``params`` for (in_channels, image_size, image_size) inputs.

    ``augment``: (B, C, H, W) -> (B, C, H, W) random per sample, used by ``augmented_pixels`` only.
    ``index``: position in the config's ``representations`` list, used in error messages.
    Raises ConfigError (one line) for an unknown name or an unknown / invalid parameter.
    """
    where = f"representations[{index}]" if index is not None else None
    cls = REPRESENTATIONS.get(name, key=f"{where}.name" if where else None)
    params = dict(params or {})
    unknown = unknown_params(cls.param_specs, params)
    if unknown:
        label = f"{where} ({name})" if where else f"representation {name!r}"
        raise ConfigError(unknown_param_message(label, cls.param_specs, unknown[0]))
    if cls.needs_augment:
        return cls(in_channels, image_size, augment=augment, **params)
    return cls(in_channels, image_size, **params)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _yaml_value(value: Any) -> str:
    return "null" if value is None else str(value)


def describe_representations() -> str:
    """A Markdown table: name, parameters with defaults, output size, and the size for a 3×96×96 input."""
    channels, size, _ = EXAMPLE_SHAPE
    rows = ["| name | parameters (defaults) | output size | 3×96×96, defaults |", "|---|---|---|---|"]
    for name in REPRESENTATIONS:
        cls = REPRESENTATIONS.get(name)
        params = ", ".join(f"{key}={_yaml_value(spec.default)}" for key, spec in cls.param_specs.items()) or "—"
        example = getattr(cls, "example_dim", None)
        if example is None:  # families that need weights on disk state their example instead of building
            extra = {"augment": _identity} if cls.needs_augment else {}
            example = cls(channels, size, **extra).output_dim()
        rows.append(f"| `{name}` | {params} | {cls.dim_formula} | {example} |")
    return "\n".join(rows)
