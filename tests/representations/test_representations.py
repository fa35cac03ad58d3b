"""Representations φ_k: every formula against an independent float64 reference or a hand-worked case."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import torch
from skimage.filters import gabor_kernel as skimage_gabor_kernel

from mvmr.errors import ConfigError
from mvmr.representations import REPRESENTATIONS, Representation, build_representation, describe_representations
from mvmr.representations.gabor import gabor_sigma

HAND_CRAFTED = ["augmented_pixels", "color_histogram", "dct", "gabor", "hog", "local_std", "pixels", "scatnet"]
ALL = sorted(HAND_CRAFTED + ["teacher"])  # the teacher needs weights on disk: tested in test_teacher.py
EXAMPLE_DIMS = {
    "augmented_pixels": 27648,
    "color_histogram": 96,
    "dct": 27648,
    "gabor": 20736,
    "hog": 10368,
    "local_std": 27648,
    "pixels": 27648,
    "scatnet": 139968,
}  # 3×96×96, defaults (hand-computed)
SMALL = {
    "hog": {"nbins": 6, "pool": 4},
    "scatnet": {"J": 2, "L": 4},
    "gabor": {"scales": 2, "pool": 4},
    "color_histogram": {"bins": 8},
    "dct": {"keep": 5},
}


def flip_augment(x: torch.Tensor) -> torch.Tensor:
    """A stand-in augmentation with per-sample randomness: flip a random subset horizontally."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def build(name, params=None, channels=2, size=12, **kw):
    return build_representation(
        name,
        params if params is not None else SMALL.get(name, {}),
        in_channels=channels,
        image_size=size,
        augment=flip_augment,
        **kw,
    )


def images(batch=3, channels=2, size=12, seed=0):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ registry and config errors
def test_every_family_is_registered():
    assert REPRESENTATIONS.names() == ALL


def test_unknown_name_is_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        build("sift", {}, index=2)
    assert str(err.value) == f"representations[2].name: unknown representation 'sift'; allowed: {', '.join(ALL)}"


def test_unknown_parameter_names_the_entry_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        build("hog", {"nbins": 6, "foo": 1}, index=0)
    assert str(err.value) == "representations[0] (hog): unknown parameter 'foo'; allowed: nbins, pool, variant"
    with pytest.raises(ConfigError, match="unknown parameter 'keep'; allowed: \\(none\\)"):
        build("pixels", {"keep": 3})


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("hog", {"nbins": -1}, "hog.nbins must be an int >= 2, got -1"),
        ("hog", {"nbins": True}, "hog.nbins must be an int >= 2, got True"),
        ("hog", {"pool": "8"}, "hog.pool must be an int >= 1, got '8'"),
        ("hog", {"pool": 13}, "hog.pool must be <= the image size 12, got 13"),
        ("scatnet", {"max_order": 3}, "scatnet.max_order must be an int in [1, 2], got 3"),
        ("scatnet", {"J": 4}, "scatnet.J must be <= log2 of the image size 12 (2^J <= image size), got 4"),
        ("dct", {"keep": 0}, "dct.keep must be an int >= 1 or null, got 0"),
        ("dct", {"keep": 13}, "dct.keep must be <= the image size 12 or null, got 13"),
        ("color_histogram", {"low": 1, "high": 1}, "color_histogram.high must be > color_histogram.low (1), got 1.0"),
        ("color_histogram", {"low": float("nan")}, "color_histogram.low must be a finite number, got nan"),
        ("gabor", {"wavelength": 0}, "gabor.wavelength must be a finite number > 0, got 0"),
    ],
)
def test_invalid_parameter_messages(name, params, message):
    with pytest.raises(ConfigError) as err:
        build(name, params)
    assert str(err.value) == message


def test_augmented_pixels_without_augment_explains_why():
    with pytest.raises(ConfigError, match="needs the training augmentation") as err:
        build_representation("augmented_pixels", {}, in_channels=3, image_size=8)
    assert "\n" not in str(err.value)


def test_describe_lists_every_family_with_defaults_and_example_size():
    text = describe_representations()
    table = text.splitlines()
    assert len(table) == 2 + len(ALL)
    assert "| `teacher` |" in text and "512 (CLIP ViT-B/16)" in text
    for name in HAND_CRAFTED:
        row = next(line for line in table if line.startswith(f"| `{name}` |"))
        assert row.rstrip(" |").endswith(str(EXAMPLE_DIMS[name]))
    assert "nbins=24, pool=8" in text and "keep=null" in text


@pytest.mark.parametrize("name", HAND_CRAFTED)
def test_docstring_states_the_example_output_size(name):
    cls = REPRESENTATIONS.get(name)
    extra = {"augment": flip_augment} if cls.needs_augment else {}
    assert cls(3, 96, **extra).output_dim() == EXAMPLE_DIMS[name]
    assert f"(B, {EXAMPLE_DIMS[name]})" in cls.__doc__


