"""The base class of the non-learnable representations φ_k and their declared, validated parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional

import torch
from torch import nn

from mvmr.errors import ConfigError
from mvmr.numerics import exact_float32


@dataclass(frozen=True)
class Param:
    """One config parameter of a representation: default, a check, and the requirement in words."""

    default: Any
    requirement: str  # completes "<name>.<param> must be ...", e.g. "an int >= 2"
    check: Callable[[Any], bool]
    help: str
    convert: Callable[[Any], Any] = lambda value: value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def int_param(
    default: Optional[int], help: str, *, minimum: int, maximum: Optional[int] = None, optional: bool = False
) -> Param:
    """An int in [minimum, maximum]; ``optional`` also allows None."""
    bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    requirement = f"an int {bound}" + (" or null" if optional else "")

    def check(value: Any) -> bool:
        if value is None:
            return optional
        return _is_int(value) and value >= minimum and (maximum is None or value <= maximum)

    return Param(default, requirement, check, help)


def number_param(default: float, help: str, *, greater_than: Optional[float] = None) -> Param:
    """A finite real number (ints accepted, stored as float), optionally > ``greater_than``."""
    requirement = "a finite number" + (f" > {greater_than:g}" if greater_than is not None else "")

    def check(value: Any) -> bool:
        return _is_number(value) and (greater_than is None or value > greater_than)

    return Param(default, requirement, check, help, convert=float)


def unknown_params(specs: Mapping[str, Param], params: Mapping[str, Any]) -> list[str]:
    """Names in ``params`` that ``specs`` does not declare, in the given order."""
    return [name for name in params if name not in specs]


def unknown_param_message(where: str, specs: Mapping[str, Param], name: str) -> str:
    allowed = ", ".join(specs) if specs else "(none)"
    return f"{where}: unknown parameter {name!r}; allowed: {allowed}"


class Representation(nn.Module):
    """A fixed (non-learnable) map φ of the normalised view x̄: (B, C, H, W) -> (B, output_dim()) float32.

    Subclasses declare ``name``, ``param_specs`` (name -> :class:`Param`), ``dim_formula`` (for the
    docs) and implement ``output_dim`` and ``compute``. Validated parameters become attributes
    (``self.nbins``). ``forward`` checks the input shape, runs ``compute`` in true float32 (autocast off,
    no TF32 products: :func:`mvmr.numerics.exact_float32`) and without gradients, and flattens the result.
    Representations have no parameters and only non-persistent buffers, so they add nothing to checkpoints;
    ``.to(device)`` moves the buffers.
    """

    name: ClassVar[str] = ""
    param_specs: ClassVar[Mapping[str, Param]] = {}
    dim_formula: ClassVar[str] = ""
    deterministic: ClassVar[bool] = True  # a fixed function of the image: φ(x̄) may be cached
    needs_augment: ClassVar[bool] = False  # the builder passes ``augment=`` to the constructor

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__()
        for label, value in (("in_channels", in_channels), ("image_size", image_size)):
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{self.name}: {label} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.settings: Dict[str, Any] = self._resolve(params)
        for key, value in self.settings.items():
            setattr(self, key, value)

    def _resolve(self, params: Mapping[str, Any]) -> Dict[str, Any]:
        """Defaults overridden by ``params``; a ConfigError names an unknown or invalid parameter."""
        unknown = unknown_params(self.param_specs, params)
        if unknown:
            raise ConfigError(unknown_param_message(self.name, self.param_specs, unknown[0]))
        resolved = {}
        for key, spec in self.param_specs.items():
            value = params.get(key, spec.default)
            if not spec.check(value):
                raise ConfigError(f"{self.name}.{key} must be {spec.requirement}, got {value!r}")
            resolved[key] = None if value is None else spec.convert(value)
        return resolved

    def invalid(self, key: str, requirement: str) -> ConfigError:
        """A one-line error for a parameter that fails a check involving the image size or other params."""
        return ConfigError(f"{self.name}.{key} must be {requirement}, got {self.settings[key]!r}")

    def output_dim(self) -> int:
        """Flattened output size for a (in_channels, image_size, image_size) input."""
        raise NotImplementedError

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) float32 -> (B, ...) float32 with output_dim() elements per sample."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) normalised image -> (B, output_dim()) float32, no gradients."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"representation '{self.name}' expects (B, {', '.join(map(str, expected))}) images, "
                f"got {tuple(x.shape)}"
            )
        with torch.no_grad(), exact_float32(x.device):
            out = self.compute(x.detach().float())
        return out.reshape(x.shape[0], -1).float()

    def extra_repr(self) -> str:
        # The cache hashes repr(module): every setting that changes φ must appear here.
        items = {"in_channels": self.in_channels, "image_size": self.image_size, **self.settings}
        return ", ".join(f"{key}={value!r}" for key, value in items.items())
