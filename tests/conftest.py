"""Shared fixtures: one tiny pretraining run reused by the end-to-end tests."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits_self_supervised.yaml")

torch.set_num_threads(min(2, os.cpu_count() or 1))

# A few optimiser steps on 16x16 digits: enough to exercise every part, small enough for CI.
TINY = [
    "epochs=2",
    "warmup_epochs=0",
    "batch_size=32",
    "dataset.size=16",
    "encoder.out_dim=64-64",
    "encoder.width=16",  # 0.7M parameters instead of 11M: small checkpoints instead of 135 MB ones
    "trainer.limit_train_batches=3",
    "trainer.progress_bar=false",
    "eval.epochs=3",
    "eval.lrs=[0.01]",
    "eval.wds=[0.0]",
    "log_every=1",
    "dataset.to_rgb=true",
    "fp16=false",
]  # 16 px leaves 1x1 maps at layer4, where CPU bf16 convolution gradients are wrong (mvmr.hardware)


def load_benchmark(name: str):
    """The module benchmarks/<name>.py (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_args(run_dir: Path, name: str = "tiny", extra: list[str] | None = None) -> list[str]:
    args = ["--config", DIGITS]
    for item in TINY + [f"run_dir={run_dir}", f"name={name}"] + list(extra or []):
        args += ["--set", item]
    return args


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """(run directory, argv) of a finished tiny digits pretraining run (RGB, so VOC can use it)."""
    from mvmr.cli.pretrain import pretrain

    run_dir = tmp_path_factory.mktemp("runs")
    args = tiny_args(run_dir)
    run = pretrain(args)
    return run, args


def assert_boxes_like(
    ours: torch.Tensor,
    ref: torch.Tensor,
    height: int,
    width: int,
    tol_area: float = 0.02,
    tol_aspect: float = 0.02,
    tol_offset: float = 0.02,
) -> None:
    """Boxes (N, 4) = (top, left, h, w): ours lie inside the image on whole pixels, and the mean and std of their
    area fraction, log aspect and relative offsets match the reference sampler's boxes within the tolerances."""
    top, left, h, w = ours.double().unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    assert torch.equal(ours, ours.round())
    ref = ref.double()
    for a, b, tol in [
        (h * w / (height * width), ref[:, 2] * ref[:, 3] / (height * width), tol_area),
        (torch.log(w / h), torch.log(ref[:, 3] / ref[:, 2]), tol_aspect),
        (top / height, ref[:, 0] / height, tol_offset),
        (left / width, ref[:, 1] / width, tol_offset),
    ]:
        assert abs(a.mean() - b.mean()) < tol and abs(a.std() - b.std()) < tol
