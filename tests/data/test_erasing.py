"""Random erasing of x' (dataset.erase_p): torchvision's sampler, per sample, hand-checked boxes, config wiring."""

import pytest
import torch
import torchvision.transforms.v2 as T
from conftest import assert_boxes_like

from mvmr.config import PretrainConfig, load_config
from mvmr.data.views import build_train_view
from mvmr.data.views.erasing import ERASE_RATIO, ERASE_SCALE, RandomErasing, erase_boxes, sample_erase_boxes
from mvmr.errors import ConfigError


@pytest.mark.parametrize("height, width", [(28, 28), (32, 20)])
def test_erase_boxes_follow_torchvision_distribution(height, width):
    """Boxes lie strictly inside the image and their area fraction / log-aspect / offsets match torchvision's
    ``RandomErasing.get_params`` (which also erases nothing when no attempt fits)."""
    torch.manual_seed(0)
    boxes, found = sample_erase_boxes(4000, height, width)
    image = torch.zeros(1, height, width)
    ref = [T.RandomErasing.get_params(image, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=[0.0]) for _ in range(4000)]
    ref = torch.tensor([[top, left, h, w] for top, left, h, w, _ in ref], dtype=torch.float64)
    ref = ref[(ref[:, 2] < height) & (ref[:, 3] < width)]  # torchvision's "no fit" returns the whole image
    assert found.float().mean() > 0.99
    assert_boxes_like(boxes[found], ref, height, width, tol_area=0.01, tol_aspect=0.05)


def test_erase_boxes_hand_worked():
    """A 4x5 two-channel image: sample 0's box rows 1-2, columns 2-3 takes the per-channel fill; sample 1 is not
    erased (erase False) although it has a box."""
    images = torch.arange(2 * 2 * 4 * 5, dtype=torch.float32).view(2, 2, 4, 5)
    boxes = torch.tensor([[1.0, 2.0, 2.0, 2.0], [0.0, 0.0, 4.0, 5.0]])
    out = erase_boxes(images, boxes, torch.tensor([True, False]), torch.tensor([-1.0, -2.0]))
    expected = images.clone()
    expected[0, 0, 1:3, 2:4] = -1.0
    expected[0, 1, 1:3, 2:4] = -2.0
    assert torch.equal(out, expected)


def test_random_erasing_probability_and_fill():
    """About p of the samples lose a rectangle of exactly the fill value; the others are untouched."""
    torch.manual_seed(0)
    images = torch.full((2000, 1, 16, 16), 0.9)
    out = RandomErasing(0.3, fill=[0.25])(images)
    changed = (out != images).flatten(1).any(1)
    assert abs(changed.float().mean().item() - 0.3) < 0.04
    assert torch.all((out == 0.9) | (out == 0.25))
    assert RandomErasing(0.0, fill=[0.5])(images) is images


def test_train_view_with_erasing_is_reproducible_and_zero_once_normalised():
    view = build_train_view("cifar", 28, (0.3,), (0.35,), 1, erase_p=1.0)
    images = torch.full((8, 1, 28, 28), 200, dtype=torch.uint8)
    torch.manual_seed(3)
    first = view(images)
    torch.manual_seed(3)
    assert torch.equal(first, view(images))
    assert ((first == 0).flatten(1).sum(1) > 0).all()  # the dataset-mean fill normalises to exactly 0
    plain = build_train_view("cifar", 28, (0.3,), (0.35,), 1)
    assert not any(isinstance(m, RandomErasing) for m in plain.modules())


def test_erase_p_is_validated():
    assert load_config(None, ["dataset.erase_p=0.25"], schema=PretrainConfig).dataset.erase_p == 0.25
    for bad in ("1.5", "-0.1", "often"):
        with pytest.raises(ConfigError, match="erase_p"):
            load_config(None, [f"dataset.erase_p={bad}"], schema=PretrainConfig)


def test_first_fitting_sizes_aspect_convention_and_strictness():
    """Hand-worked: area 100 px² with aspect 4 gives sides 20 and 5 (width 20 for RandomResizedCrop's convention,
    height 20 for RandomErasing's); the whole image fits unless ``strict`` (erasing needs a smaller box)."""
    from mvmr.data.views.geometric import first_fitting_sizes

    h, w, found = first_fitting_sizes(3, 30, 30, (1 / 9, 1 / 9), (4.0, 4.0), attempts=2)
    assert h.tolist() == [5.0] * 3 and w.tolist() == [20.0] * 3 and found.all()
    h, w, found = first_fitting_sizes(
        3, 30, 30, (1 / 9, 1 / 9), (4.0, 4.0), attempts=2, aspect_is_height_over_width=True
    )
    assert h.tolist() == [20.0] * 3 and w.tolist() == [5.0] * 3 and found.all()
    assert first_fitting_sizes(2, 10, 10, (1.0, 1.0), (1.0, 1.0), attempts=3)[2].all()
    assert not first_fitting_sizes(2, 10, 10, (1.0, 1.0), (1.0, 1.0), attempts=3, strict=True)[2].any()
