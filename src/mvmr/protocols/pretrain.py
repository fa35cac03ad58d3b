"""MV-MR pretraining and distillation: data, module, callbacks, trainer, fit, and the report of the online probe."""

from __future__ import annotations

import pytorch_lightning as pl

from mvmr import messages
from mvmr.checkpoint import copy_backbone_weights, read_checkpoint
from mvmr.checkpoint_formats import read_weights
from mvmr.config import PretrainConfig
from mvmr.data import MVMRDataModule
from mvmr.errors import ConfigError
from mvmr.methods.callbacks import build_callbacks
from mvmr.methods.pretrain import MVMRPretrainModule
from mvmr.tables import format_table
from mvmr.training import RunDir, build_trainer, configure_runtime, resume_checkpoint, tune, write_run_config


def load_encoder_weights(module: MVMRPretrainModule, path: str) -> None:
    """``fine_tune_from``: copy the backbone (and the projector when its shapes match) of a checkpoint of this
    project or of the authors' code; a one-line CheckpointError when the backbone differs from the config's."""
    found = read_weights(read_checkpoint(path), path, weights="online")
    copy_backbone_weights(module.backbone, found.backbone, path, found.where)
    own = module.projector.state_dict()
    theirs = found.projector or {}
    if theirs and set(theirs) == set(own) and all(theirs[k].shape == own[k].shape for k in own):
        module.projector.load_state_dict(theirs)
    elif theirs:
        messages.info(f"fine_tune_from: the projector of '{path}' differs from encoder.out_dim; it starts afresh")


def run_pretraining(args, cfg: PretrainConfig, require_teacher: bool = False) -> RunDir:
    """Pretrain (or distil, with ``require_teacher``) the run described by ``cfg``; ``args``: the parsed command
    line (config path, --resume, --auto_bs, --auto_lr)."""
    configure_runtime()
    if require_teacher and not any(r.name == "teacher" for r in cfg.representations or []):
        raise ConfigError(
            "distillation needs a teacher: add to representations e.g. "
            "{name: teacher, weight: 1.0, params: {kind: open_clip, model_name: ViT-B-16, "
            "pretrained: /path/to/weights.bin}}"
        )
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = MVMRDataModule(cfg.dataset, cfg.batch_size, cfg.n_workers, seed=cfg.seed)
    datamodule.setup("fit")
    module = MVMRPretrainModule(cfg, datamodule.info)
    if cfg.probe.enabled and module.probe is None:
        messages.info(
            f"{cfg.dataset.name} at '{cfg.dataset.path}' has no labels: no online probe and no test report "
            "(put images in train/<class>/ folders to get both)"
        )
    if cfg.fine_tune_from:
        load_encoder_weights(module, cfg.fine_tune_from)
    run = RunDir.for_config(cfg, args.config, "self_supervised")
    messages.info(f"Run directory: {run.path}")
    monitor = "val/top1" if module.probe is not None and cfg.dataset.val_fraction > 0 else None
    trainer = build_trainer(
        cfg, run, monitor=monitor, callbacks=extra_callbacks(cfg, module, datamodule, run), module=module
    )
    ckpt_path = resume_checkpoint(cfg, run, args.resume)
    if ckpt_path is None:
        tune(cfg, trainer, module, datamodule, args.auto_bs, args.auto_lr)
    write_run_config(cfg, run)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    report(trainer, module, datamodule, run)
    return run


def extra_callbacks(cfg, module, datamodule, run) -> list:
    """Callbacks beyond logging/checkpointing (the representation cache)."""
    return build_callbacks(cfg, module, datamodule, run)


def report(trainer: pl.Trainer, module: MVMRPretrainModule, datamodule, run: RunDir) -> None:
    """Online-probe accuracy of the best checkpoint on the test split, as a table."""
    if module.probe is None or not len(datamodule.test_dataset):
        messages.info(f"Checkpoints: {run.checkpoints}  (last{', best by val/top1' if run.best.is_file() else ''})")
        messages.info(f"Run directory: {run.path}")
        return
    ckpt = str(run.best) if run.best.is_file() else None
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)  # every rank takes part
    if not trainer.is_global_zero:
        return
    rows = [
        ["online probe (test)", results[0].get("test/top1", float("nan")), results[0].get("test/top5", float("nan"))]
    ]
    messages.info(format_table(["evaluation", "top-1 %", "top-5 %"], rows))
    messages.info(f"Checkpoints: {run.checkpoints}  (best by val/top1, last)")
    messages.info(f"Run directory: {run.path}")
