"""distance_correlation / pairwise_distances against dcor, scipy, a hand-worked case and a naive reference."""

import json
import math
import os
import tempfile

import dcor
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from torch.profiler import ProfilerActivity, profile

from mvmr.errors import ConfigError
from mvmr.losses import distance_correlation, double_centre, pairwise_distances, u_centre
from mvmr.losses.dcor import centred_distances


def dependent_pair(batch: int, p: int, q: int, seed: int, dtype=torch.float64):
    """x (B, p) and y (B, q) = a nonlinear function of x plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, p, generator=g, dtype=dtype)
    mix = torch.randn(p, q, generator=g, dtype=dtype)
    y = torch.tanh(x @ mix) + 0.5 * torch.randn(batch, q, generator=g, dtype=dtype)
    return x, y


def naive_distance_correlation(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Independent float64 reference: distances by explicit (B, B, D) differences, textbook formulas."""

    def distances(v):
        diff = v[:, None, :] - v[None, :, :]
        sq = (diff**2).sum(-1)
        off = ~torch.eye(v.shape[0], dtype=torch.bool)
        out = torch.zeros_like(sq)
        out[off] = torch.sqrt(sq[off])  # off-diagonal rows are distinct in the random data used here
        return out

    a, b = distances(x.reshape(len(x), -1)), distances(y.reshape(len(y), -1))
    n = a.shape[0]
    if unbiased:

        def centre(m):
            c = m - m.sum(1, keepdim=True) / (n - 2) - m.sum(0, keepdim=True) / (n - 2) + m.sum() / ((n - 1) * (n - 2))
            return c * (1 - torch.eye(n, dtype=m.dtype))

        scale = 1.0 / (n * (n - 3))
    else:

        def centre(m):
            return m - m.mean(1, keepdim=True) - m.mean(0, keepdim=True) + m.mean()

        scale = 1.0 / n**2
    a, b = centre(a), centre(b)
    ratio = scale * (a * b).sum() / torch.sqrt(scale * (a * a).sum() * scale * (b * b).sum())
    return ratio if unbiased else torch.sqrt(ratio)


@pytest.mark.parametrize("batch,p,q", [(8, 1, 1), (8, 3, 5), (17, 10, 2), (32, 64, 7), (64, 5, 40)])
def test_matches_dcor_library_float64(batch, p, q):
    x, y = dependent_pair(batch, p, q, seed=batch + p + q)
    xn, yn = x.numpy(), y.numpy()
    ours_v = distance_correlation(x, y)
    ours_u = distance_correlation(x, y, unbiased=True)
    assert ours_v.dtype == torch.float64 and ours_v.dim() == 0
    assert ours_v.item() == pytest.approx(dcor.distance_correlation(xn, yn), rel=1e-5)
    assert ours_u.item() == pytest.approx(dcor.u_distance_correlation_sqr(xn, yn), rel=1e-5, abs=1e-9)


def test_float32_close_to_dcor_library():
    x, y = dependent_pair(48, 20, 9, seed=3, dtype=torch.float32)
    xn, yn = x.double().numpy(), y.double().numpy()
    assert distance_correlation(x, y).dtype == torch.float32
    assert distance_correlation(x, y).item() == pytest.approx(dcor.distance_correlation(xn, yn), rel=1e-4)
    assert distance_correlation(x, y, unbiased=True).item() == pytest.approx(
        dcor.u_distance_correlation_sqr(xn, yn), rel=1e-3, abs=1e-5
    )


def test_unbiased_can_be_negative_like_dcor():
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(10):  # independent samples: u_dcor² scatters around 0
        x, y = (
            torch.randn(16, 3, generator=g, dtype=torch.float64),
            torch.randn(16, 4, generator=g, dtype=torch.float64),
        )
        values.append(distance_correlation(x, y, unbiased=True).item())
        assert values[-1] == pytest.approx(dcor.u_distance_correlation_sqr(x.numpy(), y.numpy()), rel=1e-6, abs=1e-12)
    assert min(values) < 0


def test_hand_worked_three_points():
    # x = (0, 1, 2), y = (0, 1, 0): sums over the double-centred matrices (in units of 1/81) are
    # ΣAB = 72, ΣA² = 360, ΣB² = 144, so dCor² = 72 / sqrt(360·144) = 1/sqrt(10).
    x = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64)
    assert distance_correlation(x, y).item() == pytest.approx(10**-0.25, rel=1e-12)


def test_dcor_library_docstring_example_unbiased():
    a = torch.arange(1.0, 17.0, dtype=torch.float64).reshape(4, 4)
    b = torch.tensor([[1.0], [0.0], [0.0], [1.0]], dtype=torch.float64)
    assert distance_correlation(a, b, unbiased=True).item() == pytest.approx(-0.5, rel=1e-9)


