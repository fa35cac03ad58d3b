"""The faster representation passes compute what the previous ones computed (benchmarks/step_time.py times them).

Each reference is the previous implementation kept reachable here: kymatio's own torch frontend for ScatNet
(mvmr.representations.scattering2d reorganises its arithmetic), and verbatim copies of the previous HOG, local
std and dCor-centring formulas. Inputs: random, and structured ones (constant, stripes, edges at the bin
boundaries, a checkerboard, an impulse, a large offset), at 32, 96 and 224 px and several channel counts.
"""

import math

import pytest
import torch
import torch.nn.functional as F

# kymatio's 2-D torch frontend (``kymatio.torch`` would also import the 1-D/3-D ones, which fail with this SciPy)
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

from mvmr.losses import dcor
from mvmr.representations import build_representation
from mvmr.representations.binning import linear_bins, scatter_two_bins
from mvmr.representations.scattering2d import Scattering2D, full_spectrum, rank_one_factors


def structured(kind: str, batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """(batch, channels, size, size) float32 test images of one kind."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    cols = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    if kind == "random":
        return torch.randn(batch, channels, size, size, generator=g)
    if kind == "constant":
        return torch.full((batch, channels, size, size), 0.37)
    if kind == "stripes":  # a different frequency and orientation per image and channel
        k = torch.arange(1, batch * channels + 1, dtype=torch.float32).view(batch, channels, 1, 1)
        return torch.sin(2 * math.pi * (k * cols + 2 * rows) / size)
    if kind == "edges":  # steps at 0°, 45°, 90° and 135°: gradient angles on the HOG bin centres and wrap point
        images = torch.stack(
            [
                (cols > size / 2).float(),
                (rows + cols > size).float(),
                (rows > size / 3).float(),
                (cols - rows > 0).float(),
            ]
        )
        return images[torch.arange(batch * channels) % 4].view(batch, channels, size, size) * 2 - 1
    if kind == "checkerboard":
        return (((rows // 3 + cols // 3) % 2) * 2 - 1).expand(batch, channels, size, size).clone()
    if kind == "impulse":
        x = torch.zeros(batch, channels, size, size)
        x[..., size // 3, size // 2] = 5.0
        return x
    if kind == "offset":  # a large mean next to a small spread
        return 1000.0 + 0.01 * torch.randn(batch, channels, size, size, generator=g)
    raise ValueError(kind)


KINDS = ["random", "constant", "stripes", "edges", "checkerboard", "impulse", "offset"]


def assert_close_to_scale(out: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    """|out − ref| <= rel·max|ref| + rel·|ref| elementwise (float32 rounding of sums of many terms)."""
    scale = ref.abs().max().clamp_min(1e-30).item()
    torch.testing.assert_close(out, ref, rtol=rel, atol=rel * scale)


# ------------------------------------------------------------------ ScatNet == kymatio's torch frontend
@pytest.mark.parametrize(
    "size, batch, channels, J, L, max_order",
    [
        (32, 4, 3, 2, 8, 2),
        (96, 2, 3, 2, 8, 2),
        (224, 1, 2, 2, 8, 2),  # the authors' J, L at the three sizes
        (32, 2, 1, 3, 4, 2),
        (33, 2, 2, 1, 6, 1),
        (17, 3, 1, 2, 3, 1),
        (64, 1, 3, 4, 5, 2),
        (96, 1, 1, 3, 8, 2),
    ],
)
def test_scattering_equals_kymatio_frontend(size, batch, channels, J, L, max_order):
    ours = Scattering2D(J, (size, size), L=L, max_order=max_order)
    ref = ScatteringTorch2D(J=J, shape=(size, size), L=L, max_order=max_order)
    for kind in KINDS:
        x = structured(kind, batch, channels, size)
        expected = ref(x.contiguous())
        out = ours(x)
        assert out.shape == expected.shape
        assert_close_to_scale(out, expected, 2e-6 if kind != "offset" else 1e-6)


@pytest.mark.parametrize("size", [32, 96, 224])
def test_scatnet_representation_equals_kymatio_frontend(size):
    """The representation (authors' J=2, L=8) flattened in kymatio's (C, K, H', W') order, channels_last input too."""
    x = structured("random", 2, 3, size, seed=size)
    rep = build_representation("scatnet", {"J": 2, "L": 8}, in_channels=3, image_size=size)
    expected = ScatteringTorch2D(J=2, shape=(size, size), L=8)(x.contiguous()).reshape(2, -1)
    assert_close_to_scale(rep(x), expected, 2e-6)
    assert_close_to_scale(rep(x.contiguous(memory_format=torch.channels_last)), expected, 2e-6)
    assert rep.state_dict() == {}  # the filters are non-persistent buffers: nothing in checkpoints


def test_scattering_chunking_does_not_change_the_result():
    """Up to rounding: the FFT and matrix-product kernels may round differently for another batch size."""
    x = structured("random", 5, 3, 32)
    one = Scattering2D(2, (32, 32), L=4, chunk_bytes=1)(x)  # one plane per chunk
    every = Scattering2D(2, (32, 32), L=4, chunk_bytes=1 << 40)(x)  # all 15 planes at once
    assert_close_to_scale(one, every, 1e-6)


def test_scattering_chunks_are_cache_sized_on_the_cpu_and_few_on_a_gpu():
    """On a GPU each chunk costs a few hundred kernel launches: an ImageNet batch (256 RGB images at 224 px) goes
    through in a handful of chunks there, while on the CPU chunks stay around 10 MB (one or two planes)."""
    scattering = Scattering2D(2, (224, 224), L=8)
    planes = 256 * 3
    assert math.ceil(planes / scattering.planes_per_chunk(torch.device("cuda"))) <= 8
    assert scattering.planes_per_chunk(torch.device("cpu")) <= 2
    assert Scattering2D(2, (224, 224), L=8, chunk_bytes=1).planes_per_chunk(torch.device("cuda")) == 1


def test_scattering_general_lowpass_path_equals_kymatio():
    """The fall-back for a non-separable φ (kymatio's own product, alias mean, inverse FFT) is exercised too."""
    ours = Scattering2D(2, (32, 32), L=4)
    ours.separable = [False] * len(ours.separable)
    x = structured("random", 2, 2, 32)
    assert_close_to_scale(ours(x), ScatteringTorch2D(J=2, shape=(32, 32), L=4)(x), 2e-6)


def test_kymatio_lowpass_is_separable_at_float32_rounding():
    """What licenses the two 1-D low-pass maps: every φ level of kymatio's bank is rank one to ~1e-7."""
    from kymatio.scattering2d.filter_bank import filter_bank
    from kymatio.scattering2d.utils import compute_padding

    for size, J in [(32, 2), (96, 2), (224, 2), (64, 4), (17, 1)]:
        bank = filter_bank(*compute_padding(size, size, J), J, 8)
        for phi in bank["phi"]["levels"]:
            assert rank_one_factors(phi)[2] < 5e-7


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (104, 104)])
def test_full_spectrum_equals_fft2(shape):
    u = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    expected = torch.fft.fft2(u)
    assert_close_to_scale(torch.view_as_real(full_spectrum(u)), torch.view_as_real(expected), 1e-6)


# ------------------------------------------------------------------ HOG == the previous formula
def hog_reference(x: torch.Tensor, nbins: int, pool: int) -> torch.Tensor:
    """The previous HOG.compute (variant mvmr): conv2d gradients, linear_bins, int64 indices."""
    batch, channels = x.shape[:2]
    cells = x.shape[-1] // pool
    central = torch.tensor([-1.0, 0.0, 1.0])
    kernels = torch.zeros(2, 1, 3, 3)
    kernels[0, 0, 1, :] = central
    kernels[1, 0, :, 1] = central
    planes = F.pad(x.reshape(-1, 1, *x.shape[-2:]), (1, 1, 1, 1), mode="replicate")
    grad = F.conv2d(planes, kernels)
    gx, gy = grad[:, 0], grad[:, 1]
    covered = cells * pool
    gx, gy = gx[:, :covered, :covered], gy[:, :covered, :covered]
    magnitude = torch.hypot(gx, gy)
    orientation = torch.atan2(gy, gx).remainder(math.pi)
    lower, upper, upper_share = linear_bins(orientation * (nbins / math.pi), nbins, circular=True)
    position = torch.arange(covered) // pool
    cell = (position[:, None] * cells + position[None, :]).expand_as(lower)
    n_cells = cells**2
    hist = scatter_two_bins(
        (lower * n_cells + cell).flatten(1),
        (upper * n_cells + cell).flatten(1),
        (magnitude * (1 - upper_share)).flatten(1),
        (magnitude * upper_share).flatten(1),
        nbins * n_cells,
    )
    return hist.div_(pool**2).reshape(batch, -1)


@pytest.mark.parametrize(
    "size, channels, nbins, pool",
    [(32, 3, 9, 8), (96, 3, 9, 8), (224, 1, 9, 8), (96, 2, 24, 8), (30, 3, 9, 8), (31, 1, 4, 5), (12, 2, 6, 4)],
)
def test_hog_equals_previous_formula(size, channels, nbins, pool):
    rep = build_representation("hog", {"nbins": nbins, "pool": pool}, in_channels=channels, image_size=size)
    for kind in KINDS:
        x = structured(kind, 2, channels, size)
        torch.testing.assert_close(rep(x), hog_reference(x, nbins, pool), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ local std == the previous formula
def local_std_reference(x: torch.Tensor) -> torch.Tensor:
    """The previous LocalStd.compute: nine differences to the centre, var = mean(d²) − mean(d)²."""
    size = x.shape[-1]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    sum_d = torch.zeros_like(x)
    sum_d2 = torch.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            d = padded[..., dy : dy + size, dx : dx + size] - x
            sum_d += d
            sum_d2 += d * d
    mean_d = sum_d / 9
    return (sum_d2 / 9 - mean_d * mean_d).clamp_(min=0).sqrt_().reshape(x.shape[0], -1)


@pytest.mark.parametrize("size, channels", [(32, 3), (96, 3), (224, 1), (96, 2), (2, 1), (7, 3)])
def test_local_std_equals_previous_formula(size, channels):
    rep = build_representation("local_std", {}, in_channels=channels, image_size=size)
    for kind in KINDS:
        x = structured(kind, 2, channels, size)
        torch.testing.assert_close(rep(x), local_std_reference(x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ dCor centring == the previous two passes
def previous_centred_chunks(x: torch.Tensor, dtype: torch.dtype, chunk_size: int):
    """The previous _centred_chunks: upcast copy, then centring in place."""
    for chunk in x.split(chunk_size, dim=1):
        centred = chunk.to(dtype).clone()
        yield centred.sub_(centred.mean(dim=0, keepdim=True))


@pytest.mark.parametrize(
    "in_dtype, dtype",
    [
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float64),
        (torch.float64, torch.float64),
    ],
)
@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_centred_chunks_equal_previous_passes(in_dtype, dtype, chunk_size):
    x = (3.0 + torch.randn(16, 300, generator=torch.Generator().manual_seed(2))).to(in_dtype)
    ours = [chunk.clone() for chunk in dcor._centred_chunks(x, dtype, chunk_size)]  # the workspace is reused
    ref = list(previous_centred_chunks(x, dtype, chunk_size))
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_distance_correlation_of_wide_representations_is_unchanged():
    """A ScatNet-wide (B, 140k) float32 representation against z: the Gram path gives the float64 statistic."""
    g = torch.Generator().manual_seed(3)
    rep = torch.rand(16, 139968, generator=g) + 2.0
    z = torch.randn(16, 64, generator=g)
    value = dcor.distance_correlation(rep, z)
    reference = dcor.distance_correlation(rep.double(), z.double())
    assert abs(value.item() - reference.item()) < 1e-5


# ------------------------------------------------------------------ ScatNet approximation (subsample_second_order)
def subsampled_second_order_reference(x: torch.Tensor, J: int, L: int) -> torch.Tensor:
    """kymatio's own scattering2d loop (its backend ops, filters and padding), with the one change the switch makes:
    the second-order path is subsampled to resolution J (not j2) before its modulus and low-passed there by φ
    periodised to resolution J (kymatio's periodize_filter_fft), without a further subsampling."""
    import numpy as np
    from kymatio.scattering2d.backend.torch_backend import backend
    from kymatio.scattering2d.filter_bank import gabor_2d, periodize_filter_fft
    from scipy.fft import fft2

    size = x.shape[-1]
    frontend = ScatteringTorch2D(J=J, shape=(size, size), L=L)
    phi, psi = frontend.load_filters()
    mp, np_ = frontend._M_padded, frontend._N_padded
    phi_j = torch.from_numpy(periodize_filter_fft(np.real(fft2(gabor_2d(mp, np_, 0.8 * 2 ** (J - 1), 0, 0))), J))
    phi_j = phi_j.float().unsqueeze(-1).contiguous()
    planes = x.reshape(-1, size, size).contiguous()
    u0 = backend.rfft(frontend.pad(planes))
    second = []
    for n1 in range(len(psi)):
        j1 = psi[n1]["j"]
        u1 = backend.cdgmm(u0, psi[n1]["levels"][0])
        if j1 > 0:
            u1 = backend.subsample_fourier(u1, k=2**j1)
        u1 = backend.rfft(backend.modulus(backend.ifft(u1)))
        for n2 in range(len(psi)):
            j2 = psi[n2]["j"]
            if j2 <= j1:
                continue
            u2 = backend.subsample_fourier(backend.cdgmm(u1, psi[n2]["levels"][j1]), k=2 ** (J - j1))
            u2 = backend.rfft(backend.modulus(backend.ifft(u2)))
            second.append(backend.unpad(backend.irfft(backend.cdgmm(u2, phi_j))))
    exact = frontend(x.contiguous())
    first = exact[..., : 1 + J * L, :, :]
    return torch.cat([first, torch.stack(second, -3).reshape(*x.shape[:-2], -1, *first.shape[-2:])], -3)


@pytest.mark.parametrize("size, batch, channels, J, L", [(32, 3, 3, 2, 8), (96, 1, 3, 2, 8), (64, 1, 2, 3, 4)])
def test_subsampled_second_order_equals_its_kymatio_formula(size, batch, channels, J, L):
    ours = Scattering2D(J, (size, size), L=L, subsample_second_order=True)
    exact = Scattering2D(J, (size, size), L=L)
    for kind in ("random", "stripes", "impulse", "offset"):
        x = structured(kind, batch, channels, size)
        out = ours(x)
        assert_close_to_scale(out, subsampled_second_order_reference(x, J, L), 2e-6)
        first = 1 + J * L
        torch.testing.assert_close(out[..., :first, :, :], exact(x)[..., :first, :, :], rtol=0, atol=0)


def natural_crops(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) normalised crops of scikit-image's bundled photographs at random scales."""
    import numpy as np
    import skimage.data
    from skimage.transform import resize

    photos = []
    for name in ("astronaut", "coffee", "chelsea", "camera", "rocket", "immunohistochemistry", "coins", "brick"):
        try:
            image = getattr(skimage.data, name)().astype(np.float32) / 255.0
        except Exception:  # a photograph this scikit-image does not bundle
            continue
        photos.append(np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3])
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        image = photos[rng.integers(len(photos))]
        side = int(rng.uniform(0.25, 1.0) * min(image.shape[:2]))
        top, left = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
        crop = resize(image[top : top + side, left : left + side], (size, size), anti_aliasing=True)
        crops.append(torch.from_numpy(crop).permute(2, 0, 1).float())
    return (torch.stack(crops) - 0.5) / 0.25


def test_subsampled_second_order_barely_moves_the_dcor_terms():
    """The measured cost of the approximation on 48 natural 96-px crops: the whole ScatNet rows' distance structure
    is unchanged (dCor(approx, exact) ~ 1), and the dCor terms against other views of the images move by < 0.005,
    raw or z-scored per feature (the objective's ``standardize``), although the second-order coefficients move by
    ~8 % (relative L2)."""
    from mvmr.losses.objective import standardize_columns

    pytest.importorskip("skimage")
    x = natural_crops(48, 96)
    exact = build_representation("scatnet", {"J": 2, "L": 8}, in_channels=3, image_size=96)(x)
    approx = build_representation(
        "scatnet", {"J": 2, "L": 8, "subsample_second_order": True}, in_channels=3, image_size=96
    )(x)
    second = slice(17 * 24 * 24, 81 * 24 * 24)  # channel 0's second-order block (the others alike)
    moved = ((approx[:, second] - exact[:, second]).norm() / exact[:, second].norm()).item()
    assert 0.01 < moved < 0.2
    assert dcor.distance_correlation(approx, exact).item() > 0.9999
    assert dcor.distance_correlation(standardize_columns(approx), standardize_columns(exact)).item() > 0.999
    views = {
        "pixels": x.reshape(48, -1),
        "8x8 means": F.avg_pool2d(x, 8).reshape(48, -1),
        "HOG": build_representation("hog", {"nbins": 9, "pool": 8}, in_channels=3, image_size=96)(x),
    }
    for name, other in views.items():
        for transform in (lambda t: t, standardize_columns):
            delta = (
                (
                    dcor.distance_correlation(transform(approx), other)
                    - dcor.distance_correlation(transform(exact), other)
                )
                .abs()
                .item()
            )
            assert delta < 5e-3, (name, delta)


# ------------------------------------------------------------------ benchmarks/step_time.py: the uncached pieces
def test_step_time_sizes_and_variants_parse():
    import argparse

    from conftest import load_benchmark

    step_time = load_benchmark("step_time")
    assert step_time.parse_sizes("32,96,224") == [32, 96, 224]
    assert step_time.parse_variants("uncached") == ["floor", "uncached"]  # the floor always runs
    for bad in ("48", "32,x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            step_time.parse_sizes(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown variant"):
        step_time.parse_variants("floor,fast")
    defaults = step_time.build_parser().parse_args([])
    assert defaults.sizes == [32, 96] and "uncached_subsampled" not in defaults.variants


def test_isolated_uncached_work_names_every_piece():
    """Smoke test at 32 px, batch 4: the copy's view, each representation's φ(x̄) and each dCor term come back as
    finite seconds."""
    from conftest import load_benchmark

    step_time = load_benchmark("step_time")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    stepper = step_time.Stepper(step_time.make_module(32, 4, step_time.AUTHORS), None)
    pieces = step_time.isolated_uncached_work(stepper, images, rounds=1)
    keys = [key for key in stepper.module.representations]
    assert list(pieces) == (
        ["the augmented copy's view (one more per step each)"]
        + [f"{key}: φ(x̄)" for key in keys if key != "augmented_pixels"]
        + [f"{key}: its dCor term" for key in keys]
    )
    assert all(math.isfinite(seconds) for seconds in pieces.values())
