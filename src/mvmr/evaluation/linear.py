"""Linear evaluation on frozen features: hyper-parameters chosen on a validation split, never on test."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mvmr.evaluation.metrics import topk_accuracy


@dataclass
class LinearFit:
    head: nn.Module            # standardisation folded in: raw features (N, D) -> logits (N, K)
    lr: float
    wd: float
    epochs: int                # the epoch with the best validation top-1
    val_top1: float


class StandardisedLinear(nn.Module):
    """logits = W ((h - mean) / std) + b; (N, D) or (N, crops, D) -> (N, K) (crop logits averaged)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.linear((h - self.mean) / self.std)
        return logits.mean(dim=1) if logits.ndim == 3 else logits


def _train_one(x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, n_classes: int,
               lr: float, wd: float, epochs: int, batch_size: int, seed: int) -> tuple[StandardisedLinear, int, float]:
    g = torch.Generator().manual_seed(seed)
    flat = x if x.ndim == 2 else x.flatten(0, 1)
    head = StandardisedLinear(flat.mean(0), flat.std(0).clamp_min(1e-6), n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    best_state, best_epoch, best_acc = None, 0, -1.0
    for epoch in range(epochs):
        head.train()
        for idx in torch.randperm(x.shape[0], generator=g).split(batch_size):
            xb = x[idx]
            if xb.ndim == 3:  # train on one random crop per sample
                xb = xb[torch.arange(xb.shape[0]), torch.randint(xb.shape[1], (xb.shape[0],), generator=g)]
            loss = F.cross_entropy(head(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        head.eval()
        with torch.no_grad():
            acc = topk_accuracy(head(val_x), val_y, (1,))[1]
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch + 1
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head, best_epoch, best_acc


def fit_linear(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
               n_classes: int, lrs: list[float], wds: list[float], epochs: int, batch_size: int = 256,
               seed: int = 0) -> LinearFit:
    """Grid over (lr, wd); for each, keep the epoch with the best validation top-1; return the best."""
    best: LinearFit | None = None
    for lr in lrs:
        for wd in wds:
            head, ep, acc = _train_one(train_x, train_y, val_x, val_y, n_classes, lr, wd, epochs, batch_size, seed)
            if best is None or acc > best.val_top1:
                best = LinearFit(head, lr, wd, ep, acc)
    assert best is not None
    return best