# ------------------------------------------------------------------ contract shared by all families
@pytest.mark.parametrize("size", [12, 13])
@pytest.mark.parametrize("name", HAND_CRAFTED)
def test_contract_shape_dtype_no_gradients_no_state(name, size):
    rep = build(name, size=size)
    assert isinstance(rep, Representation)
    x = images(size=size).requires_grad_(True)
    out = rep(x)
    assert out.shape == (3, rep.output_dim()) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and not out.requires_grad
    assert list(rep.parameters()) == [] and rep.state_dict() == {}
    assert rep.deterministic == (name != "augmented_pixels")


@pytest.mark.parametrize("name", [n for n in HAND_CRAFTED if n != "augmented_pixels"])
def test_batch_items_are_independent_and_half_input_is_upcast(name):
    rep = build(name)
    x = images()
    together = rep(x)
    alone = torch.cat([rep(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    half = rep(x.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, rep(x.bfloat16().float()))


@pytest.mark.parametrize("name", [n for n in HAND_CRAFTED if n != "augmented_pixels"])
def test_autocast_is_disabled_inside(name):
    rep = build(name)
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rep(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, rep(x), rtol=1e-6, atol=1e-6)  # bf16 convolutions would differ by ~1e-2


@pytest.mark.parametrize("name", HAND_CRAFTED)
def test_to_device_moves_everything(name):
    """No GPU here: the meta device stands in. Tensors left on the CPU would make forward fail."""
    rep = build(name).to("meta")
    assert all(buffer.device.type == "meta" for buffer in rep.buffers())
    out = rep(torch.empty(3, 2, 12, 12, device="meta"))
    assert out.device.type == "meta" and out.shape == (3, rep.output_dim()) and out.dtype == torch.float32


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match=r"expects \(B, 2, 12, 12\) images, got \(3, 3, 12, 12\)"):
        build("hog")(images(channels=3))


def test_repr_shows_every_setting():  # the representation cache hashes repr(module)
    assert repr(build("hog")) == "HOG(in_channels=2, image_size=12, nbins=6, pool=4, variant='mvmr')"


# ------------------------------------------------------------------ pixels, augmented pixels
def test_pixels_is_the_flattened_image():
    x = images()
    torch.testing.assert_close(build("pixels")(x), x.reshape(3, -1), rtol=0, atol=0)


def test_augmented_pixels_applies_the_injected_augmentation_per_call():
    calls = []

    def augment(x):
        calls.append(x.shape)
        return -x

    x = images()
    rep = build_representation("augmented_pixels", {}, in_channels=2, image_size=12, augment=augment)
    torch.testing.assert_close(rep(x), -x.reshape(3, -1), rtol=0, atol=0)
    assert calls == [x.shape]


def test_augmented_pixels_does_not_adopt_an_augment_module():
    augment = torch.nn.Conv2d(2, 2, 1)
    rep = build_representation("augmented_pixels", {}, in_channels=2, image_size=12, augment=augment)
    assert list(rep.parameters()) == [] and rep(images()).shape == (3, 288)


# ------------------------------------------------------------------ HOG
def hog_reference(x: np.ndarray, nbins: int, pool: int) -> np.ndarray:
    """Float64 loops: replicate-padded central differences, circular triangular weights, cell means."""
    channels, height, width = x.shape
    delta = math.pi / nbins
    cells_y, cells_x = height // pool, width // pool
    out = np.zeros((channels, nbins, cells_y, cells_x))
    for c in range(channels):
        for i in range(cells_y * pool):
            for j in range(cells_x * pool):
                gx = x[c, i, min(j + 1, width - 1)] - x[c, i, max(j - 1, 0)]
                gy = x[c, min(i + 1, height - 1), j] - x[c, max(i - 1, 0), j]
                magnitude, theta = math.hypot(gx, gy), math.atan2(gy, gx) % math.pi
                for k in range(nbins):
                    distance = abs(theta - k * delta)
                    distance = min(distance, math.pi - distance)  # circular at π
                    out[c, k, i // pool, j // pool] += magnitude * max(0.0, 1 - distance / delta)
    return out / pool**2


@pytest.mark.parametrize("size, nbins, pool", [(12, 6, 4), (13, 5, 3), (8, 24, 1)])
def test_hog_matches_float64_reference(size, nbins, pool):
    x = images(batch=2, size=size, seed=size)
    out = build("hog", {"nbins": nbins, "pool": pool}, size=size)(x).reshape(2, 2, nbins, size // pool, size // pool)
    for b in range(2):
        ref = hog_reference(x[b].double().numpy(), nbins, pool)
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-5, atol=1e-5)


def per_pixel_hog(image: np.ndarray, nbins: int) -> np.ndarray:
    """(H, W) image -> (nbins, H, W) per-pixel histograms (pool=1)."""
    size = image.shape[-1]
    rep = build("hog", {"nbins": nbins, "pool": 1}, channels=1, size=size)
    return rep(torch.tensor(image, dtype=torch.float32)[None, None]).reshape(nbins, size, size).numpy()


def test_hog_vertical_edge_puts_all_mass_in_bin_zero():
    image = np.zeros((8, 8))
    image[:, 4:] = 1.0  # columns 3 and 4 see gx = 1, gy = 0
    hist = per_pixel_hog(image, nbins=6)
    expected = np.zeros((6, 8, 8))
    expected[0, :, 3:5] = 1.0
    np.testing.assert_array_equal(hist, expected)


def test_hog_orientation_halfway_between_centres_splits_50_50():
    rows, cols = np.mgrid[0:8, 0:8]
    hist = per_pixel_hog((rows + cols).astype(float), nbins=2)  # interior: gx = gy = 2, θ = 45°, m = 2√2
    np.testing.assert_allclose(hist[:, 1:-1, 1:-1], np.full((2, 6, 6), math.sqrt(2)), rtol=1e-6)


def test_hog_wraps_between_last_bin_and_bin_zero():
    angle = math.radians(170)
    rows, cols = np.mgrid[0:8, 0:8]
    hist = per_pixel_hog(math.cos(angle) * cols + math.sin(angle) * rows, nbins=4)  # interior: m = 2, θ = 170°
    share_bin0 = (170 - 135) / 45  # centres 0°, 45°, 90°, 135°, (180° ≡ 0°)
    np.testing.assert_allclose(hist[0, 1:-1, 1:-1], 2 * share_bin0, rtol=1e-5)
    np.testing.assert_allclose(hist[3, 1:-1, 1:-1], 2 * (1 - share_bin0), rtol=1e-5)
    np.testing.assert_allclose(hist[1:3, 1:-1, 1:-1], 0, atol=1e-6)


# ------------------------------------------------------------------ ScatNet
def test_scatnet_matches_kymatio_numpy_frontend():
    numpy_frontend = pytest.importorskip("kymatio.scattering2d.frontend.numpy_frontend")
    x = images(batch=2, size=16)
    out = build("scatnet", {"J": 2, "L": 4}, size=16)(x).reshape(2, 2, 25, 4, 4)
    ref = numpy_frontend.ScatteringNumPy2D(J=2, shape=(16, 16), L=4, max_order=2)(x.double().numpy())
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "size, J, L, max_order, per_channel",
    [(16, 2, 4, 2, 1 + 2 * 4 + 16 * 2 * 1 // 2), (17, 2, 3, 1, 1 + 2 * 3), (9, 3, 2, 2, 1 + 3 * 2 + 4 * 3 * 2 // 2)],
)
def test_scatnet_dimension_formula(size, J, L, max_order, per_channel):
    rep = build("scatnet", {"J": J, "L": L, "max_order": max_order}, channels=2, size=size)
    assert rep.output_dim() == 2 * per_channel * (size // 2**J) ** 2
    assert rep(images(batch=1, size=size)).shape == (1, rep.output_dim())


def test_scatnet_of_a_constant_image_is_its_mean_then_zero():
    rep = build("scatnet", {"J": 2, "L": 4}, channels=1, size=16)
    out = rep(torch.full((1, 1, 16, 16), 0.7)).reshape(25, 4, 4)  # φ has unit DC gain, ψ has zero mean
    np.testing.assert_allclose(out[0].numpy(), 0.7, rtol=1e-4)
    np.testing.assert_allclose(out[1:].numpy(), 0.0, atol=1e-5)


# ------------------------------------------------------------------ local std
@pytest.mark.parametrize("size", [2, 7, 12])
def test_local_std_matches_scipy_generic_filter(size):
    x = images(batch=2, size=size)
    out = build("local_std", size=size)(x).reshape(x.shape).numpy()
    ref = scipy.ndimage.generic_filter(x.double().numpy(), np.std, size=(1, 1, 3, 3), mode="mirror")
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_local_std_is_exact_for_a_large_offset():
    x = images()
    rep = build("local_std")
    torch.testing.assert_close(rep(x + 1000.0), rep(x), rtol=1e-3, atol=2e-4)  # mean(x²) − mean(x)² would not be


# ------------------------------------------------------------------ DCT
@pytest.mark.parametrize("keep", [None, 5])
def test_dct_matches_scipy_orthonormal_dctn(keep):
    x = images(size=12)
    k = keep or 12
    out = build("dct", {"keep": keep}, size=12)(x).reshape(3, 2, k, k).numpy()
    ref = scipy.fft.dctn(x.double().numpy(), type=2, norm="ortho", axes=(-2, -1))[..., :k, :k]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_full_dct_preserves_the_norm():
    x = images(size=13)
    out = build("dct", {"keep": None}, size=13)(x)
    torch.testing.assert_close(out.norm(dim=1), x.reshape(3, -1).norm(dim=1), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ colour histogram
def color_histogram_reference(values: np.ndarray, bins: int, low: float, high: float) -> np.ndarray:
    """Float64 triangular kernel around each bin centre; values outside the outer centres are clipped."""
    width = (high - low) / bins
    centres = low + (np.arange(bins) + 0.5) * width
    clipped = np.clip(values.reshape(-1), centres[0], centres[-1])
    weights = np.maximum(0.0, 1 - np.abs(clipped[:, None] - centres[None, :]) / width)
    return weights.sum(axis=0) / clipped.size


def test_color_histogram_matches_float64_reference():
    x = images(size=12) * 1.5  # some values beyond ±3
    bins, low, high = 7, -3.0, 2.5
    out = build("color_histogram", {"bins": bins, "low": low, "high": high})(x).reshape(3, 2, bins)
    for b in range(3):
        for c in range(2):
            ref = color_histogram_reference(x[b, c].double().numpy(), bins, low, high)
            np.testing.assert_allclose(out[b, c].numpy(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(-1), torch.ones(3, 2))


def test_color_histogram_at_bin_centres_equals_numpy_histogram():
    bins, low, high = 8, -3.0, 3.0
    centres = low + (np.arange(bins) + 0.5) * (high - low) / bins
    rng = np.random.default_rng(0)
    values = rng.choice(centres, size=(1, 1, 12, 12))
    out = build("color_histogram", {"bins": bins}, channels=1)(torch.tensor(values, dtype=torch.float32))
    counts, _ = np.histogram(values, bins=bins, range=(low, high))
    np.testing.assert_allclose(out[0].numpy(), counts / values.size, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ Gabor
def test_gabor_kernels_equal_skimage_on_its_support():
    rep = build("gabor", {"scales": 3, "orientations": 4, "wavelength": 2.0, "bandwidth": 1.0})
    for s, wavelength in enumerate([2.0, 4.0, 8.0]):
        bank = getattr(rep, f"kernels_{s}")[:, 0].double().numpy()  # (2·O, k, k): real parts, then imaginary
        radius = bank.shape[-1] // 2
        assert radius == math.ceil(3 * gabor_sigma(wavelength, 1.0))
        for o in range(4):
            ref = skimage_gabor_kernel(1 / wavelength, theta=o * math.pi / 4, bandwidth=1.0)
            half_y, half_x = ref.shape[0] // 2, ref.shape[1] // 2
            window = (slice(radius - half_y, radius + half_y + 1), slice(radius - half_x, radius + half_x + 1))
            np.testing.assert_allclose(bank[o][window], ref.real, atol=1e-7)
            np.testing.assert_allclose(bank[4 + o][window], ref.imag, atol=1e-7)


def test_gabor_response_matches_scipy_correlation_reference():
    rep = build("gabor", {"scales": 2, "orientations": 3, "pool": 3}, channels=1, size=12)
    x = images(batch=1, channels=1, size=12)
    out = rep(x).reshape(2, 3, 4, 4).numpy()
    image = x[0, 0].double().numpy()
    for s, wavelength in enumerate([2.0, 4.0]):
        sigma = gabor_sigma(wavelength, 1.0)
        radius = math.ceil(3 * sigma)
        y, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(float)
        for o in range(3):
            theta = o * math.pi / 3
            kernel = np.exp(
                -(xx**2 + y**2) / (2 * sigma**2)
                + 2j * math.pi / wavelength * (xx * math.cos(theta) + y * math.sin(theta))
            ) / (2 * math.pi * sigma**2)
            real = scipy.ndimage.correlate(image, kernel.real, mode="nearest")
            imag = scipy.ndimage.correlate(image, kernel.imag, mode="nearest")
            ref = np.hypot(real, imag).reshape(4, 3, 4, 3).mean(axis=(1, 3))
            np.testing.assert_allclose(out[s, o], ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("theta_index", [0, 1, 2, 3])
def test_gabor_grating_lights_up_its_orientation_and_scale(theta_index):
    rep = build("gabor", {"scales": 3, "orientations": 4, "pool": 4}, channels=1, size=32)
    theta, wavelength = theta_index * math.pi / 4, 4.0
    rows, cols = np.mgrid[0:32, 0:32]
    grating = np.cos(2 * math.pi / wavelength * (cols * math.cos(theta) + rows * math.sin(theta)))
    energy = rep(torch.tensor(grating, dtype=torch.float32)[None, None]).reshape(3, 4, 8, 8)
    energy = energy[..., 2:-2, 2:-2].mean(dim=(-2, -1))  # away from the padded border
    assert divmod(int(energy.argmax()), 4) == (1, theta_index)
