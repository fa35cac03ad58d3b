"""Hardware and precision: where to run, which mixed precision the hardware supports, and a guard against a
known wrong-gradient case of PyTorch's CPU bf16 convolution."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mvmr.errors import ConfigError
from mvmr.models.encoder import strided_convs_on_single_pixels


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def default_device() -> torch.device:
    """Where the evaluation scripts run: the first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_accelerator(requested: str) -> str:
    if requested == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.accelerator is 'gpu' but no CUDA device is visible; use trainer.accelerator=auto or cpu"
        )
    if requested == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_precision(fp16: bool, accelerator: str) -> str:
    """``fp16: true`` -> bf16-mixed where the hardware has bf16, 16-mixed on older GPUs; else 32-true.

    A GPU counts as having bf16 only natively (Ampere and later): torch's default also counts the emulation that
    pre-Ampere GPUs (V100, T4) offer, which runs bf16 without tensor cores, far slower than their 16-mixed."""
    if not fp16:
        return "32-true"
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


def check_precision_fits_model(
    backbone: torch.nn.Module, channels: int, size: int, precision: str, accelerator: str
) -> None:
    """PyTorch's CPU bf16 convolution computes wrong weight gradients for a strided 3x3 convolution whose input is
    1x1 (measured with torch 2.14: different values on every call, sometimes NaN or 1e31; float32 and 2x2 inputs
    are right). Refuse that combination with a one-line fix instead of training on garbage. With
    ``encoder.small_map_matmul`` (the default) such a layer runs as a matrix product instead and is not refused."""
    if precision != "bf16-mixed" or accelerator != "cpu":
        return
    names = strided_convs_on_single_pixels(backbone, channels, size)
    if names:
        raise ConfigError(
            f"dataset.size={size} leaves 1x1 feature maps at the strided convolution '{names[0]}', "
            f"where PyTorch's CPU bf16 convolution computes wrong weight gradients; use a larger "
            f"dataset.size, encoder.small_kernel=true, encoder.small_map_matmul=true, or fp16=false"
        )
