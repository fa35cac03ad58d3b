"""Long runs that lose nothing: metrics appended across resumes, RNG state in checkpoints, a `last`
checkpoint written when the run is interrupted (Ctrl-C / SIGTERM)."""
from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

RNG_KEY = "mvmr_rng_state"


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
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
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


class RNGStateCallback(pl.Callback):
    """Save the generators with every checkpoint and restore them on resume: per-sample views, shuffling and
    ``augmented_pixels`` then continue exactly where the interrupted run stopped."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng_state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if RNG_KEY in checkpoint:
            set_rng_state(checkpoint[RNG_KEY])


class SaveOnInterrupt(pl.Callback):
    """On Ctrl-C or SIGTERM, write ``last`` (atomically) before Lightning shuts down, and say how to resume."""

    def __init__(self, last_path: Path):
        self.last_path = Path(last_path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "SIGTERMException"
        if not interrupted or trainer.world_size > 1 or trainer.global_step == 0:
            return
        trainer.save_checkpoint(self.last_path)
        print(f"\ninterrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: saved {self.last_path}; "
              "re-run the same command to resume", file=sys.stderr)
