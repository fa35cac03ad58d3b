"""Precision chosen per GPU generation, checked by faking torch.cuda's answers (no GPU in CI)."""

from types import SimpleNamespace

import pytest
import torch

from mvmr.hardware import resolve_precision


@pytest.fixture
def fake_gpu(monkeypatch):
    """A visible CUDA device of compute capability ``major``.x whose bf16 emulation works (as torch's does on
    V100/T4); returns a setter for ``major``."""
    props = SimpleNamespace(major=7, minor=0)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    return lambda major: setattr(props, "major", major)


def test_pre_ampere_gpus_get_fp16_mixed_not_emulated_bf16(fake_gpu):
    fake_gpu(7)  # V100 (7.0), T4 (7.5): bf16 only emulated, without tensor cores
    assert torch.cuda.is_bf16_supported()  # torch's default counts the emulation
    assert resolve_precision(True, "gpu") == "16-mixed"


def test_ampere_and_later_get_bf16_mixed(fake_gpu):
    for major in (8, 9):  # A100, H100
        fake_gpu(major)
        assert resolve_precision(True, "gpu") == "bf16-mixed"


def test_fp16_false_is_full_precision_everywhere(fake_gpu):
    assert resolve_precision(False, "gpu") == "32-true"
    assert resolve_precision(False, "cpu") == "32-true"
