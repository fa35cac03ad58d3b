"""Input checks, uint8 -> [0, 1] conversion, normalisation and the transfer of drawn parameters shared by every
view."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from mvmr.errors import ConfigError, DataError

SUPPORTED_CHANNELS = (1, 3)
PACK_ALIGN = 16  # bytes: where each tensor of a packed transfer starts (any dtype's alignment, compiled kernels')


def check_normalisation(mean: Sequence[float], std: Sequence[float], channels: int | None = None) -> int:
    """Validate per-channel ``mean``/``std`` (in [0, 1] units); returns the number of channels."""
    mean, std = list(mean), list(std)
    n = len(mean)
    if n not in SUPPORTED_CHANNELS or len(std) != n or (channels is not None and channels != n):
        raise ConfigError(
            f"views need mean/std with one value per channel (1 or 3); got mean={mean}, std={std}"
            + (f" for {channels} channels" if channels is not None else "")
        )
    if any(s <= 0 for s in std):
        raise ConfigError(f"views need a positive std per channel; got std={std}")
    return n


def check_size(size: int) -> int:
    """The output side length, a positive int."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"view size must be a positive integer (dataset.size); got {size!r}")
    return size


def to_unit_float(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1] (uint8 is divided by 255 once)."""
    if (
        images.ndim != 4
        or images.shape[1] != channels
        or not (images.dtype == torch.uint8 or images.is_floating_point())
    ):
        raise DataError(
            f"a view expects a (B, {channels}, H, W) uint8 or float batch; got shape "
            f"{tuple(images.shape)} of {images.dtype}; check dataset.to_rgb and the dataset's channels"
        )
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


@contextlib.contextmanager
def view_mode(images: torch.Tensor) -> Iterator[None]:
    """Views run without gradients and in float32 even inside a mixed-precision (autocast) training step."""
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        yield


class Normalize(nn.Module):
    """(..., C, H, W) -> (x - mean) / std per channel; the constants are not saved in checkpoints."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images)) / self.std.to(images)


def to_device(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` (a view's parameters, drawn on the CPU) on ``device``, values, dtypes and shapes unchanged. The CPU
    ones travel in ONE non-blocking copy of their bytes packed together (a blocking copy from pageable memory
    synchronises the CUDA stream: the CPU would wait for the GPU once per op and step); others are moved with
    ``non_blocking=True``. On the CPU the copy is a no-op and the same packing runs.

    Packed tensors come back as views of one buffer, at ``PACK_ALIGN``-byte offsets: copy one before handing it to a
    ``torch.compile``d function (``CompiledOrEager``), whose kernel for an input at a nonzero storage offset can round
    differently (by an ulp)."""
    device = torch.device(device)
    packed = [i for i, t in enumerate(tensors) if t.device.type == "cpu"]
    packed = packed if len(packed) > 1 else []
    moved = [t if i in packed else t.to(device, non_blocking=True) for i, t in enumerate(tensors)]
    if packed:
        pieces, starts, total = [], [], 0
        for i in packed:
            raw = tensors[i].reshape(-1).view(torch.uint8)
            pad = -raw.numel() % PACK_ALIGN
            pieces += [raw, raw.new_zeros(pad)] if pad else [raw]
            starts.append(total)
            total += raw.numel() + pad
        buffer = torch.cat(pieces).to(device, non_blocking=True)
        for i, start in zip(packed, starts):
            t = tensors[i]
            moved[i] = buffer[start : start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
    return tuple(moved)


def make_stateless(module: nn.Module) -> nn.Module:
    """Turn every parameter and buffer below ``module`` into a non-persistent buffer (kornia's policy ops keep
    their probabilities and magnitudes as trainable parameters): a view has nothing to train, and a checkpoint
    never depends on how the views are implemented. Returns ``module``, changed in place."""
    for sub in module.modules():
        for name in list(sub._parameters):
            value = sub._parameters.pop(name)
            sub.register_buffer(name, None if value is None else value.detach(), persistent=False)
        sub._non_persistent_buffers_set.update(sub._buffers.keys())
    return module
