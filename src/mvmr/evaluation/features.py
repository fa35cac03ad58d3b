"""Feature extraction on frozen backbones (done once; classifiers then train on the tensors)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def extract_features(
    backbone: Callable[[torch.Tensor], torch.Tensor],
    loader,
    view: nn.Module,
    device: torch.device | str = "cpu",
    desc: str = "features",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone(view(images))`` over a loader of (uint8 images, labels, index).

    Returns features (N, D) float32 on the CPU and labels (N,) int64. A view that returns
    (B, n_crops, C, H, W) gives features (N, n_crops, D).
    """
    feats, labels = [], []
    for images, y, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = view(images.to(device))
        if x.ndim == 5:
            b, n = x.shape[:2]
            f = backbone(x.flatten(0, 1)).float().view(b, n, -1)
        else:
            f = backbone(x).float()
        feats.append(f.cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels).long()
