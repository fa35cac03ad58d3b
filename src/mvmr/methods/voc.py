"""VOC07 multi-label classification on frozen backbone features: a BCE linear head or per-class linear SVMs.

Features are extracted once; the head trains on the feature tensors. The checkpoint holds the backbone
too, so ``evaluate_voc.py`` needs nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mvmr.checkpoint import atomic_torch_save, load_checkpoint
from mvmr.config import EncoderConfig, VOCConfig, build_dataclass, to_dict
from mvmr.data import DatasetInfo
from mvmr.errors import CheckpointError
from mvmr.evaluation.linear import fit_epochs
from mvmr.evaluation.voc import mean_average_precision
from mvmr.models import backbone_from_config


class MultiLabelHead(nn.Module):
    """scores = W ((h or h/||h||) - mean) / std + b : (N, D) -> (N, 20)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int, l2_normalize: bool = False):
        super().__init__()
        self.l2_normalize = l2_normalize
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:
            h = F.normalize(h, dim=1)
        return self.linear((h - self.mean) / self.std)


def fit_bce_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    train_ignore: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    val_ignore: torch.Tensor,
    cfg: VOCConfig,
    log=print,
) -> tuple[MultiLabelHead, int, float]:
    """Train with BCE (difficult-only entries masked out); keep the epoch with the best validation mAP."""
    g = torch.Generator().manual_seed(cfg.seed)
    head = MultiLabelHead(train_x.mean(0), train_x.std(0).clamp_min(1e-6), train_y.shape[1])
    weight = (~train_ignore).float()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(head(train_x[idx]), train_y[idx], weight=weight[idx])

    def val_map() -> float:
        return mean_average_precision(head(val_x).numpy(), val_y.numpy(), val_ignore.numpy())[0]

    def progress(epoch: int, loss: float, score: float) -> None:
        if epoch % max(1, cfg.epochs // 10) == 0:
            log(f"epoch {epoch:4d}/{cfg.epochs}  loss {loss:.4f}  val mAP {100 * score:.2f}")

    best_epoch, best_map = fit_epochs(
        head, batch_loss, train_x.shape[0], val_map, cfg.epochs, cfg.batch_size, cfg.lr, cfg.wd, g, progress
    )
    return head, best_epoch, best_map


def svm_head(svms: Any, mean_dim: int) -> MultiLabelHead:
    """Wrap fitted per-class linear SVMs (on L2-normalised features) as a MultiLabelHead."""
    coef = torch.as_tensor(svms.coef_, dtype=torch.float32)
    head = MultiLabelHead(torch.zeros(mean_dim), torch.ones(mean_dim), coef.shape[0], l2_normalize=True)
    with torch.no_grad():
        head.linear.weight.copy_(coef)
        head.linear.bias.copy_(torch.as_tensor(svms.intercept_, dtype=torch.float32))
    return head


def save_voc_checkpoint(
    path, backbone: nn.Module, head: MultiLabelHead, cfg: VOCConfig, encoder: EncoderConfig, info: Any, extra: dict
) -> None:
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    atomic_torch_save(
        {
            "state_dict": state,
            "hyper_parameters": {
                "config": to_dict(cfg),
                "encoder": dataclasses.asdict(encoder),
                "info": dataclasses.asdict(info),
                "l2_normalize": head.l2_normalize,
                "feature_dim": head.mean.numel(),
                **extra,
            },
        },
        path,
    )


def load_voc_checkpoint(path) -> tuple[nn.Module, MultiLabelHead, dict]:
    """(backbone, head, hyper_parameters) of a checkpoint written by main_voc.py."""
    ckpt = load_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    if "l2_normalize" not in hp:
        raise CheckpointError(f"'{path}' is not a VOC checkpoint (run main_voc.py first)")
    encoder = build_dataclass(EncoderConfig, hp["encoder"])
    info = DatasetInfo(**hp["info"])
    backbone, dim = backbone_from_config(encoder, info.channels)
    head = MultiLabelHead(torch.zeros(dim), torch.ones(dim), 20, hp["l2_normalize"])
    state = ckpt["state_dict"]
    backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")})
    head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    hp["info_obj"] = info
    return backbone.eval(), head.eval(), hp
