"""Training callbacks beyond logging and checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from mvmr.parallel import wait_for_every_process
from mvmr.representations.cache import RepresentationCache


class RepresentationCacheCallback(pl.Callback):
    """Before training, compute every deterministic φ_k(x̄) of the pretraining set once, on the training device,
    and hand the cache to the module.

    Under DDP global rank 0 builds first; then the first process of every other node (which finds rank 0's files
    when cache.dir is shared, and builds its own when it is node-local); then the other processes reuse the
    files. The waits go through :func:`mvmr.parallel.wait_for_every_process`, which allows a build of hours.
    A cache that would exceed the free space of cache.dir or cache.max_gb is refused (one-line ConfigError,
    nothing computed), on every rank under DDP."""

    def __init__(self, cfg, datamodule, root: Path):
        self.cfg, self.datamodule, self.root = cfg, datamodule, root

    def fingerprint(self, module) -> dict:
        d = self.cfg.dataset
        return {
            "dataset": {
                "name": d.name,
                "path": d.path,
                "size": d.size,
                "to_rgb": d.to_rgb,
                "classes_file": d.classes_file,
                "val_fraction": d.val_fraction,
                "seed": self.cfg.seed,
                "load_size": d.load_size,
                "n": self.datamodule.num_pretrain_samples,
            },
            "view": {"mean": list(module.info.mean), "std": list(module.info.std), "size": d.size},
            "representations": {
                k: {"name": r.name, "params": r.params}
                for k, r in zip(module.representations.keys(), self.cfg.representations)
            },
        }

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not any(getattr(r, "deterministic", False) for r in pl_module.representations.values()):
            return
        dtype = torch.float16 if self.cfg.cache.dtype == "float16" else torch.float32
        loader = self.datamodule.pretrain_dataloader(shuffle=False, drop_last=False)
        # Lightning calls setup before it moves the module to the GPU: pl_module.device is still the CPU here
        device = trainer.strategy.root_device

        common = dict(
            representations=dict(pl_module.representations),
            loader=loader,
            eval_view=pl_module.eval_view.to(device),
            root=self.root,
            fingerprint=self.fingerprint(pl_module),
            device=device,
            dtype=dtype,
            max_dim=self.cfg.cache.max_dim,
            seed=self.cfg.seed,
            max_gb=self.cfg.cache.max_gb,
        )

        def build():
            return RepresentationCache.build(
                **common, progress=trainer.is_global_zero and self.cfg.trainer.progress_bar
            )

        if trainer.world_size > 1:  # a refusal must stop every rank, not leave the others waiting at the barrier
            RepresentationCache.check_fits(**common)
        cache = None
        for builds_in_this_turn in (trainer.is_global_zero, trainer.local_rank == 0):
            if builds_in_this_turn and cache is None:
                cache = build()
            wait_for_every_process()
        pl_module.representation_cache = cache if cache is not None else build()


def build_callbacks(cfg, module, datamodule, run) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = []
    if cfg.cache.enabled and len(module.representations):
        root = Path(cfg.cache.dir) if cfg.cache.dir else Path(cfg.run_dir) / "cache"
        callbacks.append(RepresentationCacheCallback(cfg, datamodule, root))
    return callbacks