@pytest.mark.parametrize("unbiased", [False, True])
def test_identity_and_similarity_give_one_and_constant_gives_zero(unbiased):
    x, y = dependent_pair(12, 6, 3, seed=1)
    assert distance_correlation(x, x, unbiased=unbiased).item() == pytest.approx(1.0, rel=1e-9)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert distance_correlation(x, 3.0 * x @ rotation + 2.0, unbiased=unbiased).item() == pytest.approx(1.0, rel=1e-9)
    constant = torch.full((12, 4), 0.7, dtype=torch.float64)
    assert distance_correlation(x, constant, unbiased=unbiased).item() == 0.0
    assert distance_correlation(constant, constant, unbiased=unbiased).item() == 0.0


def test_multi_dim_inputs_are_flattened():
    g = torch.Generator().manual_seed(5)
    images, y = torch.randn(10, 3, 4, 4, generator=g), torch.randn(10, 7, generator=g)
    assert torch.equal(distance_correlation(images, y), distance_correlation(images.reshape(10, -1), y))


def test_pairwise_distances_match_scipy():
    x = torch.randn(20, 33, dtype=torch.float64) + 5.0  # an offset mean: centring keeps the Gram formula exact
    ref = cdist(x.numpy(), x.numpy())
    np.testing.assert_allclose(pairwise_distances(x).numpy(), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pairwise_distances(x.float()).numpy(), ref, rtol=1e-4, atol=1e-4)
    assert torch.all(pairwise_distances(x).diagonal() == 0)


