"""k-NN, top-k and linear evaluation against independent computations."""
import numpy as np
import pytest
import torch

from mvmr.evaluation.knn import knn_logits
from mvmr.evaluation.linear import fit_linear
from mvmr.evaluation.metrics import topk_accuracy


def test_topk_hand_worked():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    acc = topk_accuracy(logits, labels, (1, 2, 5))
    assert acc[1] == pytest.approx(100 / 3) and acc[2] == pytest.approx(200 / 3) and acc[5] == 100.0


def test_knn_matches_numpy_reference():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 8, generator=g)
    labels = torch.randint(0, 4, (50,), generator=g)
    test = torch.randn(7, 8, generator=g)
    scores = knn_logits(train, labels, test, 4, k=5, temperature=0.5, chunk=3)
    tr = train.double().numpy(); te = test.double().numpy()
    tr /= np.linalg.norm(tr, axis=1, keepdims=True); te /= np.linalg.norm(te, axis=1, keepdims=True)
    for i in range(7):
        sims = tr @ te[i]
        nn = np.argsort(-sims)[:5]
        ref = np.zeros(4)
        for j in nn:
            ref[labels[j]] += np.exp(sims[j] / 0.5)
        np.testing.assert_allclose(scores[i].numpy(), ref, rtol=1e-4)


def test_linear_eval_separable_and_selects_on_val():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 4
    y = torch.randint(0, 3, (300,), generator=g)
    x = centers[y] + torch.randn(300, 16, generator=g)
    fit = fit_linear(x[:200], y[:200], x[200:], y[200:], 3, lrs=[1e-2], wds=[0.0], epochs=20, batch_size=64)
    assert fit.val_top1 > 95 and 1 <= fit.epochs <= 20
    # ten-crop shaped input: logits averaged over crops
    assert fit.head(x[:5, None].expand(5, 10, 16)).shape == (5, 3)


def test_topk_counts_agree_with_topk_accuracy():
    from mvmr.evaluation.metrics import topk_accuracy
    from mvmr.methods.topk import topk_correct

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    labels = torch.tensor([1, 2, 0, 1])  # top-1 right: row 0 only; top-2 right: rows 0, 3
    assert topk_correct(logits, labels, 1).item() == 1 and topk_correct(logits, labels, 2).item() == 2
    assert topk_accuracy(logits, labels, (1, 2)) == {1: 25.0, 2: 50.0}
