"""Long runs that lose nothing: metrics appended across resumes, RNG state in checkpoints, a `last`
checkpoint written when the run is interrupted (Ctrl-C / SIGTERM) and every few steps or minutes (kill -9),
and a mid-epoch resume that continues with the batches the run had not seen yet."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from mvmr import messages

RNG_KEY = "mvmr_rng_state"
RNG_PER_RANK_KEY = "mvmr_rng_state_per_rank"


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; on resume we keep it and append."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose metrics.csv survives a resume in the same run directory."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def rng_state() -> dict:
    """The Python, NumPy, torch (and CUDA) generator states, as types ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_seed(seed: int, rank: int) -> int:
    """An independent 32-bit seed for DDP rank ``rank`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA's with torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RNGStateCallback(pl.Callback):
    """Save the generators with every checkpoint and restore them on resume: per-sample views, shuffling and
    ``augmented_pixels`` then continue exactly where the interrupted run stopped.

    Under DDP every rank starts from the same ``seed_everything`` seed, so the views (drawn on the device from
    the global generator) would give sample j of every rank the same crop, jitter and blur. Ranks > 0 therefore
    reseed from ``rank_seed(seed, rank)`` at setup (rank 0 keeps the single-process stream), and every rank's
    state is gathered into the checkpoint and given back to that rank on resume."""

    def __init__(self, seed: int):
        self.seed = seed

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size > 1 and trainer.global_rank > 0:
            seed_generators(rank_seed(self.seed, trainer.global_rank))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng_state()  # rank 0's: the file is written by rank 0
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            states = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, checkpoint[RNG_KEY])
            checkpoint[RNG_PER_RANK_KEY] = states

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        per_rank = checkpoint.get(RNG_PER_RANK_KEY)
        if per_rank is not None and len(per_rank) == trainer.world_size:
            set_rng_state(per_rank[trainer.global_rank])
        elif trainer.global_rank == 0 and RNG_KEY in checkpoint:
            set_rng_state(checkpoint[RNG_KEY])
            if trainer.world_size > 1:
                messages.info(
                    f"the checkpoint's generators are from {len(per_rank or [0])} process(es), this run has "
                    f"{trainer.world_size}: ranks > 0 continue with fresh per-rank seeds"
                )


class SaveOnInterrupt(pl.Callback):
    """On Ctrl-C or SIGTERM, write ``last`` (atomically) before Lightning shuts down, and say how to resume."""

    def __init__(self, last_path: Path):
        self.last_path = Path(last_path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "SIGTERMException"
        if not interrupted or trainer.world_size > 1 or trainer.global_step == 0:
            return
        trainer.save_checkpoint(self.last_path)
        messages.warn(
            f"\ninterrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: saved "
            f"{self.last_path}; re-run the same command to resume"
        )


class PeriodicCheckpoint(pl.Callback):
    """Write ``last`` every ``every_n_steps`` optimiser steps and/or every ``every_minutes`` of training, so a
    ``kill -9`` or a lost node costs at most that much (0 turns a trigger off). Each optimiser step is considered
    once, right after it (not again on the micro-batches of gradient accumulation).

    Under DDP every rank must save at the same step, and rank 0's clock decides: the ranks ask rank 0 only on steps
    that are multiples of ``time_check_every_n_steps`` (one broadcast of a one-element tensor), not on every step,
    so a timed save comes at most ``time_check_every_n_steps - 1`` optimiser steps after rank 0's clock says it is
    due. A single process reads its clock every step and holds no collective."""

    time_check_every_n_steps = 16

    def __init__(self, last_path: Path, every_n_steps: int = 0, every_minutes: float = 0.0):
        self.last_path, self.every_n_steps, self.every_minutes = Path(last_path), every_n_steps, every_minutes
        self._saved_at_time, self._considered_step = time.monotonic(), -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_at_time = time.monotonic()
        self._considered_step = trainer.global_step  # the first step of this run (or of the resumed one) is next

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._considered_step:  # gradient accumulation: no new optimiser step yet
            return
        self._considered_step = step
        due = self.every_n_steps > 0 and step % self.every_n_steps == 0
        if not due and self.every_minutes > 0:
            due = self._time_is_up(trainer, step)
        if due:
            trainer.save_checkpoint(self.last_path)
            self._saved_at_time = time.monotonic()

    def _time_is_up(self, trainer, step: int) -> bool:
        """Whether ``every_minutes`` have passed since the last save, by rank 0's clock on every rank. Every rank
        sees the same ``global_step``, so every rank enters the broadcast at the same step."""
        late = time.monotonic() - self._saved_at_time >= 60 * self.every_minutes
        if trainer.world_size == 1:
            return late
        if step % self.time_check_every_n_steps != 0:
            return False
        return _rank_zero_flag(trainer, late)


def _rank_zero_flag(trainer, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank: a one-element tensor broadcast on the strategy's device (the rank's GPU
    under NCCL, the CPU under gloo on CPUs); the strategy's object broadcast outside torch.distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return bool(trainer.strategy.broadcast(flag, src=0))
    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=trainer.strategy.root_device)
    torch.distributed.broadcast(tensor, src=0)
    return bool(tensor.item())


class MidEpochResume(pl.Callback):
    """On resume from a checkpoint written inside an epoch, tell the DataModule how many of that epoch's batches
    were already trained on, so the resumed epoch continues with the next batch of the same permutation instead
    of seeing the first ones twice (under DDP every rank skips its own shard's first batches)."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop")
        datamodule = trainer.datamodule
        if not fit_loop or not hasattr(datamodule, "resume_within_epoch"):
            return
        epoch = fit_loop["epoch_progress"]["current"]["processed"]
        batches_done = fit_loop["epoch_loop.batch_progress"]["current"]["processed"]
        if batches_done > 0:
            datamodule.resume_within_epoch(epoch, batches_done)
