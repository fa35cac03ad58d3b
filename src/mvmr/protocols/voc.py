"""VOC07 multi-label classification on frozen features: feature extraction, the head, per-class AP and mAP."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from mvmr import messages
from mvmr.api import load_frozen_backbone
from mvmr.config import PretrainConfig, VOCConfig, load_config
from mvmr.data import DatasetInfo
from mvmr.data.voc import VOC_CLASSES, resolve_eval_split
from mvmr.errors import CheckpointError, ConfigError
from mvmr.evaluation.features import voc_features
from mvmr.evaluation.voc import fit_linear_svms, mean_average_precision
from mvmr.hardware import default_device
from mvmr.methods.voc import fit_bce_head, load_voc_checkpoint, save_voc_checkpoint, svm_head
from mvmr.tables import format_table
from mvmr.training import RunDir, configure_runtime, write_run_config


def check_rgb(info, source: str) -> None:
    if info.channels != 3:
        raise CheckpointError(
            f"'{source}' was trained on {info.channels}-channel images; VOC07 is RGB: "
            "pretrain with 3 channels (dataset.to_rgb=true for grayscale data)"
        )


def voc_normalisation(self_cfg: PretrainConfig):
    """For a checkpoint without run settings (the authors'): the pretraining config's normalisation when it sets
    dataset.mean / dataset.std, else None (the loader's default)."""
    data = self_cfg.dataset
    if data.mean is None:
        return None
    return DatasetInfo(n_classes=0, channels=len(data.mean), mean=tuple(data.mean), std=tuple(data.std))


def run_training(args, cfg: VOCConfig) -> RunDir:
    """Extract frozen features of VOC07 trainval with the backbone of ``args.path_self`` and fit the head."""
    configure_runtime()
    self_cfg = load_config(args.config_self, schema=PretrainConfig) if args.config_self else None
    if not cfg.dataset.path:
        raise ConfigError("dataset.path of the VOC config must be the folder that holds VOCdevkit/")
    if args.auto_bs or args.auto_lr:
        messages.info(
            "--auto_bs/--auto_lr: the VOC head trains on pre-extracted features (batch size only sets the "
            "extraction batch); the learning rate is chosen on the held-out split instead"
        )
    pl.seed_everything(cfg.seed, verbose=False)
    device = default_device()
    # the backbone alone: a distilled checkpoint needs no teacher weights here
    encoder = self_cfg.encoder if self_cfg is not None else cfg.encoder
    info = voc_normalisation(self_cfg) if self_cfg is not None else None
    pretrained = load_frozen_backbone(args.path_self, device, encoder=encoder, info=info)
    check_rgb(pretrained.info, args.path_self)
    run = RunDir.for_config(cfg, args.config_voc, "voc")
    write_run_config(cfg, run)
    messages.info(f"Run directory: {run.path}")
    x, y, ignore = voc_features(
        pretrained.backbone, cfg.dataset.path, "trainval", cfg, pretrained.info, device, not args.no_progress
    )
    if cfg.protocol == "svm":
        svms = fit_linear_svms(x.numpy(), y.numpy(), ignore.numpy(), costs=tuple(cfg.svm_costs), seed=cfg.seed)
        head, extra = svm_head(svms, x.shape[1]), {"svm_costs": [float(c) for c in svms.costs]}
        messages.info(f"SVM costs chosen by 3-fold CV on trainval: {sorted(set(extra['svm_costs']))}")
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(x.shape[0], generator=g)
        n_val = max(1, int(round(cfg.dataset.val_fraction * x.shape[0])))
        val, tr = perm[:n_val], perm[n_val:]
        head, epoch, val_map = fit_bce_head(x[tr], y[tr], ignore[tr], x[val], y[val], ignore[val], cfg)
        extra = {"best_epoch": epoch, "val_map": val_map}
        messages.info(
            f"linear head: best epoch {epoch} (val mAP {100 * val_map:.2f} on {n_val} held-out trainval images)"
        )
    path = run.checkpoints / "best.ckpt"
    save_voc_checkpoint(path, pretrained.backbone, head, cfg, pretrained.encoder, pretrained.info, extra)
    messages.info(f"Checkpoint: {path}")
    return run


def run_evaluation(args, cfg: VOCConfig) -> dict[str, float]:
    """Per-class AP and mAP of a main_voc.py checkpoint on the VOC07 test split (val when test is absent)."""
    configure_runtime()
    device = default_device()
    backbone, head, hp = load_voc_checkpoint(args.ckpt)
    backbone.to(device)
    split, note = resolve_eval_split(cfg.dataset.path)
    if note:
        messages.info(note)
    x, y, ignore = voc_features(backbone, cfg.dataset.path, split, cfg, hp["info_obj"], device, not args.no_progress)
    with torch.no_grad():
        scores = head(x).numpy()
    mean_ap, per_class = mean_average_precision(scores, y.numpy(), ignore.numpy())
    rows = [[name, 100 * ap] for name, ap in zip(VOC_CLASSES, per_class)] + [["mAP", 100 * mean_ap]]
    messages.info(f"VOC2007 {split}: {x.shape[0]} images, protocol {hp['config']['protocol']}")
    messages.info(format_table(["class", "AP %"], rows))
    return {"mAP": 100 * mean_ap}
