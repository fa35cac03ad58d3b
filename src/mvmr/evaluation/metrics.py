"""Top-k accuracy on whole splits."""

from __future__ import annotations

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Percent of rows of ``logits`` (N, K) whose top-k contains ``labels`` (N,); k capped at K."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == labels[:, None]).any(dim=1)
        out[k] = 100.0 * hit.float().mean().item()
    return out
