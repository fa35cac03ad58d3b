"""Linear evaluation computed the authors' way (vkinakh/mv-mr ``evaluate_self_supervised.py``), so that a number
can be put beside the paper's table. This project's own protocol (``evaluation/linear.py``) selects on held-out
data; this one does what their script does, including choosing the epoch on the test split.

- ``evaluate_finetuner`` (their default): the online probe on the test split, logits averaged over
  ``ten_crop(x̄, (size, size))``. On an image that is already size x size, torchvision's ten crops are the image
  five times and its mirror five times, so the average is that of x̄ and its mirror image.
- ``evaluate_retrain`` (their ``--retrain``): a linear head, started from the online probe's weights when the
  checkpoint has them, trained with Adam (lr 1e-3, no weight decay) and a per-epoch cosine (T_max = epochs,
  eta_min 0) on the whole labelled train split, each image augmented anew by their 'custom' transform (the
  ``authors`` view policy) and encoded by the frozen backbone every epoch; after each epoch the test top-1 of x̄
  (no ten-crop); the best epoch's test top-1 is the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mvmr.evaluation.metrics import topk_accuracy

RETRAIN_LR = 1e-3  # evaluate_retrain: optim.Adam(finetuner.parameters(), lr=0.001)


@dataclass
class AuthorsRetrain:
    """The result of :func:`retrain_head_authors`: best test top-1 (%), its epoch (1-based) and every epoch's."""

    best_top1: float
    best_top5: float
    best_epoch: int
    history: list = field(default_factory=list)  # (epoch, train loss, test top-1, test top-5)


@torch.no_grad()
def _test_logits(
    backbone: Callable, head: nn.Module, loader, view: nn.Module, device
) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = [], []
    for images, y, _ in loader:
        x = view(images.to(device, non_blocking=True))
        if x.ndim == 5:  # (B, crops, C, H, W): logits averaged over the crops
            b, n = x.shape[:2]
            out = head(backbone(x.flatten(0, 1)).float()).view(b, n, -1).mean(1)
        else:
            out = head(backbone(x).float())
        logits.append(out.cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels).long()


def probe_accuracy_authors(
    backbone: Callable, probe: nn.Module, loader, mirrored_view: nn.Module, device
) -> dict[int, float]:
    """Top-1/top-5 (%) of the online probe on ``loader`` with logits averaged over x̄ and its mirror image
    (``mirrored_view``: (B, C, H, W) uint8 -> (B, 2, C, s, s)), as their ``evaluate_finetuner``."""
    logits, labels = _test_logits(backbone, probe, loader, mirrored_view, device)
    return topk_accuracy(logits, labels)


def retrain_head_authors(
    backbone: Callable,
    feature_dim: int,
    n_classes: int,
    train_loader,
    train_view: nn.Module,
    test_loader,
    test_view: nn.Module,
    epochs: int,
    device,
    init: Optional[nn.Linear] = None,
    lr: float = RETRAIN_LR,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = print,
) -> AuthorsRetrain:
    """Their ``evaluate_retrain`` (see the module docstring). ``train_view``: the augmentation of the training
    images, random per sample, uint8 batch -> normalised (B, C, s, s); ``test_view``: x̄."""
    head = nn.Linear(feature_dim, n_classes).to(device)
    if init is not None:
        head.load_state_dict(init.state_dict())
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0)
    result = AuthorsRetrain(best_top1=-1.0, best_top5=-1.0, best_epoch=0)
    for epoch in range(1, epochs + 1):
        head.train()
        total, count = 0.0, 0
        for images, y, _ in tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False):
            with torch.no_grad():
                h = backbone(train_view(images.to(device, non_blocking=True))).float()
            loss = F.cross_entropy(head(h), y.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = (
                total + loss.detach() * y.numel(),
                count + y.numel(),
            )  # summed on the device: no sync per step
        sched.step()
        head.eval()
        acc = topk_accuracy(*_test_logits(backbone, head, test_loader, test_view, device))
        train_loss = float(total) / max(count, 1)
        result.history.append((epoch, train_loss, acc[1], acc[5]))
        if log is not None:
            log(f"epoch {epoch}: train loss {train_loss:.3f}, test top-1 {acc[1]:.2f}")
        if acc[1] > result.best_top1:
            result.best_top1, result.best_top5, result.best_epoch = acc[1], acc[5], epoch
    return result
