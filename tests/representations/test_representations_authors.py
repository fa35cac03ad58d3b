"""Switches that reproduce the authors' code (vkinakh/mv-mr), each against an independent reference.

- ``hog`` ``variant: authors``: their ``HOGLayer`` (src/model/hog.py) as ``_step_dc('full_img_hog')`` uses it
  (src/model/self_supervised_module.py), against float64 per-pixel loops and hand-worked cases;
- ``teacher`` ``input_convention: authors``: their CLIP input in ``step`` (src/model/clip_self_supervised_module.py),
  the dataset-normalised view bilinearly resized, against a float64 bilinear reference and the tower called here;
- ``augmented_pixels`` ``draw: batch``: their ``self._transform(im_orig)`` (``get_feature_extraction``), typed
  here again from torchvision's transforms and applied to the batch.
The defaults are unchanged.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_clip import refuse_network, write_tiny_open_clip
from torchvision import transforms

from mvmr.errors import ConfigError
from mvmr.representations import build_representation

DATA_MEAN = (0.4, 0.5, 0.6)  # the dataset normalisation of x̄ in these tests
DATA_STD = (0.2, 0.25, 0.3)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's preprocess
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY = "mvmr-test-tiny-vit-authors"


def images(batch=2, channels=2, size=12, seed=0):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def normalise(pixels, mean=DATA_MEAN, std=DATA_STD):
    """[0, 1] pixels -> x̄ (float32); with these statistics x̄ spans about [-2, 2]."""
    mean = torch.tensor(mean[: pixels.shape[1]], dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(std[: pixels.shape[1]], dtype=torch.float64).view(1, -1, 1, 1)
    return ((pixels.double() - mean) / std).float()


def random_pixels(batch=2, channels=3, size=32, seed=0):
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def no_augment(x):
    raise AssertionError("the injected augmentation must not be used")


# ================================================================== hog, variant: authors
def hog(params, channels=2, size=12):
    return build_representation("hog", params, in_channels=channels, image_size=size)


def authors_hog_reference(plane: np.ndarray, nbins: int, pool: int) -> np.ndarray:
    """Float64 loops per pixel, as their HOGLayer: (H, W) -> (nbins, H//pool, W//pool)."""
    height, width = plane.shape
    padded = np.pad(plane, 1)  # zeros
    sobel = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    hist = np.zeros((nbins, height, width))
    for i in range(height):
        for j in range(width):
            window = padded[i : i + 3, j : j + 3]  # cross-correlation, as F.conv2d
            r0, r1 = (sobel * window).sum(), (sobel.T * window).sum()
            magnitude = math.sqrt(r0 * r0 + r1 * r1)
            t = math.atan2(r0, r1) / math.pi * nbins
            hist[math.floor(t) % nbins, i, j] = magnitude  # assigned (scatter_)
            hist[math.ceil(t) % nbins, i, j] += 1 - magnitude  # added (scatter_add_)
    cells_y, cells_x = height // pool, width // pool
    out = np.zeros((nbins, cells_y, cells_x))
    for a in range(cells_y):
        for b in range(cells_x):
            out[:, a, b] = hist[:, a * pool : (a + 1) * pool, b * pool : (b + 1) * pool].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("size, nbins, pool", [(12, 6, 4), (13, 5, 3), (8, 24, 1), (10, 9, 10)])
def test_authors_hog_matches_float64_loop_reference(size, nbins, pool):
    x = images(size=size, seed=size)
    rep = hog({"nbins": nbins, "pool": pool, "variant": "authors"}, size=size)
    cells = size // pool
    out = rep(x)
    assert out.shape == (2, rep.output_dim()) == (2, 2 * nbins * cells**2)
    out = out.reshape(2, 2, nbins, cells, cells)
    for b in range(2):
        for c in range(2):
            ref = authors_hog_reference(x[b, c].double().numpy(), nbins, pool)
            np.testing.assert_allclose(out[b, c].numpy(), ref, rtol=1e-5, atol=1e-5)


def per_pixel_authors_hog(image: np.ndarray, nbins: int) -> np.ndarray:
    """(H, W) image -> (nbins, H, W) per-pixel histograms of the authors' variant (pool=1)."""
    size = image.shape[-1]
    rep = hog({"nbins": nbins, "pool": 1, "variant": "authors"}, channels=1, size=size)
    return rep(torch.tensor(image, dtype=torch.float32)[None, None]).reshape(nbins, size, size).numpy()


def test_authors_hog_vertical_step_edge_and_flat_pixels_get_exactly_one():
    image = np.zeros((8, 8))
    image[:, 4:] = 1.0
    hist = per_pixel_authors_hog(image, nbins=6)[:, 1:-1]  # interior rows: no zero-padding effects vertically
    # Columns 3, 4: r0 = 4·(x[j−1] − x[j+1]) = −4, r1 = 0, t = atan2(−4, 0)/π·6 = −3 -> bin 3 gets 4 + (1 − 4).
    # Column 7 sees the zero padding: r0 = +4, t = +3 -> bin 3 too. Flat columns: atan2(0, 0) = 0 -> bin 0 gets 0 + 1.
    expected = np.zeros((6, 6, 8))
    expected[3][:, [3, 4, 7]] = 1.0
    expected[0][:, [0, 1, 2, 5, 6]] = 1.0
    np.testing.assert_array_equal(hist, expected)
    ours = build_representation("hog", {"nbins": 6, "pool": 1}, in_channels=1, image_size=8)
    ours_hist = ours(torch.tensor(image, dtype=torch.float32)[None, None]).reshape(6, 8, 8).numpy()
    assert ours_hist[0, 1:-1, 3:5].tolist() == [[1.0, 1.0]] * 6 and ours_hist[:, :, :3].max() == 0  # m = 1, flat = 0


def test_authors_hog_non_integer_angle_shares_m_and_one_minus_m():
    rows, cols = np.mgrid[0:8, 0:8]
    hist = per_pixel_authors_hog((rows + cols).astype(float), nbins=3)[:, 1:-1, 1:-1]
    # Interior: r0 = r1 = 4·(−2) = −8, m = 8√2, t = atan2(−8, −8)/π·3 = −2.25: ⌊t⌋ = −3 ≡ 0, ⌈t⌉ = −2 ≡ 1.
    magnitude = 8 * math.sqrt(2)
    np.testing.assert_allclose(hist[0], magnitude, rtol=1e-6)
    np.testing.assert_allclose(hist[1], 1 - magnitude, rtol=1e-6)  # negative: the share ignores the angle
    np.testing.assert_array_equal(hist[2], 0.0)


def test_authors_hog_keeps_the_size_layout_and_differs_from_ours():
    x = images(seed=3)
    ours, theirs = hog({"nbins": 6, "pool": 4}), hog({"nbins": 6, "pool": 4, "variant": "authors"})
    assert ours.variant == "mvmr" and theirs.output_dim() == ours.output_dim() == 2 * 6 * 3 * 3
    assert (ours(x) - theirs(x)).abs().max() > 0.1
    alone = torch.cat([theirs(x[i : i + 1]) for i in range(2)])  # each sample on its own
    torch.testing.assert_close(theirs(x), alone, rtol=0, atol=0)


# ================================================================== teacher, input_convention: authors
@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test: any socket connection is refused and recorded (libraries may swallow the error)."""
    attempts = refuse_network(monkeypatch)
    yield
    assert attempts == []


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(model, weights file) of a tiny random open_clip CLIP (image size 32) registered as ``TINY``."""
    return write_tiny_open_clip(tmp_path_factory.mktemp("open_clip"), TINY)


def clip_teacher(path, size=32, **params):
    full = {
        "kind": "open_clip",
        "model_name": TINY,
        "pretrained": str(path),
        "dataset_mean": list(DATA_MEAN),
        "dataset_std": list(DATA_STD),
        **params,
    }
    return build_representation("teacher", full, in_channels=3, image_size=size)


def tower(model, inputs):
    with torch.no_grad():
        return model.visual(inputs.float())


def bilinear_reference(x: np.ndarray, size: int) -> np.ndarray:
    """Float64 loops: bilinear, half-pixel centres (align_corners=False), no antialias, (…, H, W) -> (…, size, size)."""
    height, width = x.shape[-2:]

    def taps(out_index, length):
        source = max((out_index + 0.5) * length / size - 0.5, 0.0)
        low = min(int(source), length - 1)
        return low, min(low + 1, length - 1), source - low

    out = np.zeros(x.shape[:-2] + (size, size))
    for i in range(size):
        i0, i1, wy = taps(i, height)
        for j in range(size):
            j0, j1, wx = taps(j, width)
            out[..., i, j] = (1 - wy) * ((1 - wx) * x[..., i0, j0] + wx * x[..., i0, j1]) + wy * (
                (1 - wx) * x[..., i1, j0] + wx * x[..., i1, j1]
            )
    return out


@pytest.mark.parametrize("size", [20, 48])  # up- and down-sampling to the tower's 32
def test_authors_convention_feeds_the_dataset_normalised_view_bilinearly_resized(tiny_clip, size):
    model, path = tiny_clip
    rep = clip_teacher(path, size=size, input_convention="authors")
    x_bar = normalise(random_pixels(size=size, seed=size))
    assert x_bar.min() < -1 and x_bar.max() > 1.5  # values a clamp to [0, 1] would change
    prepared = rep.teacher.prepare_authors(x_bar)
    reference = torch.from_numpy(bilinear_reference(x_bar.double().numpy(), 32))
    torch.testing.assert_close(prepared.double(), reference, rtol=0, atol=1e-5)
    resized = F.interpolate(x_bar, size=(32, 32), mode="bilinear", align_corners=False)  # their `step`
    torch.testing.assert_close(rep(x_bar), tower(model, resized), rtol=0, atol=0)


def test_authors_convention_at_the_towers_size_feeds_x_bar_itself(tiny_clip):
    model, path = tiny_clip
    rep = clip_teacher(path, input_convention="authors")
    x_bar = normalise(random_pixels(seed=1))
    torch.testing.assert_close(rep(x_bar), tower(model, x_bar), rtol=1e-6, atol=1e-6)


def test_default_teacher_convention_is_unchanged(tiny_clip):
    model, path = tiny_clip
    pixels = random_pixels(size=20, seed=2)
    x_bar = normalise(pixels)
    default, explicit = clip_teacher(path, size=20), clip_teacher(path, size=20, input_convention="teacher")
    authors = clip_teacher(path, size=20, input_convention="authors")
    assert default.input_convention == "teacher"
    resized = F.interpolate(pixels, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    clip_mean, clip_std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    expected = tower(model, (resized - clip_mean) / clip_std)
    torch.testing.assert_close(default(x_bar), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit(x_bar), default(x_bar), rtol=0, atol=0)
    assert (authors(x_bar) - default(x_bar)).abs().max() > 1e-2


# ================================================================== augmented_pixels, draw: batch
def augmented(draw=None, channels=3, size=40, augment=no_augment):
    params = {} if draw is None else {"draw": draw}
    return build_representation("augmented_pixels", params, in_channels=channels, image_size=size, augment=augment)


def their_transform(size, antialias=False):
    """Their ``get_feature_extraction`` transform, typed again; antialias=False: their torchvision 0.13
    (environment.yml) resized tensors without antialiasing."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size=size, antialias=antialias),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.GaussianBlur(kernel_size=2 * int(0.05 * size) + 1),
        ]
    )


@pytest.mark.parametrize("channels", [3, 1])
def test_batch_draw_equals_torchvision_compose_applied_to_the_normalised_batch(channels):
    rep = augmented("batch", channels=channels)
    x_bar = normalise(random_pixels(batch=4, channels=channels, size=40, seed=4))
    clamped, antialias_matters = 0, False
    for seed in range(12):
        torch.manual_seed(seed)
        out = rep(x_bar)
        torch.manual_seed(seed)
        expected = their_transform(40)(x_bar).reshape(4, -1)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        clamped += int(out.min() >= 0 and out.max() <= 1)  # colour jitter applied: x̄ clipped to [0, 1]
        torch.manual_seed(seed)
        antialias_matters |= not torch.equal(out, their_transform(40, antialias=True)(x_bar).reshape(4, -1))
    assert 0 < clamped < 12 and antialias_matters  # both branches of RandomApply were drawn


def test_batch_draw_is_one_draw_for_the_whole_batch():
    rep = augmented("batch")
    x_bar = normalise(random_pixels(batch=1, size=40, seed=5)).expand(6, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = rep(x_bar)
    assert all(torch.equal(out[0], row) for row in out)  # same crop, flip, jitter, grey, blur for every sample
    assert not torch.equal(out[0], x_bar[0].flatten())
    torch.manual_seed(1)
    assert not torch.equal(rep(x_bar), out)  # a new draw per call


def test_batch_draw_needs_no_injected_augment_and_is_not_from_the_training_view():
    rep = augmented("batch", augment=None)
    assert rep.draws_from_training_view is False and rep.draw == "batch"
    assert rep(normalise(random_pixels(size=40))).shape == (2, 3 * 40 * 40)
    assert augmented("batch")(normalise(random_pixels(size=40))).shape == (2, 4800)  # an injected one is unused
    with pytest.raises(RuntimeError, match="call it on x̄, not from_augmented"):
        rep.from_augmented(torch.zeros(2, 3, 40, 40))
    assert list(rep.parameters()) == [] and rep.state_dict() == {} and list(rep.children()) == []


def test_sample_draw_is_unchanged():
    def negate(x):
        return -x

    rep = augmented(augment=negate)
    x_bar = normalise(random_pixels(size=40, seed=6))
    assert rep.draw == "sample" and rep.draws_from_training_view is True
    torch.testing.assert_close(rep(x_bar), -x_bar.reshape(2, -1), rtol=0, atol=0)
    torch.testing.assert_close(rep.from_augmented(x_bar), x_bar.reshape(2, -1), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="needs the training augmentation"):
        augmented("sample", augment=None)


# ================================================================== all three: validation and cache key
def teacher_params(path):
    return {
        "kind": "open_clip",
        "model_name": TINY,
        "pretrained": str(path),
        "dataset_mean": list(DATA_MEAN),
        "dataset_std": list(DATA_STD),
    }


@pytest.mark.parametrize(
    "name, key, value, message",
    [
        ("hog", "variant", "author", "hog.variant must be one of mvmr, authors, got 'author'"),
        ("teacher", "input_convention", "clip", "teacher.input_convention must be one of teacher, authors, got 'clip'"),
        ("augmented_pixels", "draw", None, "augmented_pixels.draw must be one of sample, batch, got None"),
    ],
)
def test_unknown_values_are_one_line_config_errors(tiny_clip, name, key, value, message):
    base = teacher_params(tiny_clip[1]) if name == "teacher" else {}
    with pytest.raises(ConfigError) as err:
        build_representation(name, {**base, key: value}, in_channels=3, image_size=12, augment=no_augment)
    assert str(err.value) == message


def test_batch_draw_refuses_channel_counts_torchvision_colour_ops_cannot_take():
    with pytest.raises(ConfigError) as err:
        augmented("batch", channels=2)
    assert str(err.value) == (
        "augmented_pixels.draw must be sample for 2-channel images (torchvision's colour "
        "transforms take 1 or 3 channels), got 'batch'"
    )


@pytest.mark.parametrize(
    "name, key, default, other",
    [
        ("hog", "variant", "mvmr", "authors"),
        ("teacher", "input_convention", "teacher", "authors"),
        ("augmented_pixels", "draw", "sample", "batch"),
    ],
)
def test_each_switch_is_in_the_repr_the_cache_hashes(tiny_clip, name, key, default, other):
    base = teacher_params(tiny_clip[1]) if name == "teacher" else {}

    def text(params):
        return repr(build_representation(name, {**base, **params}, in_channels=3, image_size=12, augment=no_augment))

    assert f"{key}={default!r}" in text({}) and text({}) == text({key: default})
    assert f"{key}={other!r}" in text({key: other}) and text({key: other}) != text({})