def test_centring_helpers_match_dcor_library():
    a = torch.tensor(cdist(*(2 * [np.random.default_rng(0).normal(size=(9, 4))])))
    np.testing.assert_allclose(double_centre(a).numpy(), dcor.double_centered(a.numpy()), atol=1e-12)
    np.testing.assert_allclose(u_centre(a).numpy(), dcor.u_centered(a.numpy()), atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_equals_unchunked(chunk_size):
    x, y = dependent_pair(24, 150, 11, seed=2, dtype=torch.float32)
    whole = distance_correlation(x, y, chunk_size=10**6)
    assert distance_correlation(x, y, chunk_size=chunk_size).item() == pytest.approx(whole.item(), rel=1e-5)
    x64 = x.double().requires_grad_(True)
    distance_correlation(x64, y.double(), chunk_size=chunk_size).backward()
    chunked_grad = x64.grad.clone()
    x64.grad = None
    distance_correlation(x64, y.double(), chunk_size=10**6).backward()
    torch.testing.assert_close(chunked_grad, x64.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_gradient_matches_naive_reference(unbiased):
    x, y = dependent_pair(16, 9, 5, seed=4)
    ours_x, ours_y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    ref_x, ref_y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    distance_correlation(ours_x, ours_y, unbiased=unbiased).backward()
    naive_distance_correlation(ref_x, ref_y, unbiased=unbiased).backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(ours_y.grad, ref_y.grad, rtol=1e-7, atol=1e-10)
    # float32 computation, same gradients up to float32 accuracy
    x32, y32 = x.float().requires_grad_(True), y.float().requires_grad_(True)
    distance_correlation(x32, y32, unbiased=unbiased).backward()
    torch.testing.assert_close(x32.grad.double(), ref_x.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("unbiased", [False, True])
def test_gradcheck_finite_differences(unbiased):
    x, y = dependent_pair(8, 4, 3, seed=6)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: distance_correlation(a, b, unbiased=unbiased, chunk_size=3), (x, y), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_duplicate_rows_give_finite_gradients(dtype):
    x, y = dependent_pair(10, 6, 4, seed=7, dtype=dtype)
    x[3] = x[1]
    x[8] = x[1]
    x.requires_grad_(True)
    value = distance_correlation(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.all(torch.isfinite(x.grad))
    # the coinciding pairs contribute a zero subgradient; every other pair its exact gradient
    ref_x = x.detach().double().requires_grad_(True)
    naive_distance_correlation_with_ties(ref_x, y.double()).backward()
    tol = dict(rtol=1e-6, atol=1e-8) if dtype == torch.float64 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(x.grad.double(), ref_x.grad, **tol)


def naive_distance_correlation_with_ties(x, y):
    """Naive V-statistic dCor whose distance is 0 with a zero gradient for coinciding rows."""
    diff = x[:, None, :] - x[None, :, :]
    sq = (diff**2).sum(-1)
    distinct = sq > 0
    a = torch.zeros_like(sq)
    a[distinct] = torch.sqrt(sq[distinct])
    b = torch.cdist(y, y)
    centre = lambda m: m - m.mean(1, keepdim=True) - m.mean(0, keepdim=True) + m.mean()
    a, b = centre(a), centre(b)
    return torch.sqrt((a * b).mean() / torch.sqrt((a * a).mean() * (b * b).mean()))


def test_zero_variance_gradient_is_finite():
    x = torch.ones(6, 3, requires_grad=True)
    distance_correlation(x, torch.randn(6, 2)).backward()
    assert torch.all(x.grad == 0)


def test_autocast_bf16_upcasts_to_float32():
    x, y = dependent_pair(32, 16, 8, seed=8, dtype=torch.float32)
    weight = torch.randn(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x @ weight
        assert h.dtype == torch.bfloat16
        inside = distance_correlation(h, y)
        inside_u = distance_correlation(h, y, unbiased=True)
    assert inside.dtype == torch.float32 and inside_u.dtype == torch.float32
    reference = dcor.distance_correlation(h.double().detach().numpy(), y.double().numpy())
    assert inside.item() == pytest.approx(reference, rel=1e-5)
    assert inside_u.item() == pytest.approx(
        dcor.u_distance_correlation_sqr(h.double().detach().numpy(), y.double().numpy()), rel=1e-4, abs=1e-6
    )
    # float32 inputs under autocast: the Gram matmul must not be run in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = distance_correlation(x, y)
    assert under.item() == pytest.approx(distance_correlation(x, y).item(), rel=1e-6)


def test_autocast_backward_gives_float_gradients_of_input_dtype():
    x = torch.randn(16, 12, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distance_correlation(x, torch.randn(16, 5)).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.all(torch.isfinite(x.grad))


def test_input_errors():
    with pytest.raises(ValueError, match="batch sizes 5 and 6"):
        distance_correlation(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ConfigError, match="at least 4 samples"):
        distance_correlation(torch.randn(3, 2), torch.randn(3, 2), unbiased=True)


def peak_extra_bytes(fn) -> int:
    """Peak CPU bytes allocated (net of frees) while ``fn()`` runs, relative to its start: the running sum of the
    torch profiler's allocator events (profile_memory=True)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    del result
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    memory = sorted(
        (e["ts"], e["args"]["Bytes"])
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    )
    running = peak = 0
    for _, nbytes in memory:
        running += nbytes
        peak = max(peak, running)
    return peak


def test_memory_stays_order_batch_squared():
    """dCor against a very wide representation (a flattened image) needs a few chunks and B x B matrices, never a
    (B, B, D) broadcast (benchmarks/README.md: the retired dcor_memory.py measured 40 MiB at B = 1024, D = 140k)."""
    batch, dim, chunk = 64, 60_000, 2048
    x = torch.randn(batch, dim)  # 15 MiB; a (B, B, D) broadcast would be 938 MiB
    y = torch.randn(batch, 32)
    budget = 3 * batch * chunk * 4 + 40 * batch * batch * 4  # a few chunks + a few dozen B×B matrices (~1.5 MiB)
    assert peak_extra_bytes(lambda: distance_correlation(x, y, chunk_size=chunk)) < budget
    x.requires_grad_(True)
    peak = peak_extra_bytes(lambda: distance_correlation(x, y, chunk_size=chunk).backward())
    assert peak < x.numel() * 4 + budget  # the gradient itself plus O(B²)
    assert math.isfinite(x.grad.abs().sum().item())


def test_non_finite_input_gives_a_non_finite_dcor_not_a_silent_zero():
    from mvmr.losses import distance_correlation

    x = torch.randn(8, 5)
    y = torch.randn(8, 3)
    y[2, 1] = float("nan")
    assert torch.isnan(distance_correlation(x, y))
    assert torch.isnan(distance_correlation(x, torch.full_like(y, float("nan"))))


def test_float16_input_gives_exactly_the_distances_of_its_float32_upcast():
    """Cached rows reach the loss in float16; the Gram chunks upcast them, so nothing changes but the bytes read."""
    x = (torch.rand(16, 3000) * 4 + 1).half()
    for chunk_size in (None, 7, 1000):
        torch.testing.assert_close(
            centred_distances(x, chunk_size=chunk_size),
            centred_distances(x.float(), chunk_size=chunk_size),
            rtol=0,
            atol=0,
        )


def test_workspace_reused_across_shapes_and_dtypes_stays_correct():
    """The Gram chunks share one buffer per device and dtype: wide, narrow, float64 and float32 inputs in turn
    (and a backward in between) each still match the float64 reference."""
    torch.manual_seed(0)
    inputs = [
        torch.randn(12, 5000),
        torch.randn(30, 7),
        torch.randn(12, 5000, dtype=torch.float64),
        torch.randn(5, 40000),
        torch.randn(30, 7),
    ]
    for x in inputs:
        reference = torch.cdist(x.double(), x.double())
        tolerance = 1e-12 if x.dtype == torch.float64 else 1e-4
        torch.testing.assert_close(
            pairwise_distances(x, chunk_size=1024).double(),
            reference,
            rtol=tolerance,
            atol=tolerance * reference.max().item(),
        )
        y = torch.randn(x.shape[0], 3, dtype=torch.float64)
        grads = []
        for dtype in (x.dtype, torch.float64):  # the backward's chunks use the workspace too
            leaf = x[:, :50].to(dtype).clone().requires_grad_(True)
            distance_correlation(leaf, y.to(dtype), chunk_size=8).backward()
            grads.append(leaf.grad.double())
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)


def test_large_mean_features_keep_float32_distances_accurate():
    """Columns far from zero next to their spread (non-negative histograms): the Gram chunks are centred over the
    batch first, so float32 distances stay close to float64 ones (uncentred, ‖x‖² ~ 1e8 would swamp d² ~ 1e2)."""
    torch.manual_seed(0)
    x = 1000.0 + torch.randn(20, 100, dtype=torch.float64)
    reference = torch.cdist(x, x)
    torch.testing.assert_close(pairwise_distances(x.float(), chunk_size=30).double(), reference, rtol=1e-4, atol=1e-3)
