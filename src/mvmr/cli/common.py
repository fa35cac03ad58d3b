"""Plumbing shared by every entry script: flags, errors, run directories, trainer, tuning, resume."""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch

from mvmr.checkpoint import AtomicCheckpointIO
from mvmr.config import config_yaml, save_config
from mvmr.errors import ConfigError, MVMRError


# ------------------------------------------------------------------------------ errors and flags
def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (a bad value is a one-line usage error, not a traceback later)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def run_main(fn: Callable[[Sequence[str] | None], Any]) -> Callable[[Sequence[str] | None], int]:
    """Wrap an entry point: MVMRError -> 'error: ...' on stderr and exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            fn(argv)
        except MVMRError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: re-run the same command to resume from the last checkpoint", file=sys.stderr)
            return 130
        return 0

    return wrapper


def add_common_flags(parser: argparse.ArgumentParser, *, tuning: bool = True) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted, YAML-typed), e.g. --set dataset.size=32; repeatable")
    parser.add_argument("--print_config", action="store_true",
                        help="print the resolved config as YAML (what <run>/config.yaml holds) and exit, without "
                             "building a model or reading data")
    if tuning:
        parser.add_argument("--auto_bs", action="store_true", help="find the largest batch size that fits (Lightning Tuner)")
        parser.add_argument("--auto_lr", action="store_true", help="pick the learning rate with Lightning's LR finder")
        parser.add_argument("--resume", default=None, metavar="CKPT", help="resume from this checkpoint")


def configure_runtime() -> None:
    """Quiet, predictable defaults for every script."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pytorch_lightning.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_float32_matmul_precision("high")


# ------------------------------------------------------------------------------ hardware
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
        raise ConfigError("trainer.accelerator is 'gpu' but no CUDA device is visible; use trainer.accelerator=auto or cpu")
    if requested == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_precision(fp16: bool, accelerator: str) -> str:
    """``fp16: true`` -> bf16-mixed where the hardware has bf16, 16-mixed on older GPUs; else 32-true."""
    if not fp16:
        return "32-true"
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


# ------------------------------------------------------------------------------ run directories
@dataclass
class RunDir:
    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @classmethod
    def for_config(cls, cfg: Any, config_path: str | None, default_name: str) -> "RunDir":
        """``<run_dir>/<name>``: name from the config, else the config file's stem (+ comment).

        With ``resume: false`` and an existing run of that name, a new timestamped folder is used,
        so nothing earlier is overwritten.
        """
        name = cfg.name or (Path(config_path).stem if config_path else default_name)
        if cfg.comment and not cfg.name:
            name = f"{name}_{re.sub(r'[^A-Za-z0-9_.-]+', '-', cfg.comment)}"
        path = Path(cfg.run_dir) / name
        if not cfg.resume and (path / "checkpoints").exists():
            path = path.with_name(f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)


def resume_checkpoint(cfg: Any, run: RunDir, explicit: str | None) -> str | None:
    """The checkpoint to continue from (explicit --resume, else the run's last.ckpt when resume is on)."""
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"--resume: checkpoint '{explicit}' not found")
        print(f"Resuming from {explicit}")
        return explicit
    if cfg.resume and run.last.is_file():
        print(f"Resuming from {run.last} (pass --set resume=false to start a fresh run)")
        return str(run.last)
    return None


# ------------------------------------------------------------------------------ trainer
def check_precision_fits_model(backbone: torch.nn.Module, channels: int, size: int, precision: str,
                               accelerator: str) -> None:
    """PyTorch's CPU bf16 convolution computes wrong weight gradients for a strided 3x3 convolution whose input is
    1x1 (measured with torch 2.14: different values on every call, sometimes NaN or 1e31; float32 and 2x2 inputs
    are right). Refuse that combination with a one-line fix instead of training on garbage. With
    ``encoder.small_map_matmul`` (the default) such a layer runs as a matrix product instead and is not refused."""
    if precision != "bf16-mixed" or accelerator != "cpu":
        return
    from mvmr.models.encoder import strided_convs_on_single_pixels

    names = strided_convs_on_single_pixels(backbone, channels, size)
    if names:
        raise ConfigError(f"dataset.size={size} leaves 1x1 feature maps at the strided convolution '{names[0]}', "
                          f"where PyTorch's CPU bf16 convolution computes wrong weight gradients; use a larger "
                          f"dataset.size, encoder.small_kernel=true, encoder.small_map_matmul=true, or fp16=false")


