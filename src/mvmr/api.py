"""Using a trained encoder elsewhere: ``backbone, transform = mvmr.load_encoder("runs/x/checkpoints/best.ckpt")``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mvmr.config import EncoderConfig
from mvmr.checkpoint import encoder_config_of, load_backbone_weights, load_checkpoint
from mvmr.data.datasets import DatasetInfo
from mvmr.data.views import EvalTransform, eval_transform
from mvmr.errors import CheckpointError
from mvmr.models import backbone_from_config


@dataclass
class FrozenEncoder:
    """A checkpoint's backbone, frozen and in eval mode, with the settings needed to feed it."""

    backbone: nn.Module  # (B, C, H, W) normalised -> (B, feature_dim)
    encoder: EncoderConfig
    info: DatasetInfo  # channels, mean, std of the training data
    image_size: int
    weights: str = "online"  # which backbone weights were loaded: "online" or "ema" (the run's moving average)


def load_frozen_backbone(ckpt_path: str | Path, device: str | torch.device = "cpu",
                         checkpoint: dict | None = None, weights: str = "auto") -> FrozenEncoder:
    """The backbone of a pretraining, distillation or semi-supervised checkpoint of this project. No
    representation, teacher or projector is built, so nothing but the checkpoint is needed. ``checkpoint``: the
    file's contents if the caller already read them (``ckpt_path`` then only names it in errors). ``weights``:
    "auto" (the moving average when the run kept one, ``ema_decay`` > 0, else the trained weights), "online"
    or "ema"."""
    ckpt = checkpoint if checkpoint is not None else load_checkpoint(ckpt_path)
    hp = ckpt.get("hyper_parameters", {})
    if "info" not in hp or "config" not in hp:
        raise CheckpointError(f"'{ckpt_path}' has no run settings (hyper_parameters.info/config); "
                              "pass a checkpoint written by mvmr's trainers")
    info = DatasetInfo(**hp["info"])
    encoder = encoder_config_of(ckpt)
    backbone, feature_dim = backbone_from_config(encoder, info.channels)
    loaded = load_backbone_weights(backbone, ckpt["state_dict"], str(ckpt_path), weights)
    backbone.feature_dim = feature_dim
    backbone.eval().requires_grad_(False)
    return FrozenEncoder(backbone.to(device), encoder, info, int(hp["config"]["dataset"]["size"]), loaded)


def load_online_probe(ckpt_path: str | Path, device: str | torch.device = "cpu",
                      checkpoint: dict | None = None) -> nn.Linear | None:
    """The online linear probe of a pretraining checkpoint, (B, feature_dim) -> (B, n_classes) logits, frozen;
    None when the run had ``probe.enabled: false``. ``checkpoint`` as in ``load_frozen_backbone``."""
    state = (checkpoint if checkpoint is not None else load_checkpoint(ckpt_path))["state_dict"]
    if "probe.weight" not in state:
        return None
    weight, bias = state["probe.weight"], state["probe.bias"]
    probe = nn.Linear(weight.shape[1], weight.shape[0])
    probe.load_state_dict({"weight": weight, "bias": bias})
    return probe.eval().requires_grad_(False).to(device)


def load_encoder(ckpt_path: str | Path, device: str | torch.device = "cpu",
                 weights: str = "auto") -> tuple[nn.Module, EvalTransform]:
    """(backbone, transform) from a pretraining, distillation or semi-supervised checkpoint of this project.

    ``backbone``: frozen, in eval mode, a plain ``nn.Module`` mapping a normalised batch (B, C, H, W) to
    features (B, D) (D = ``backbone.feature_dim``: 512 for ResNet-18/34, 2048 for ResNet-50, 8 x encoder.width
    x block expansion in general).
    ``transform``: the run's evaluation view x̄ for ONE image (PIL image or uint8 (C, H, W) tensor) ->
    float32 (C, size, size), resized, centre-cropped and normalised with the run's mean/std.
    No representation, teacher or projector is built, so nothing but the checkpoint is needed.
    ``weights``: "auto" (the moving average when the run kept one, ``ema_decay`` > 0), "online" or "ema".
    """
    frozen = load_frozen_backbone(ckpt_path, device, weights=weights)
    return frozen.backbone, eval_transform(frozen.image_size, frozen.info.mean, frozen.info.std)
