"""Semi-supervised fine-tuning: the whole pretrained backbone plus a linear head on a labelled fraction."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from mvmr.checkpoint import (
    check_same_architecture,
    copy_backbone_weights,
    encoder_config_of,
    load_checkpoint,
    read_checkpoint,
)
from mvmr.checkpoint_formats import infer_encoder_config, read_weights
from mvmr.config import EncoderConfig, SemiSupervisedConfig, build_dataclass, to_dict
from mvmr.data import DatasetInfo
from mvmr.data.views import build_eval_view, train_view_from_config
from mvmr.errors import CheckpointError
from mvmr.methods.optim import build_optimizer, param_groups
from mvmr.methods.topk import TopKEvaluation, topk_correct
from mvmr.models import backbone_from_config, use_channels_last


class SemiSupervisedModule(TopKEvaluation, pl.LightningModule):
    """Backbone f (from a pretrained checkpoint) + linear head, trained with cross-entropy."""

    def __init__(self, cfg: SemiSupervisedConfig, info: Any, encoder: EncoderConfig, n_classes: int):
        super().__init__()
        self.cfg, self.info, self.encoder_cfg, self.n_classes = cfg, info, encoder, n_classes
        self.save_hyperparameters(
            {
                "config": to_dict(cfg),
                "info": dataclasses.asdict(info),
                "encoder": dataclasses.asdict(encoder),
                "n_classes": n_classes,
            }
        )
        self.lr = cfg.lr
        self.backbone, self.feature_dim = backbone_from_config(encoder, info.channels)
        use_channels_last(self.backbone, cfg.channels_last)  # inputs are made channels_last in forward
        if cfg.compile:  # in place: parameter names (and so checkpoints) stay those of the eager module
            self.backbone.compile()
        self.head = nn.Linear(self.feature_dim, n_classes)
        size = cfg.dataset.size
        self.train_view = train_view_from_config(cfg, info.mean, info.std, info.channels)
        self.eval_view = build_eval_view(size, info.mean, info.std, getattr(info, "eval_resize", None))

    @classmethod
    def from_pretrained(cls, cfg: SemiSupervisedConfig, info: Any, path: str) -> "SemiSupervisedModule":
        """Backbone weights from a pretraining checkpoint of this project (self-supervised or distilled; the moving
        average when the run kept one) or from an authors' file (their Lightning .ckpt or exported .pth, see
        mvmr.checkpoint_formats), read with ``torch.load(weights_only=True)``.

        The architecture is ``cfg.encoder`` when the config has an encoder section, checked against the weights'
        names and shapes (and, for a checkpoint of this project, its run's max-pool and pooling grid); else the
        checkpoint's own: its run's encoder config, or for an authors' file the one inferred from the weights
        (``infer_encoder_config``). A mismatch is a one-line CheckpointError.
        """
        ckpt = read_checkpoint(path)
        found = read_weights(ckpt, str(path))
        stored = None
        if found.from_authors:
            encoder = cfg.encoder or infer_encoder_config(found.backbone, found.projector)
        else:
            try:
                stored = encoder_config_of(ckpt)
            except CheckpointError:
                if cfg.encoder is None:
                    raise
            encoder = cfg.encoder or stored
        module = cls(cfg, info, encoder, cfg.dataset.n_classes or info.n_classes)
        copy_backbone_weights(module.backbone, found.backbone, str(path), found.where)
        if cfg.encoder is not None and stored is not None:
            check_same_architecture(cfg.encoder, stored, str(path))
        return module

    @classmethod
    def from_checkpoint(cls, path: str) -> "SemiSupervisedModule":
        ckpt = load_checkpoint(path)
        hp = ckpt["hyper_parameters"]
        if "n_classes" not in hp:
            raise CheckpointError(f"'{path}' is not a semi-supervised checkpoint (run main_semi_supervised.py first)")
        cfg = build_dataclass(SemiSupervisedConfig, hp["config"])
        module = cls(cfg, DatasetInfo(**hp["info"]), build_dataclass(EncoderConfig, hp["encoder"]), hp["n_classes"])
        module.load_state_dict(ckpt["state_dict"])
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised batch: (B, C, H, W) -> (B, n_classes)."""
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x).float())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels, _ = batch
        with torch.no_grad():
            x = self.train_view(images)
        logits = self(x)
        loss = F.cross_entropy(logits, labels)
        acc = topk_correct(logits, labels, 1).float() / labels.numel()
        self.log_dict(
            {"train/loss": loss.detach(), "train/top1": acc}, on_step=True, on_epoch=True, batch_size=labels.numel()
        )
        return loss

    def eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self(self.eval_view(images))

    def configure_optimizers(self):
        lr_head = self.cfg.lr_head or 10 * self.lr
        head_wd = self.cfg.wd if self.cfg.wd_norm_and_bias else 0.0  # the authors' one Adam decays the head too
        groups = param_groups(
            self.backbone,
            self.cfg.wd,
            [{"params": list(self.head.parameters()), "lr": lr_head, "weight_decay": head_wd, "lars_exclude": True}],
            self.cfg.wd_norm_and_bias,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or self.cfg.epochs))
        datamodule = getattr(self.trainer, "datamodule", None)
        labelled = getattr(datamodule, "num_labelled_train_samples", None)
        loader_batches = labelled // self.cfg.batch_size if labelled else None
        return build_optimizer(
            self.cfg, groups, self.lr, total, steps_per_epoch, loader_batches, precision=self.trainer.precision
        )
