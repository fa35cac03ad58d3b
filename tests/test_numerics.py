"""exact_float32: the representations and the dCor terms run in true float32 whatever the training run set.

TensorFloat-32 exists only on CUDA GPUs, so these tests check the switches torch reads when it picks a kernel
(the float32 matmul precision and cuDNN's allow_tf32), recorded at the moment each product is called.
"""

import pytest
import torch

from mvmr.losses import distance_correlation
from mvmr.numerics import exact_float32
from mvmr.representations import build_representation
from mvmr.representations.cache import RandomProjection


@pytest.fixture
def fast_float32():
    """What training.py and cuDNN's default set: TF32 products allowed; restored after the test."""
    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = conv


def switches():
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


@pytest.fixture
def recorded_products(monkeypatch):
    """The (matmul precision, cudnn.allow_tf32) in force at every Tensor.addmm_ / @ / torch.matmul call."""
    seen = []
    for owner, name in ((torch.Tensor, "addmm_"), (torch.Tensor, "__matmul__"), (torch, "matmul")):
        original = getattr(owner, name)

        def recorder(*args, _original=original, **kwargs):
            seen.append(switches())
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorder)
    return seen


def test_exact_inside_and_restored_after(fast_float32):
    with exact_float32(torch.device("cpu")):
        assert switches() == ("highest", False)
        assert not torch.is_autocast_enabled("cpu")
        with exact_float32(torch.device("cpu")):  # nested: the inner exit keeps the outer block exact
            pass
        assert switches() == ("highest", False)
    assert switches() == ("high", True)


def test_restored_after_an_error(fast_float32):
    with pytest.raises(RuntimeError, match="boom"):
        with exact_float32(torch.device("cpu")):
            raise RuntimeError("boom")
    assert switches() == ("high", True)


def test_autocast_off_inside(fast_float32):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with exact_float32(torch.device("cpu")):
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")


def test_dcor_products_forward_and_backward_are_exact(fast_float32, recorded_products):
    x = torch.randn(16, 40, requires_grad=True)
    y = torch.randn(16, 30)
    distance_correlation(x, y).backward()
    assert recorded_products, "the Gram products were not seen: the recorder no longer covers dcor.py"
    assert set(recorded_products) == {("highest", False)}
    assert switches() == ("high", True)


def test_objective_is_exact(fast_float32, recorded_products):
    from mvmr.losses.objective import MVMRObjective

    objective = MVMRObjective(representation_weights={"pixels": 1.0})
    z_bar, z = torch.randn(8, 12, requires_grad=True), torch.randn(8, 12, requires_grad=True)
    loss, _ = objective(z_bar, z, {"pixels": torch.randn(8, 20)})
    loss.backward()
    assert recorded_products and set(recorded_products) == {("highest", False)}


@pytest.mark.parametrize("name", ["dct", "scatnet"])
def test_representations_compute_exact(fast_float32, recorded_products, name):
    rep = build_representation(name, None, in_channels=1, image_size=16)
    rep(torch.rand(2, 1, 16, 16))
    assert recorded_products and set(recorded_products) == {("highest", False)}
    assert switches() == ("high", True)


def test_representation_convolutions_see_cudnn_tf32_off(fast_float32, monkeypatch):
    """HOG's and Gabor's convolutions: cuDNN reads allow_tf32 when it runs them."""
    import torch.nn.functional as F

    seen = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: seen.append(switches()) or conv2d(*a, **k))
    for name in ("hog", "gabor"):
        build_representation(name, None, in_channels=1, image_size=16)(torch.rand(2, 1, 16, 16))
    assert seen and set(seen) == {("highest", False)}


def test_random_projection_is_exact(fast_float32, recorded_products):
    RandomProjection(50, 8, seed=0)(torch.randn(4, 50))
    assert recorded_products and set(recorded_products) == {("highest", False)}
