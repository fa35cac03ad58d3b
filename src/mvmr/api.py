"""Using a trained encoder elsewhere: ``backbone, transform = mvmr.load_encoder("runs/x/checkpoints/best.ckpt")``.

Checkpoints of this project and the authors' files (vkinakh/mv-mr: their Lightning .ckpt and their exported
.pth, see :mod:`mvmr.checkpoint_formats`) are both accepted, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mvmr.config import EncoderConfig
from mvmr.data.datasets import DatasetInfo
from mvmr.data.datasets.base import load_image
from mvmr.data.views import EvalTransform, build_eval_view, eval_transform
from mvmr.frozen_backbone import FrozenEncoder, authors_info, load_frozen_backbone, load_online_probe

__all__ = ["FrozenEncoder", "authors_info", "embed_images", "load_encoder", "load_frozen_backbone", "load_online_probe"]


def load_encoder(
    ckpt_path: str | Path,
    device: str | torch.device = "cpu",
    weights: str = "auto",
    *,
    encoder: EncoderConfig | None = None,
    info: DatasetInfo | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, EvalTransform]:
    """(backbone, transform) from a pretraining, distillation or semi-supervised checkpoint of this project, or
    from an authors' file (their Lightning .ckpt or exported .pth).

    ``backbone``: frozen, in eval mode, a plain ``nn.Module`` mapping a normalised batch (B, C, H, W) to
    features (B, D) (D = ``backbone.feature_dim``: 512 for ResNet-18/34, 2048 for ResNet-50, 8 x encoder.width
    x block expansion in general).
    ``transform``: the evaluation view x̄ for ONE image (PIL image or uint8 (C, H, W) tensor) -> float32
    (C, size, size), resized, centre-cropped and normalised with the run's mean/std.
    No representation, teacher or projector is built, so nothing but the checkpoint is needed.
    ``weights``: "auto" (the moving average when the run kept one, ``ema_decay`` > 0), "online" or "ema".
    ``encoder`` / ``info`` / ``image_size``: for an authors' file, which carries no settings: the architecture
    (default: inferred from the weights), the data's channels / mean / std (default: 3 channels, ImageNet
    mean/std, as their STL10 and ImageNet runs) and the image size (default 224); see
    :func:`load_frozen_backbone`. A checkpoint of this project carries its own and ignores them.
    """
    frozen = load_frozen_backbone(ckpt_path, device, weights=weights, encoder=encoder, info=info, image_size=image_size)
    return frozen.backbone, eval_transform(
        frozen.image_size, frozen.info.mean, frozen.info.std, frozen.info.eval_resize
    )


class _ImageFiles(torch.utils.data.Dataset):
    """Decode image files as the training data were: shorter side to ``load_size``, centre square, uint8."""

    def __init__(self, paths: Sequence[str | Path], mode: str, load_size: int):
        self.paths, self.mode, self.load_size = [str(p) for p in paths], mode, load_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        array = torch.from_numpy(np.array(load_image(self.paths[index], self.mode, self.load_size)))
        return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)


def embed_images(
    ckpt_path: str | Path,
    paths: Sequence[str | Path],
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    weights: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Backbone features (N, D) float32 of the image files ``paths`` (in that order), with a checkpoint's frozen
    backbone and its evaluation view x̄ (Resize + CenterCrop of the run's size, normalised with the run's
    statistics). Files are decoded in ``workers`` processes."""
    frozen = load_frozen_backbone(ckpt_path, device, weights=weights)
    info, size = frozen.info, frozen.image_size
    view = build_eval_view(size, info.mean, info.std, info.eval_resize).to(device)
    files = _ImageFiles(paths, "L" if info.channels == 1 else "RGB", info.eval_resize or size)
    loader = torch.utils.data.DataLoader(files, batch_size=batch_size, num_workers=workers)
    out = []
    with torch.no_grad():
        for images in tqdm(loader, desc="embedding", disable=not progress, leave=False):
            out.append(frozen.backbone(view(images.to(device))).float().cpu())
    if not out:
        return np.zeros((0, frozen.backbone.feature_dim), dtype=np.float32)
    return torch.cat(out).numpy()
