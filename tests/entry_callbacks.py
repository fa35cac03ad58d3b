"""Callbacks the resilience tests put into subprocess runs. Kept apart from the test modules: importing those
imports conftest, which sets torch's thread count, and a run whose thread count differs from the run it is
compared with rounds differently (with OMP_NUM_THREADS=1 the DDP resume test failed for that reason alone)."""

import pytorch_lightning as pl
import torch


class Crash(pl.Callback):
    """Simulates ``kill -9``: the process dies without any handler writing a checkpoint."""

    def __init__(self, before_step: int | None = None, end_of_epoch: int | None = None):
        self.before_step, self.end_of_epoch = before_step, end_of_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.before_step:
            raise RuntimeError("simulated kill -9")

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.end_of_epoch:
            raise RuntimeError("simulated kill -9")


class RecordGenerator(pl.Callback):
    """Writes each rank's torch generator state when training starts (after setup and any resume)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_start(self, trainer, pl_module):
        torch.save(torch.get_rng_state(), f"{self.out_dir}/rng_rank{trainer.global_rank}.pt")
