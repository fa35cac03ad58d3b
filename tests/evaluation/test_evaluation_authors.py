"""``--protocol authors``: the numbers the authors' evaluate_self_supervised.py computes, checked against
independent computations (torchvision's ten_crop; a replay of their training loop)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import ten_crop

from mvmr.data.views import EvalView, MirroredView
from mvmr.evaluation.authors import probe_accuracy_authors, retrain_head_authors

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


class Flatten(nn.Module):
    """A stand-in backbone: the mean of each channel over 4x4 blocks, (B, 3, 8, 8) -> (B, 12)."""

    def forward(self, x):
        return F.avg_pool2d(x, 4).flatten(1)


def loader_of(images, labels, batch=5):
    index = torch.arange(len(labels))
    return [(images[i : i + batch], labels[i : i + batch], index[i : i + batch]) for i in range(0, len(labels), batch)]


def test_their_ten_crop_at_the_image_size_is_the_average_over_x_bar_and_its_mirror():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 4, (7,))
    backbone, probe = Flatten(), nn.Linear(12, 4)
    ours = probe_accuracy_authors(backbone, probe, loader_of(images, labels), MirroredView(8, MEAN, STD), "cpu")
    x_bar = EvalView(8, MEAN, STD)(images)
    with torch.no_grad():  # their evaluate_finetuner: logits of torchvision's ten crops of size (8, 8), averaged
        logits = torch.stack([probe(backbone(crop)) for crop in ten_crop(x_bar, [8, 8])]).mean(0)
    top1 = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    assert ours[1] == pytest.approx(top1)
    with torch.no_grad():
        assert not torch.allclose(logits, probe(backbone(x_bar)))  # the mirror image changes the logits


def test_retrain_replays_their_loop_and_reports_the_best_test_epoch():
    torch.manual_seed(0)
    train_images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    train_labels = torch.randint(0, 3, (20,))
    test_images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    test_labels = torch.randint(0, 3, (10,))
    backbone, view = Flatten(), EvalView(8, MEAN, STD)
    init = nn.Linear(12, 3)
    epochs = 6
    result = retrain_head_authors(
        backbone,
        12,
        3,
        loader_of(train_images, train_labels),
        view,
        loader_of(test_images, test_labels),
        view,
        epochs,
        "cpu",
        init=init,
        progress=False,
        log=None,
    )
    # their loop, written out: Adam(lr=1e-3) from the probe's weights, CosineAnnealingLR(T_max=epochs) per epoch
    head = nn.Linear(12, 3)
    head.load_state_dict(init.state_dict())
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0)
    accs = []
    for _ in range(epochs):
        for images, y, _ in loader_of(train_images, train_labels):
            loss = F.cross_entropy(head(backbone(view(images))), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            accs.append(100.0 * (head(backbone(view(test_images))).argmax(1) == test_labels).float().mean().item())
    assert [row[2] for row in result.history] == pytest.approx(accs)
    best = max(range(epochs), key=lambda i: (accs[i], -i))  # the first epoch with the highest test accuracy
    assert result.best_epoch == best + 1 and result.best_top1 == pytest.approx(accs[best])


def test_retrain_starts_from_the_probe():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 3, (10,))
    view, probe = EvalView(8, MEAN, STD), nn.Linear(12, 3)
    frozen = retrain_head_authors(
        Flatten(),
        12,
        3,
        loader_of(images, labels),
        view,
        loader_of(images, labels),
        view,
        1,
        "cpu",
        init=probe,
        lr=1e-12,
        progress=False,
        log=None,
    )
    with torch.no_grad():
        expected = 100.0 * (probe(Flatten()(view(images))).argmax(1) == labels).float().mean().item()
    assert frozen.best_top1 == pytest.approx(expected)
