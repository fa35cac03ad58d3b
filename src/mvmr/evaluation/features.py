"""Feature extraction on frozen backbones (done once; classifiers then train on the tensors)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mvmr.config import VOCConfig
from mvmr.data.views import build_eval_view
from mvmr.data.voc import VOCMultiLabel


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
        x = view(images.to(device, non_blocking=True))
        if x.ndim == 5:
            b, n = x.shape[:2]
            f = backbone(x.flatten(0, 1)).float().view(b, n, -1)
        else:
            f = backbone(x).float()
        feats.append(f.cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels).long()


def voc_features(backbone, root: str, split: str, cfg: VOCConfig, info, device, progress: bool):
    """Frozen features (N, D), targets (N, 20) float and the difficult-only mask (N, 20) of one VOC split."""
    load_size = cfg.dataset.load_size or round(cfg.dataset.size * 256 / 224)
    ds = VOCMultiLabel(root, split, load_size)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.n_workers)
    view = build_eval_view(cfg.dataset.size, info.mean, info.std, resize_to=load_size).to(device)  # Resize + CenterCrop
    feats, _ = extract_features(backbone, loader, view, device, f"VOC {split} features", progress)
    return feats, torch.as_tensor(ds.targets, dtype=torch.float32), torch.as_tensor(ds.difficult_only, dtype=torch.bool)
