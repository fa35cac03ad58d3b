"""Weighted cosine k-NN classifier on frozen features (Wu et al. 2018 vote: exp(sim / T))."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_logits(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (N_test, n_classes): each test sample sums exp(cos/T) over its k nearest train samples."""
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], n_classes)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)
