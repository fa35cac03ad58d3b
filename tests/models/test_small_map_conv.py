"""Convolutions on tiny maps as one matrix product: the same function as F.conv2d (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mvmr.models import build_backbone
from mvmr.models.small_map_conv import SmallMapConv2d, conv2d_as_matmul, tap_selection, use_small_map_matmul


def test_tap_selection_by_hand_for_a_2x2_map():
    """3x3 kernel, stride 1, padding 1 on a 2x2 map: input p reaches output q through tap (1 + py - qy, 1 + px - qx)."""
    select = tap_selection((3, 3), (1, 1), (1, 1), (2, 2)).view(4, 4, 9)
    assert torch.equal(select.sum(-1), torch.ones(4, 4))  # every pair is linked by exactly one tap
    taps = select.argmax(-1)
    # rows: input (0,0) (0,1) (1,0) (1,1); columns: output in the same order; taps numbered ky * 3 + kx
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(taps, expected)


def test_tap_selection_leaves_unlinked_pairs_empty():
    """Stride 2 from 4x4 to 2x2: output (0,0) sees inputs (0..1, 0..1) only; input (3,3) reaches output (1,1) only."""
    select = tap_selection((3, 3), (2, 2), (1, 1), (4, 4)).view(4, 4, 2, 2, 9)
    assert select[3, 3, 0, 0].sum() == 0 and select[2, 0, 0, 0].sum() == 0
    assert select[3, 3, 1, 1].argmax() == 8 and select[0, 0, 0, 0].argmax() == 4


@pytest.mark.parametrize(
    "c, o, h, w, stride",
    [(6, 5, 2, 2, 1), (6, 5, 1, 1, 1), (6, 5, 1, 1, 2), (4, 3, 1, 2, 2), (4, 3, 2, 1, 1), (4, 3, 4, 4, 2)],
)
def test_matmul_form_equals_conv2d_in_float64(c, o, h, w, stride):
    torch.manual_seed(0)
    x = torch.randn(5, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, 3, 3, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(x, weight, stride=stride, padding=1)
    got = conv2d_as_matmul(x, weight, (stride, stride), (1, 1))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(got, (x, weight), grad), torch.autograd.grad(expected, (x, weight), grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_module_takes_the_matmul_path_only_where_it_does_at_most_half_the_multiply_adds():
    conv = SmallMapConv2d(8, 8, 3, padding=1, bias=False)
    assert conv.uses_matmul(torch.zeros(1, 8, 2, 2)) and conv.uses_matmul(torch.zeros(1, 8, 1, 1))
    assert not conv.uses_matmul(torch.zeros(1, 8, 3, 3))  # equal counts: measured slower
    assert not conv.uses_matmul(torch.zeros(1, 8, 1, 5))
    assert not SmallMapConv2d(8, 8, 1, bias=False).uses_matmul(torch.zeros(1, 8, 1, 1))
    assert not SmallMapConv2d(8, 8, 3, padding=1, bias=True).uses_matmul(torch.zeros(1, 8, 2, 2))
    assert not SmallMapConv2d(8, 8, 3, padding=1, groups=2, bias=False).uses_matmul(torch.zeros(1, 8, 2, 2))


def test_module_output_is_channels_last_and_matches_under_bf16_autocast():
    torch.manual_seed(0)
    conv = SmallMapConv2d(16, 16, 3, padding=1, bias=False)
    x = torch.randn(4, 16, 2, 2).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = conv(x), F.conv2d(x, conv.weight, padding=1)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.05)


def test_bf16_weight_gradient_on_single_pixel_strided_input_is_right():
    """The case PyTorch's CPU bf16 conv2d gets wrong (README): 3x3 stride 2 on a 1x1 input. Against float64."""
    torch.manual_seed(0)
    conv = SmallMapConv2d(32, 64, 3, stride=2, padding=1, bias=False)
    x = torch.randn(8, 32, 1, 1)
    grads = []
    for _ in range(3):
        conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x).float().square().sum().backward()
        grads.append(conv.weight.grad.clone())
    reference = conv.weight.detach().double().requires_grad_()
    F.conv2d(x.double(), reference, stride=2, padding=1).square().sum().backward()
    for grad in grads:
        assert torch.equal(grad, grads[0])  # the same on every call
        torch.testing.assert_close(
            grad.double(), reference.grad, rtol=0.05, atol=0.05 * reference.grad.abs().max().item()
        )


def test_use_small_map_matmul_keeps_parameters_and_state_dict():
    plain, _ = build_backbone(
        "resnet18", in_channels=1, small_kernel=True, maxpool=True, width=8, small_map_matmul=False
    )
    keys = list(plain.state_dict())
    weight = plain.layer4[1].conv2.weight
    assert not any(isinstance(m, SmallMapConv2d) for m in plain.modules())
    use_small_map_matmul(plain)
    assert list(plain.state_dict()) == keys and plain.layer4[1].conv2.weight is weight
    assert all(type(m) is SmallMapConv2d for m in plain.modules() if isinstance(m, torch.nn.Conv2d))


def test_backbone_with_matmul_equals_torchvision_where_layer4_is_2x2():
    """64 px through the standard stem: 2x2 maps at layer4, so its 3x3 convolutions (three of them) run as matmul."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    reference.fc = torch.nn.Identity()
    ours, _ = build_backbone("resnet18")
    ours.load_state_dict(reference.state_dict())
    ours.eval(), reference.eval()
    calls = []
    for m in ours.modules():
        if isinstance(m, SmallMapConv2d):
            m.register_forward_pre_hook(lambda mod, inp: calls.append(mod.uses_matmul(inp[0])))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)
    assert sum(calls) == 3


def test_encoder_config_key_reaches_the_backbone():
    from mvmr.config import load_config
    from mvmr.models import backbone_from_config

    for enabled in (True, False):
        cfg = load_config(None, ["encoder.backbone=resnet18", f"encoder.small_map_matmul={str(enabled).lower()}"])
        backbone, _ = backbone_from_config(cfg.encoder, in_channels=1)
        assert any(isinstance(m, SmallMapConv2d) for m in backbone.modules()) is enabled
