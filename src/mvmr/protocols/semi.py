"""Semi-supervised fine-tuning of a pretrained encoder on a labelled fraction, and its evaluation."""

from __future__ import annotations

import pytorch_lightning as pl

from mvmr import messages
from mvmr.config import SemiSupervisedConfig
from mvmr.data import LabelledDataModule, MVMRDataModule
from mvmr.data.views import build_test_view
from mvmr.errors import ConfigError
from mvmr.evaluation.features import extract_features
from mvmr.evaluation.metrics import topk_accuracy
from mvmr.hardware import default_device
from mvmr.methods.semi_supervised import SemiSupervisedModule
from mvmr.tables import format_table
from mvmr.training import RunDir, build_trainer, configure_runtime, resume_checkpoint, tune, write_run_config


def run_fine_tuning(args, cfg: SemiSupervisedConfig) -> RunDir:
    """Fine-tune the backbone of ``args.ckpt`` (or ``fine_tune_from``) with a linear head on the labelled
    (sub)set of ``cfg``'s data, then report the test split."""
    configure_runtime()
    path = args.ckpt or cfg.fine_tune_from
    if not path:
        raise ConfigError(
            "no pretrained checkpoint: pass --ckpt runs/<name>/checkpoints/best.ckpt or set fine_tune_from"
        )
    cfg.fine_tune_from = path
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = LabelledDataModule(cfg.dataset, cfg.batch_size, cfg.n_workers, seed=cfg.seed)
    dm.setup("fit")
    module = SemiSupervisedModule.from_pretrained(cfg, dm.info, path)
    if cfg.num_features is not None and cfg.num_features != module.feature_dim:
        raise ConfigError(
            f"num_features is {cfg.num_features} but the backbone of '{path}' gives "
            f"{module.feature_dim} features; fix num_features or remove it"
        )
    n_labelled = len(dm.labelled_train_dataloader(shuffle=False, drop_last=False).dataset)
    run = RunDir.for_config(cfg, args.config, "semi_supervised")
    messages.info(f"Run directory: {run.path}  ({n_labelled} labelled training images)")
    monitor = "val/top1" if cfg.dataset.val_fraction > 0 else None
    trainer = build_trainer(cfg, run, monitor=monitor, module=module)
    ckpt_path = resume_checkpoint(cfg, run, args.resume)
    if ckpt_path is None:
        tune(cfg, trainer, module, dm, args.auto_bs, args.auto_lr)
    write_run_config(cfg, run)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    results = trainer.test(
        module, datamodule=dm, ckpt_path=str(run.best) if run.best.is_file() else None, verbose=False
    )[0]  # every rank takes part under DDP
    if trainer.is_global_zero:
        messages.info(
            format_table(
                ["evaluation", "top-1 %", "top-5 %"],
                [[f"fine-tuned, {n_labelled} labels (test, center crop)", results["test/top1"], results["test/top5"]]],
            )
        )
    messages.info(f"Run directory: {run.path}")
    return run


def run_evaluation(args, cfg: SemiSupervisedConfig) -> dict[str, float]:
    """Top-1 / top-5 of a fine-tuned checkpoint on the test split."""
    configure_runtime()
    device = default_device()
    module = SemiSupervisedModule.from_checkpoint(args.ckpt).to(device).eval()
    dm = MVMRDataModule(cfg.dataset, cfg.eval.batch_size, cfg.n_workers, seed=cfg.seed)
    dm.setup("test")
    info, size = module.info, module.cfg.dataset.size
    view, crops = build_test_view(size, info.mean, info.std, cfg.eval.ten_crop, resize_to=info.eval_resize)
    view = view.to(device)
    logits, labels = extract_features(module, dm.test_dataloader(), view, device, "test", not args.no_progress)
    logits = logits.mean(1) if logits.ndim == 3 else logits
    acc = topk_accuracy(logits, labels)
    messages.info(
        format_table(
            ["evaluation", "top-1 %", "top-5 %"],
            [[f"semi-supervised ({crops}), {labels.numel()} test images", acc[1], acc[5]]],
        )
    )
    return {"top1": acc[1], "top5": acc[5]}
