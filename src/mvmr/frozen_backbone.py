"""A checkpoint's backbone, frozen: the one loader below both the public API (:mod:`mvmr.api`) and the teacher
representation (:mod:`mvmr.representations.teacher`), so neither imports the other.

Checkpoints of this project and the authors' files (vkinakh/mv-mr: their Lightning .ckpt and their exported
.pth, see :mod:`mvmr.checkpoint_formats`) are both read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mvmr.checkpoint import copy_backbone_weights, encoder_config_of, read_checkpoint
from mvmr.checkpoint_formats import (
    AUTHORS_IMAGE_SIZE,
    AUTHORS_MEAN,
    AUTHORS_STD,
    CheckpointWeights,
    infer_encoder_config,
    read_weights,
)
from mvmr.config import EncoderConfig
from mvmr.data.datasets.base import DatasetInfo
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
    format: str = "mvmr"  # the file's layout (mvmr.checkpoint_formats.FORMATS)


def authors_info(found: CheckpointWeights) -> DatasetInfo:
    """What is assumed of an authors' file's data: 3 channels, the ImageNet mean/std their code used for STL10
    and ImageNet (src/transform/transform.py DATASET_STATS), the probe's or classifier's class count (0 without)."""
    return DatasetInfo(found.n_classes, 3, AUTHORS_MEAN, AUTHORS_STD)


def load_frozen_backbone(
    ckpt_path: str | Path,
    device: str | torch.device = "cpu",
    checkpoint: dict | None = None,
    weights: str = "auto",
    *,
    encoder: EncoderConfig | None = None,
    info: DatasetInfo | None = None,
    image_size: int | None = None,
) -> FrozenEncoder:
    """The backbone of a checkpoint, frozen, in eval mode. No representation, teacher or projector is built, so
    nothing but the checkpoint is needed. ``checkpoint``: the file's contents if the caller already read them
    (``ckpt_path`` then only names it in errors). ``weights``: "auto" (the moving average when the run kept one,
    ``ema_decay`` > 0, else the trained weights), "online" or "ema".

    A pretraining, distillation or semi-supervised checkpoint of this project carries its run's settings, and
    they are used: ``encoder``, ``info`` and ``image_size`` are ignored (so a caller may pass a config's values
    whatever the file is).

    An authors' file (:mod:`mvmr.checkpoint_formats`) carries none, so: the architecture is ``encoder`` when
    given (checked against the weights' names and shapes), else inferred from the weights
    (:func:`~mvmr.checkpoint_formats.infer_encoder_config`: resnet18/34/50, small_kernel, width, the max-pool
    kept); ``info`` (channels, mean, std, n_classes) is ``info`` when given, else ASSUMED to be 3 channels with
    the ImageNet mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) of their STL10 and ImageNet runs and the
    probe's or classifier's class count (0 without either): pass ``info`` for their CIFAR runs (their CIFAR
    statistics); ``image_size`` is ``image_size`` when given, else ASSUMED 224. ``weights="ema"`` is a one-line
    error (their runs kept no moving average).
    """
    source = str(ckpt_path)
    ckpt = checkpoint if checkpoint is not None else read_checkpoint(ckpt_path)
    found = read_weights(ckpt, source, weights)
    if found.from_authors:
        arch = encoder or infer_encoder_config(found.backbone, found.projector)
        info = info or authors_info(found)
        size = image_size or AUTHORS_IMAGE_SIZE
    else:
        hp = ckpt.get("hyper_parameters", {})
        if "info" not in hp or "config" not in hp:
            raise CheckpointError(
                f"'{ckpt_path}' has no run settings (hyper_parameters.info/config); "
                "pass a checkpoint written by mvmr's trainers"
            )
        arch, info, size = encoder_config_of(ckpt), DatasetInfo(**hp["info"]), int(hp["config"]["dataset"]["size"])
    backbone, feature_dim = backbone_from_config(arch, info.channels)
    copy_backbone_weights(backbone, found.backbone, source, found.where)
    backbone.feature_dim = feature_dim
    backbone.eval().requires_grad_(False)
    return FrozenEncoder(backbone.to(device), arch, info, size, found.weights, found.format)


def load_online_probe(
    ckpt_path: str | Path, device: str | torch.device = "cpu", checkpoint: dict | None = None
) -> nn.Linear | None:
    """The online linear probe of a pretraining checkpoint, (B, feature_dim) -> (B, n_classes) logits, frozen;
    None when it has none (a run with ``probe.enabled: false``, a semi-supervised or VOC checkpoint, an authors'
    fine-tuned file). For an authors' self-supervised file: their ``online_finetuner``. ``checkpoint`` as in
    ``load_frozen_backbone``."""
    ckpt = checkpoint if checkpoint is not None else read_checkpoint(ckpt_path)
    state = read_weights(ckpt, str(ckpt_path), "online").probe
    if state is None:
        return None
    weight, bias = state["weight"], state["bias"]
    probe = nn.Linear(weight.shape[1], weight.shape[0])
    probe.load_state_dict({"weight": weight, "bias": bias})
    return probe.eval().requires_grad_(False).to(device)


__all__ = ["FrozenEncoder", "authors_info", "load_frozen_backbone", "load_online_probe"]
