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
    tr = train.double().numpy()
    te = test.double().numpy()
    tr /= np.linalg.norm(tr, axis=1, keepdims=True)
    te /= np.linalg.norm(te, axis=1, keepdims=True)
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


def test_stop_after_keeps_the_full_cosine_schedule():
    """Stopping after k epochs of an n-epoch schedule = the k-th epoch of the full run (not a k-epoch cosine)."""
    from mvmr.evaluation.linear import fit_epochs

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)

    def run(stop_after, val_score_at):
        torch.manual_seed(1)
        head = torch.nn.Linear(5, 3)
        count = iter(range(1, 100))
        score = None if val_score_at is None else (lambda: float(next(count) == val_score_at))
        loss = lambda idx: torch.nn.functional.cross_entropy(head(x[idx]), y[idx])  # noqa: E731
        epoch, _ = fit_epochs(
            head, loss, 64, score, 10, 16, 0.1, 0.0, torch.Generator().manual_seed(2), stop_after=stop_after
        )
        return epoch, head.weight.detach().clone()

    epoch_a, stopped = run(3, None)
    epoch_b, selected = run(None, 3)  # full 10 epochs, weights restored from epoch 3
    epoch_c, short = run(None, None)
    assert epoch_a == epoch_b == 3 and epoch_c == 10
    assert torch.equal(stopped, selected) and not torch.equal(stopped, short)


def test_refit_uses_validation_rows_and_their_statistics():
    """Class 2 occurs only in the validation rows: the train-only head cannot predict it, the refit head does;
    the refit head standardises with the mean/std of train + validation (numpy float64 reference)."""
    from mvmr.evaluation.linear import refit_linear

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 5
    y_tr = torch.randint(0, 2, (200,), generator=g)
    y_va = torch.full((60,), 2)
    x_tr = centers[y_tr] + torch.randn(200, 8, generator=g)
    x_va = centers[y_va] + torch.randn(60, 8, generator=g)
    fit = fit_linear(x_tr, y_tr, x_tr, y_tr, 3, lrs=[5e-2], wds=[0.0], epochs=15, batch_size=32)
    head = refit_linear(x_tr, y_tr, x_va, y_va, 3, fit, epochs=15, batch_size=32)
    probe = centers[2] + torch.randn(50, 8, generator=g)
    with torch.no_grad():
        assert (fit.head(probe).argmax(1) == 2).float().mean() < 0.1
        assert (head(probe).argmax(1) == 2).float().mean() > 0.9
    both = np.concatenate([x_tr.double().numpy(), x_va.double().numpy()])
    np.testing.assert_allclose(head.mean.numpy(), both.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.std.numpy(), both.std(0, ddof=1), rtol=1e-4)


def test_a_head_does_not_depend_on_the_global_generator():
    """Heads start at zero and shuffle with their own seeded generator: the same grid point gives the same head
    whatever was drawn before it (other grid points, other heads)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 6, generator=g), torch.randint(0, 3, (120,), generator=g)
    heads = []
    for global_seed, draws in ((5, 0), (6, 100)):
        torch.manual_seed(global_seed)
        torch.rand(draws)
        heads.append(fit_linear(x[:80], y[:80], x[80:], y[80:], 3, lrs=[1e-2], wds=[0.0], epochs=3, batch_size=16).head)
    assert torch.equal(heads[0].linear.weight, heads[1].linear.weight)
    assert torch.equal(heads[0].linear.bias, heads[1].linear.bias)


def test_head_trains_on_every_view_of_a_sample():
    """View 1 of each sample is view 0 with its features permuted: a head trained on view 0 alone fails on
    view 1; trained on (N, 2, D), one view drawn per sample and epoch, it classifies both."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 12, generator=g) * 4
    y = torch.randint(0, 3, (400,), generator=g)
    x0 = centers[y] + torch.randn(400, 12, generator=g)
    x1 = x0[:, torch.randperm(12, generator=g)]
    views = torch.stack([x0, x1], dim=1)
    one = fit_linear(x0[:300], y[:300], x0[300:], y[300:], 3, lrs=[1e-2], wds=[0.0], epochs=20, batch_size=32)
    both = fit_linear(views[:300], y[:300], views[300:], y[300:], 3, lrs=[1e-2], wds=[0.0], epochs=20, batch_size=32)
    with torch.no_grad():
        accuracy = lambda head, v: topk_accuracy(head(v), y[300:], (1,))[1]  # noqa: E731
        assert accuracy(one.head, x0[300:]) > 95 and accuracy(one.head, x1[300:]) < 80
        assert accuracy(both.head, x0[300:]) > 95 and accuracy(both.head, x1[300:]) > 95