def build_trainer(cfg: Any, run: RunDir, *, monitor: str | None, callbacks: list | None = None,
                  max_epochs: int | None = None, module: Any = None) -> pl.Trainer:
    """A Lightning Trainer with the project's logging, atomic checkpoints and hardware settings. With ``module``
    (it has ``backbone`` and ``info``), first refuse a precision the backbone cannot train with at this size."""
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from mvmr.methods.resilience import (MidEpochResume, PeriodicCheckpoint, ResumableCSVLogger, RNGStateCallback,
                                         SaveOnInterrupt)

    accelerator = resolve_accelerator(cfg.trainer.accelerator)
    precision = cfg.trainer.precision or resolve_precision(cfg.fp16, accelerator)
    if module is not None:
        check_precision_fits_model(module.backbone, module.info.channels, cfg.dataset.size, precision, accelerator)
    # `last` gets its own callback: Lightning 2.6 writes save_last only when a top-k checkpoint was written
    # in the same step, so a run whose best stopped improving would resume from an old epoch
    last = ModelCheckpoint(dirpath=run.checkpoints, filename="last", monitor=None, save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    checkpoints = [last]
    if monitor is not None:
        checkpoints.insert(0, ModelCheckpoint(
            dirpath=run.checkpoints, filename="best", monitor=monitor, mode="max", save_top_k=1,
            auto_insert_metric_name=False, enable_version_counter=False, every_n_epochs=cfg.eval_every))
    loggers = [ResumableCSVLogger(save_dir=run.path.parent, name=run.path.name, version=""),
               TensorBoardLogger(save_dir=run.path, name="tensorboard", version="")]
    return pl.Trainer(
        accelerator=accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy, sync_batchnorm=cfg.trainer.sync_batchnorm, precision=precision,
        max_epochs=max_epochs or cfg.epochs, max_steps=cfg.trainer.max_steps,
        limit_train_batches=cfg.trainer.limit_train_batches, limit_val_batches=cfg.trainer.limit_val_batches,
        accumulate_grad_batches=cfg.accumulate_grad_batches, check_val_every_n_epoch=cfg.eval_every,
        gradient_clip_val=cfg.gradient_clip_val,
        log_every_n_steps=cfg.log_every,
        callbacks=[*checkpoints, LearningRateMonitor("step"), RNGStateCallback(cfg.seed), SaveOnInterrupt(run.last),
                   PeriodicCheckpoint(run.last, cfg.trainer.checkpoint_every_n_steps,
                                      cfg.trainer.checkpoint_every_minutes),
                   MidEpochResume(), *(callbacks or [])],
        logger=loggers, plugins=[AtomicCheckpointIO()], deterministic=cfg.deterministic,
        enable_progress_bar=cfg.trainer.progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(run.path))


def tune(cfg: Any, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, auto_bs: bool,
         auto_lr: bool) -> None:
    """Lightning's batch-size scaler / LR finder on one device; suggestions go into the config."""
    if not (auto_bs or auto_lr):
        return
    if trainer.world_size > 1:
        raise ConfigError("--auto_bs/--auto_lr tune on one device: run once with --set trainer.devices=1 to get the "
                          "suggestions, then launch the multi-device run with --set batch_size=... lr=...")
    from pytorch_lightning.tuner import Tuner

    tuner = Tuner(trainer)
    if auto_bs:
        found = tuner.scale_batch_size(module, datamodule=datamodule, mode="binsearch", max_trials=8)
        cfg.batch_size = cfg.batch_size_suggested = int(found or cfg.batch_size)
        datamodule.batch_size = cfg.batch_size
        print(f"--auto_bs: batch_size = {cfg.batch_size}")
    if auto_lr:
        max_epochs = trainer.fit_loop.max_epochs
        trainer.fit_loop.max_epochs = 10**6  # small datasets: the 60 finder steps may span several epochs
        try:
            finder = tuner.lr_find(module, datamodule=datamodule, min_lr=1e-6, max_lr=1.0, num_training=60,
                                   early_stop_threshold=None)  # the MV-MR loss is not a CE: no "diverged" cut
        finally:
            trainer.fit_loop.max_epochs = max_epochs
        suggestion = finder.suggestion() if finder is not None else None
        if suggestion:
            cfg.lr = cfg.lr_suggested = float(suggestion)
            module.lr = cfg.lr
            print(f"--auto_lr: lr = {cfg.lr:.3g}")
        else:
            print(f"--auto_lr: the LR finder gave no suggestion; keeping lr = {cfg.lr:.3g}")


def write_run_config(cfg: Any, run: RunDir) -> None:
    save_config(cfg, run.path / "config.yaml")


def print_config(cfg: Any) -> None:
    """The resolved config as YAML on stdout (the same text as <run>/config.yaml)."""
    print(config_yaml(cfg), end="")


# ------------------------------------------------------------------------------ tables
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into the README)."""
    cells = [[str(h) for h in headers]] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])
