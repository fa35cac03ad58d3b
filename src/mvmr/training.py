"""The training run around a Lightning module: quiet runtime defaults, the run directory, the resume point, the
Trainer with this project's logging, atomic checkpoints and resilience callbacks, and the Tuner."""

from __future__ import annotations

import datetime
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.tuner import Tuner

from mvmr import messages
from mvmr.checkpoint import AtomicCheckpointIO
from mvmr.config import config_yaml, save_config
from mvmr.errors import ConfigError
from mvmr.hardware import check_precision_fits_model, resolve_accelerator, resolve_precision
from mvmr.methods.resilience import (
    MidEpochResume,
    PeriodicCheckpoint,
    ResumableCSVLogger,
    RNGStateCallback,
    SaveOnInterrupt,
)

# Lightning's info lines that say nothing about this run: advertisements, the accelerators it did not find, and
# how it counts steps
LIGHTNING_NOISE = (
    "💡 Tip",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader` to estimate",
    "was configured so 100%",
)


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LIGHTNING_NOISE) and "was configured so 100%" not in str(
            record.getMessage()
        )


def configure_runtime() -> None:
    """Quiet, predictable defaults for every script."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pytorch_lightning.*")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningNoise) for f in logger.filters):
            logger.addFilter(_DropLightningNoise())
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU compiles
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_float32_matmul_precision("high")


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

        With ``resume: false`` and an existing run of that name, a new folder is used, so nothing earlier is
        overwritten: ``<name>-<suffix>``, the suffix being the launcher's job id where there is one (torchrun's
        run id, SLURM's job id), else the time. Every DDP process must agree on it: the processes Lightning
        starts for the other GPUs inherit the first one's choice (``MVMR_RUN_PATH``) instead of choosing again
        seconds later.
        """
        inherited = os.environ.get(RUN_PATH_ENV)
        if inherited and _local_rank() > 0:  # a process Lightning started for another GPU of this run
            return cls(Path(inherited))
        name = cfg.name or (Path(config_path).stem if config_path else default_name)
        if cfg.comment and not cfg.name:
            name = f"{name}_{re.sub(r'[^A-Za-z0-9_.-]+', '-', cfg.comment)}"
        path = Path(cfg.run_dir) / name
        if not cfg.resume and (path / "checkpoints").exists():
            path = path.with_name(f"{name}-{_launch_suffix()}")
        path.mkdir(parents=True, exist_ok=True)
        os.environ[RUN_PATH_ENV] = str(path)
        return cls(path)


RUN_PATH_ENV = "MVMR_RUN_PATH"  # the run folder the first process chose, for the processes it starts


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0") or 0)
    except ValueError:
        return 0


def _launch_suffix() -> str:
    """The same on every process of one launch: torchrun's run id or SLURM's job id, else the current time."""
    for key in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        value = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.environ.get(key, "")).strip("-")
        if value and value != "none":
            return value
    return f"{datetime.datetime.now():%Y%m%d-%H%M%S}"


def resume_checkpoint(cfg: Any, run: RunDir, explicit: str | None) -> str | None:
    """The checkpoint to continue from (explicit --resume, else the run's last.ckpt when resume is on)."""
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"--resume: checkpoint '{explicit}' not found")
        messages.info(f"Resuming from {explicit}")
        return explicit
    if cfg.resume and run.last.is_file():
        messages.info(f"Resuming from {run.last} (pass --set resume=false to start a fresh run)")
        return str(run.last)
    return None


def _limit(value: int | float) -> int | float | None:
    """A limit_*_batches value for Lightning: None for "all" (1.0), which it otherwise announces on every run."""
    return None if isinstance(value, float) and value == 1.0 else value


def build_trainer(
    cfg: Any,
    run: RunDir,
    *,
    monitor: str | None,
    callbacks: list | None = None,
    max_epochs: int | None = None,
    module: Any = None,
) -> pl.Trainer:
    """A Lightning Trainer with the project's logging, atomic checkpoints and hardware settings. With ``module``
    (it has ``backbone`` and ``info``), first refuse a precision the backbone cannot train with at this size."""
    accelerator = resolve_accelerator(cfg.trainer.accelerator)
    precision = cfg.trainer.precision or resolve_precision(cfg.fp16, accelerator)
    if module is not None:
        check_precision_fits_model(module.backbone, module.info.channels, cfg.dataset.size, precision, accelerator)
    # `last` gets its own callback: Lightning 2.6 writes save_last only when a top-k checkpoint was written
    # in the same step, so a run whose best stopped improving would resume from an old epoch
    last = ModelCheckpoint(
        dirpath=run.checkpoints,
        filename="last",
        monitor=None,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    checkpoints = [last]
    if monitor is not None:
        checkpoints.insert(
            0,
            ModelCheckpoint(
                dirpath=run.checkpoints,
                filename="best",
                monitor=monitor,
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
                every_n_epochs=cfg.eval_every,
            ),
        )
    loggers = [
        ResumableCSVLogger(save_dir=run.path.parent, name=run.path.name, version=""),
        TensorBoardLogger(save_dir=run.path, name="tensorboard", version=""),
    ]
    return pl.Trainer(
        accelerator=accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        sync_batchnorm=cfg.trainer.sync_batchnorm,
        precision=precision,
        max_epochs=max_epochs or cfg.epochs,
        max_steps=cfg.trainer.max_steps,
        limit_train_batches=_limit(cfg.trainer.limit_train_batches),
        limit_val_batches=_limit(cfg.trainer.limit_val_batches),
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        check_val_every_n_epoch=cfg.eval_every,
        gradient_clip_val=cfg.gradient_clip_val,
        log_every_n_steps=cfg.log_every,
        callbacks=[
            *checkpoints,
            LearningRateMonitor("step"),
            RNGStateCallback(cfg.seed),
            SaveOnInterrupt(run.last),
            PeriodicCheckpoint(run.last, cfg.trainer.checkpoint_every_n_steps, cfg.trainer.checkpoint_every_minutes),
            MidEpochResume(),
            *(callbacks or []),
        ],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        deterministic=cfg.deterministic,
        enable_progress_bar=cfg.trainer.progress_bar,
        default_root_dir=str(run.path),
        # cuDNN's autotuner: the inputs keep one size, so the fastest convolution kernels are found once (no effect
        # on CPUs); off with deterministic, where it would pick kernels by timing
        **{
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "benchmark": not cfg.deterministic,
            **cfg.trainer.args,
        },
    )


def tune(
    cfg: Any, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, auto_bs: bool, auto_lr: bool
) -> None:
    """Lightning's batch-size scaler / LR finder on one device; suggestions go into the config."""
    if not (auto_bs or auto_lr):
        return
    if trainer.world_size > 1:
        raise ConfigError(
            "--auto_bs/--auto_lr tune on one device: run once with --set trainer.devices=1 to get the "
            "suggestions, then launch the multi-device run with --set batch_size=... lr=..."
        )

    tuner = Tuner(trainer)
    if auto_bs:
        found = tuner.scale_batch_size(module, datamodule=datamodule, mode="binsearch", max_trials=8)
        cfg.batch_size = cfg.batch_size_suggested = int(found or cfg.batch_size)
        datamodule.batch_size = cfg.batch_size
        messages.info(f"--auto_bs: batch_size = {cfg.batch_size}")
    if auto_lr:
        max_epochs = trainer.fit_loop.max_epochs
        trainer.fit_loop.max_epochs = 10**6  # small datasets: the 60 finder steps may span several epochs
        try:
            finder = tuner.lr_find(
                module, datamodule=datamodule, min_lr=1e-6, max_lr=1.0, num_training=60, early_stop_threshold=None
            )  # the MV-MR loss is not a CE: no "diverged" cut
        finally:
            trainer.fit_loop.max_epochs = max_epochs
        suggestion = finder.suggestion() if finder is not None else None
        if suggestion:
            cfg.lr = cfg.lr_suggested = float(suggestion)
            module.lr = cfg.lr
            messages.info(f"--auto_lr: lr = {cfg.lr:.3g}")
        else:
            messages.info(f"--auto_lr: the LR finder gave no suggestion; keeping lr = {cfg.lr:.3g}")


def write_run_config(cfg: Any, run: RunDir) -> None:
    save_config(cfg, run.path / "config.yaml")


def print_config(cfg: Any) -> None:
    """The resolved config as YAML on stdout (the same text as <run>/config.yaml)."""
    messages.info(config_yaml(cfg).rstrip("\n"))
