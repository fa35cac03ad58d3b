"""Views: x' per-sample randomness, x̄ / ten-crop against torchvision float64 references, shapes, determinism."""

import math
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from conftest import assert_boxes_like
from PIL import Image

from mvmr.data.views import (
    VIEW_POLICIES,
    CustomKnobs,
    EvalView,
    MirroredView,
    TenCropView,
    build_eval_view,
    build_feature_view,
    build_ten_crop_view,
    build_train_view,
    eval_transform,
)
from mvmr.data.views.geometric import PaddedCropFlip, sample_resized_crop_boxes
from mvmr.data.views.photometric import PerSampleChoice, auto_augment, blur_kernel_size, rand_augment
from mvmr.data.views.policies import TrainView, custom_policy
from mvmr.data.views.resample import resample_boxes
from mvmr.errors import ConfigError, DataError

POLICIES = ["authors", "autoaugment", "cifar", "cifar20", "crop", "custom", "randaugment"]
MEAN = {1: [0.4], 3: [0.485, 0.456, 0.406]}
STD = {1: [0.3], 3: [0.229, 0.224, 0.225]}
NO_RANDOMNESS = CustomKnobs(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), p_flip=0.0, p_jitter=0.0, p_grayscale=0.0, p_blur=0.0, p_solarize=0.0
)


def uint8_images(batch=4, channels=3, height=8, width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width or height), dtype=torch.uint8, generator=g)


def normalise64(x, channels):
    """float64 (..., C, H, W) in [0, 1] -> normalised."""
    mean = torch.tensor(MEAN[channels], dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(STD[channels], dtype=torch.float64).view(-1, 1, 1)
    return (x - mean) / std


def eval_reference(images, size):
    """float64 torchvision Resize(size, antialias) + CenterCrop(size) + normalise."""
    x = images.to(torch.float64) / 255
    x = TF.center_crop(TF.resize(x, [size], antialias=True), [size, size])
    return normalise64(x, images.shape[1])


def train_view(policy, size, channels, strength=1.0):
    return build_train_view(policy, size, MEAN[channels], STD[channels], channels, strength=strength)


def unnormalise(y, channels):
    return y.double() * torch.tensor(STD[channels]).view(-1, 1, 1) + torch.tensor(MEAN[channels]).view(-1, 1, 1)


# ------------------------------------------------------------------ x': shapes, range, randomness, seeds
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("batch,stored,size", [(1, 8, 16), (5, 20, 16), (3, 12, 12)])
def test_train_view_shape_dtype_range(policy, channels, batch, stored, size):
    view = train_view(policy, size, channels)
    with torch.no_grad():
        out = view(uint8_images(batch, channels, stored))
    assert out.shape == (batch, channels, size, size) and out.dtype == torch.float32
    pixels = unnormalise(out, channels)  # back in [0, 1] units
    assert torch.isfinite(out).all() and pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


@pytest.mark.parametrize("policy", POLICIES)
def test_train_view_is_per_sample(policy):
    """Eight copies of one image in a batch get eight different views (one draw per batch would repeat)."""
    image = uint8_images(1, 3, 16)
    torch.manual_seed(0)
    out = train_view(policy, 16, 3)(image.expand(8, -1, -1, -1).contiguous())
    distinct = {tuple(row.flatten().tolist()) for row in out}
    if policy == "cifar":  # 9 x 9 offsets x 2 flips: a repeat among 8 draws is possible, all-equal is not
        assert len(distinct) >= 6
    else:
        assert len(distinct) == 8


@pytest.mark.parametrize("policy", POLICIES)
def test_train_view_reproducible_under_seed(policy):
    images = uint8_images(6, 3, 16)
    view = train_view(policy, 16, 3)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(view(images))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("policy", POLICIES)
def test_float_input_equals_uint8_input(policy):
    """The view accepts floats in [0, 1] (e.g. an unnormalised x̄) and divides uint8 by 255 exactly once."""
    images = uint8_images(4, 3, 12)
    view = train_view(policy, 12, 3)
    torch.manual_seed(3)
    from_uint8 = view(images)
    torch.manual_seed(3)
    from_float = view(images.double() / 255)
    assert torch.allclose(from_uint8, from_float, atol=1e-5)


@pytest.mark.parametrize("stored", [8, 16, 23])
def test_custom_without_randomness_equals_eval_view(stored):
    """Full-image crop and p=0 for every op: x' == x̄ (upscale, identity and antialiased downscale)."""
    for channels in (1, 3):
        view = TrainView(custom_policy(16, channels, knobs=NO_RANDOMNESS), MEAN[channels], STD[channels])
        images = uint8_images(3, channels, stored)
        expected = build_eval_view(16, MEAN[channels], STD[channels])(images)
        assert torch.allclose(view(images), expected, atol=2e-5)


def test_cpu_chunks_without_randomness_equal_one_call():
    """The view cut into chunks (3 + 3 + 3 + 1 samples) gives the one-call result, in order."""
    for channels in (1, 3):
        images = uint8_images(10, channels, 23)
        per_image = 4 * channels * 23 * 23  # bytes of float32 per sample (the 23-px input is the larger side)
        chunked = TrainView(
            custom_policy(16, channels, knobs=NO_RANDOMNESS),
            MEAN[channels],
            STD[channels],
            16,
            chunk_bytes=3 * per_image,
        )
        whole = TrainView(
            custom_policy(16, channels, knobs=NO_RANDOMNESS), MEAN[channels], STD[channels], 16, chunk_bytes=0
        )
        assert chunked.chunk_size(images) == 3 and whole.chunk_size(images) == 10
        torch.testing.assert_close(chunked(images), whole(images), rtol=0, atol=1e-6)


def test_cpu_chunks_draw_independent_parameters_per_sample():
    """Twelve copies of one image in chunks of 3 under the random custom policy: twelve different views (a chunk
    that repeated another's random numbers would give equal rows)."""
    torch.manual_seed(0)
    images = uint8_images(1, 3, 16).repeat(12, 1, 1, 1)
    view = TrainView(custom_policy(16, 3), MEAN[3], STD[3], 16, chunk_bytes=3 * 4 * 3 * 16 * 16)
    out = view(images).flatten(1)
    assert view.chunk_size(images) == 3
    assert torch.cdist(out, out)[~torch.eye(12, dtype=torch.bool)].min() > 1e-3


def test_chunk_size_counts_the_larger_of_input_and_output_and_leaves_other_devices_whole():
    view = build_train_view("custom", 96, MEAN[3], STD[3], 3)
    small_input = torch.zeros(128, 3, 28, 28, dtype=torch.uint8)
    assert view.chunk_size(small_input) == view.chunk_bytes // (4 * 3 * 96 * 96)
    assert view.chunk_size(torch.zeros(128, 3, 200, 200, dtype=torch.uint8)) == view.chunk_bytes // (4 * 3 * 200 * 200)
    assert view.chunk_size(torch.empty(128, 3, 96, 96, device="meta")) == 128


def test_cifar_without_randomness_equals_eval_view():
    view = TrainView(PaddedCropFlip(16, padding=0, p_flip=0.0), MEAN[3], STD[3])
    images = uint8_images(3, 3, 8)
    assert torch.equal(view(images), build_eval_view(16, MEAN[3], STD[3])(images))


def test_cifar_crop_is_a_shifted_window_of_the_padded_image():
    """Hand check: every output is the resized image, zero-padded by 2, read at an offset in [0, 4]^2, maybe
    mirrored; each of the 50 x 2 (offset, flip) outcomes is matched against all candidates."""
    torch.manual_seed(0)
    x = torch.rand(50, 1, 8, 8, dtype=torch.float64)
    out = PaddedCropFlip(8, padding=2, p_flip=0.5)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for sample, result in zip(padded, out):
        windows = [sample[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        plain = any(torch.equal(result, w) for w in windows)
        mirrored = any(torch.equal(result, w.flip(-1)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 <= flips <= 40  # p_flip = 0.5 over 50 samples


def test_cifar_padding_scales_with_size():
    assert VIEW_POLICIES.get("cifar")(32, 3).padding == 4
    assert VIEW_POLICIES.get("cifar")(96, 3).padding == 12
    assert VIEW_POLICIES.get("cifar")(8, 3).padding == 1


# ------------------------------------------------------------------ resized crop: boxes and resampling
@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.08, 1.0)), (24, 40, (0.2, 1.0))])
def test_crop_boxes_follow_torchvision_distribution(height, width, scale):
    """Boxes fit the image and their area fraction / log-aspect / offsets match torchvision's sampler."""
    ratio = (3 / 4, 4 / 3)
    torch.manual_seed(0)
    ours = sample_resized_crop_boxes(4000, height, width, scale, ratio)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio)) for _ in range(4000)],
        dtype=torch.float64,
    )  # (top, left, h, w)
    assert_boxes_like(ours, ref, height, width)


def test_crop_boxes_fallback_matches_torchvision():
    """No attempt can fit (ratio 2 at full area): the fallback centre crop is deterministic."""
    ours = sample_resized_crop_boxes(3, 10, 10, (1.0, 1.0), (2.0, 2.0))
    ref = T.RandomResizedCrop.get_params(torch.empty(1, 10, 10), [1.0, 1.0], [2.0, 2.0])
    assert ours.tolist() == [list(map(float, ref))] * 3


def test_resample_boxes_equals_torchvision_resized_crop():
    """Per-sample crop + antialiased resize + flip == torchvision's resized_crop on each sample (float64),
    for upscaled, unscaled and downscaled boxes of different aspect."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 24, 30, dtype=torch.float64, generator=g)
    boxes = torch.tensor(
        [[0, 0, 24, 30], [3, 5, 4, 7], [2, 1, 12, 12], [10, 3, 13, 27], [0, 9, 21, 5]], dtype=torch.float64
    )
    flip = torch.tensor([False, True, False, True, True])
    out = resample_boxes(images, boxes, 12, flip)
    for image, (top, left, h, w), mirrored, result in zip(images, boxes.long().tolist(), flip, out):
        ref = TF.resized_crop(image, top, left, h, w, [12, 12], antialias=True)
        ref = TF.horizontal_flip(ref) if mirrored else ref
        assert torch.allclose(result, ref, atol=1e-12)


def test_resize_downscale_is_antialiased():
    """1-pixel stripes downscaled 3x average to grey (plain bilinear sampling would keep full contrast)."""
    stripes = (torch.arange(48) % 2).double().expand(1, 1, 48, 48).contiguous()
    out = resample_boxes(stripes, torch.tensor([[0.0, 0.0, 48.0, 48.0]]), 16, torch.tensor([False]))
    assert (out - 0.5).abs().max() < 0.15


# ------------------------------------------------------------------ colour ops of the custom policy
def colour_only(channels=3, **probabilities):
    knobs = CustomKnobs(**{**NO_RANDOMNESS.__dict__, **probabilities})
    return TrainView(custom_policy(16, channels, knobs=knobs), MEAN[channels], STD[channels])


def test_solarize_inverts_bright_pixels():
    images = uint8_images(4, 3, 16)
    x = images.double() / 255
    expected = normalise64(torch.where(x >= 0.5, 1 - x, x), 3)
    assert torch.allclose(colour_only(p_solarize=1.0)(images).double(), expected, atol=1e-5)


def test_grayscale_uses_luma_weights():
    images = uint8_images(4, 3, 16)
    x = images.double() / 255
    grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None].expand(-1, 3, -1, -1)
    assert torch.allclose(colour_only(p_grayscale=1.0)(images).double(), normalise64(grey, 3), atol=1e-5)


def test_jitter_strength_scales_magnitudes():
    """strength 0 leaves colours alone; strength s gives torchvision's ranges 0.4s / 0.4s / 0.2s / 0.1s."""
    images = uint8_images(4, 3, 16)
    knobs = {"p_jitter": 1.0}
    zero = TrainView(
        custom_policy(16, 3, strength=0.0, knobs=CustomKnobs(**{**NO_RANDOMNESS.__dict__, **knobs})), MEAN[3], STD[3]
    )
    assert torch.allclose(zero(images), build_eval_view(16, MEAN[3], STD[3])(images), atol=1e-6)
    jitter = custom_policy(16, 3, strength=0.5)[1]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.2, 0.2, 0.1, 0.05)
    assert not torch.allclose(colour_only(p_jitter=1.0)(images), zero(images), atol=1e-3)


def test_one_channel_custom_keeps_brightness_and_contrast_only():
    ops = custom_policy(16, 1)
    jitter = ops[1]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.4, 0.4, 0.0, 0.0)
    assert not any(type(op).__name__ == "RandomGrayscale" for op in ops)


def reference_jitter(image, factors, order):
    """torchvision's functional ops on ONE image, in ``order``."""
    ops = {
        "brightness": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "saturation": TF.adjust_saturation,
        "hue": TF.adjust_hue,
    }
    for name in order:
        image = ops[name](image, factors[name])
    return image


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_jitter_equals_torchvision_per_sample(channels):
    """Factors, gates and order drawn by ColourJitter, applied in one batch == torchvision's functional ops on each
    image with its own factors (float64); ungated images are returned untouched."""
    from mvmr.data.views.photometric import ColourJitter

    torch.manual_seed(0)
    images = torch.rand(12, channels, 9, 11, dtype=torch.float64)
    images[0] = images[0].round()  # saturated pixels and ties of the channel maximum
    jitter = ColourJitter(0.4, 0.4, 0.2, 0.1, p=0.75)
    for trial in range(4):
        gate, factors, order = jitter.draw(images.shape[0], channels)
        assert (
            sorted(order)
            == sorted(factors)
            == (["brightness", "contrast", "hue", "saturation"] if channels == 3 else ["brightness", "contrast"])
        )
        out = ColourJitter.apply(images, gate, factors, order)
        for i in range(images.shape[0]):
            expected = (
                reference_jitter(images[i], {k: v[i].item() for k, v in factors.items()}, order)
                if gate[i]
                else images[i]
            )
            torch.testing.assert_close(out[i], expected, rtol=0, atol=2e-6)  # torchvision's hue step is float32


def test_hue_shift_equals_torchvision_across_the_colour_wheel():
    from mvmr.data.views.photometric import ColourJitter

    torch.manual_seed(1)
    images = torch.rand(1, 3, 16, 16, dtype=torch.float64).expand(9, -1, -1, -1)
    shifts = torch.linspace(-0.5, 0.5, 9, dtype=torch.float64)
    out = ColourJitter.apply(images, torch.ones(9, dtype=torch.bool), {"hue": shifts}, ["hue"])
    for image, shift, result in zip(images, shifts, out):
        torch.testing.assert_close(result, TF.adjust_hue(image, shift.item()), rtol=0, atol=2e-6)  # float32 inside


def skip_if_compile_failed(compiled):
    if compiled.failed:
        pytest.skip("torch.compile does not work on this machine (no C++ compiler?); the eager fallback is tested")


@pytest.mark.parametrize("step", ["brightness", "contrast", "saturation", "hue"])
def test_compiled_jitter_steps_equal_the_eager_formulas(step):
    """Each fused jitter step (torch.compile) == its eager formula on float32 images with greys, saturated pixels
    and ties of the channel maximum, for two batch sizes (dynamic shapes)."""
    from mvmr.data.views.photometric import COMPILED_JITTER_STEPS, JITTER_STEPS

    torch.manual_seed(3)
    for batch in (5, 8):
        images = torch.rand(batch, 3, 12, 10)
        images[0] = images[0].round()
        images[1] = images[1, :1].expand(3, -1, -1)  # grey: hue undefined, must stay grey
        factors = torch.empty(batch).uniform_(-0.5, 0.5) if step == "hue" else torch.empty(batch).uniform_(0, 2)
        out = COMPILED_JITTER_STEPS[step](images, factors)
        skip_if_compile_failed(COMPILED_JITTER_STEPS[step])
        torch.testing.assert_close(out, JITTER_STEPS[step](images, factors), rtol=0, atol=1e-6)


@pytest.mark.parametrize("compiled", [True, False])
def test_random_grayscale_equals_torchvision_on_the_gated_samples(compiled):
    """Gated samples == torchvision's rgb_to_grayscale(3 channels); the others untouched; the rate is p."""
    from mvmr.data.views.photometric import RandomGrayscale, to_grey_compiled

    torch.manual_seed(4)
    images = torch.rand(400, 3, 6, 5)
    out = RandomGrayscale(p=0.3, compiled=compiled)(images)
    if compiled:
        skip_if_compile_failed(to_grey_compiled)
    grey = (out == out[:, :1]).flatten(1).all(1)
    untouched = (out == images).flatten(1).all(1)
    assert bool((grey ^ untouched).all())  # every sample is one or the other (random images are never grey)
    assert 0.22 < grey.float().mean().item() < 0.38  # 400 draws of p = 0.3: 4.4 standard deviations either side
    torch.testing.assert_close(out[grey], TF.rgb_to_grayscale(images[grey], num_output_channels=3), rtol=0, atol=1e-6)


@pytest.mark.parametrize("compiled", [True, False])
def test_solarize_inverts_bright_pixels_of_the_gated_samples(compiled):
    """Gated samples == torchvision's solarize at 0.5; the others untouched."""
    from mvmr.data.views.photometric import Solarize, solarize_compiled

    torch.manual_seed(5)
    images = torch.rand(300, 3, 4, 4)
    images[:, 0, 0, 0] = 0.5  # the threshold itself is inverted (>=), as torchvision
    out = Solarize(p=0.5, compiled=compiled)(images)
    if compiled:
        skip_if_compile_failed(solarize_compiled)
    flipped = ~(out == images).flatten(1).all(1)
    assert 0.35 < flipped.float().mean().item() < 0.65
    torch.testing.assert_close(out[flipped], TF.solarize(images[flipped], 0.5), rtol=0, atol=0)
    assert torch.equal(out[~flipped], images[~flipped])


def test_a_failing_compile_falls_back_to_eager_with_one_line(monkeypatch, capsys):
    """A compiler that raises: the eager function's result, one warning line, no second attempt."""
    from mvmr.compiled import CompiledOrEager

    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            calls.append(args)
            raise RuntimeError("InductorError: no C++ compiler\nlong traceback")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    double = CompiledOrEager(lambda x: 2 * x)
    x = torch.arange(4.0)
    assert torch.equal(double(x), 2 * x) and torch.equal(double(x), 2 * x)
    assert len(calls) == 1 and double.failed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.compile of <lambda> failed" in err[0] and "no C++ compiler" in err[0]


def test_an_error_of_the_function_itself_propagates_and_keeps_the_compiled_path(monkeypatch, capsys):
    """Bad inputs fail eagerly too: their error is raised, no warning, and compiling is not given up."""
    from mvmr.compiled import CompiledOrEager

    def shape_checking_compile(fn, **kwargs):
        return fn  # "compiled" code that fails exactly where the function does

    monkeypatch.setattr(torch, "compile", shape_checking_compile)
    add = CompiledOrEager(lambda x, y: x + y)
    with pytest.raises(RuntimeError):
        add(torch.ones(3), torch.ones(4))
    assert not add.failed and capsys.readouterr().err == ""
    assert torch.equal(add(torch.ones(2), torch.ones(2)), torch.full((2,), 2.0))


@pytest.mark.parametrize("compile_ops", [True, False])
def test_compile_ops_reaches_the_colour_ops(compile_ops):
    from mvmr.data.views.photometric import COMPILABLE_OPS

    view = build_train_view("custom", 32, (0.5,) * 3, (0.25,) * 3, 3, compile_ops=compile_ops)
    switches = {type(m).__name__: m.compiled for m in view.modules() if isinstance(m, COMPILABLE_OPS)}
    assert switches == {"ColourJitter": compile_ops, "RandomGrayscale": compile_ops, "Solarize": compile_ops}


def test_colour_jitter_factor_ranges_and_gate_rate():
    from mvmr.data.views.photometric import ColourJitter

    torch.manual_seed(2)
    gate, factors, _ = ColourJitter(0.4, 0.9, 0.2, 0.1, p=0.8).draw(20000, 3)
    assert abs(gate.float().mean().item() - 0.8) < 0.01
    for name, lo, hi in [
        ("brightness", 0.6, 1.4),
        ("contrast", 0.1, 1.9),
        ("saturation", 0.8, 1.2),
        ("hue", -0.1, 0.1),
    ]:
        f = factors[name]
        assert lo <= f.min() and f.max() <= hi and abs(f.mean().item() - (lo + hi) / 2) < 0.01


@pytest.mark.parametrize("channels,kernel", [(3, 9), (1, 3), (3, 5)])
def test_gaussian_blur_equals_torchvision_per_sample(channels, kernel):
    """Gate and sigma drawn by GaussianBlur, applied in one batch == torchvision's gaussian_blur on each gated image
    with its own sigma (reflect padding, float64); ungated images come back untouched."""
    from mvmr.data.views.photometric import GaussianBlur

    torch.manual_seed(3)
    images = torch.rand(10, channels, 12, 15, dtype=torch.float64)
    blur = GaussianBlur(kernel, (0.1, 2.0), p=0.5)
    gate, sigma = blur.draw(images.shape[0])
    assert 0 < gate.sum() < len(gate)
    out = blur.apply(images, gate, sigma)
    for i in range(images.shape[0]):
        expected = TF.gaussian_blur(images[i], [kernel, kernel], [sigma[i].item()] * 2) if gate[i] else images[i]
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-12)


def test_gaussian_blur_gate_rate_sigma_range_and_bad_kernel():
    from mvmr.data.views.photometric import GaussianBlur

    torch.manual_seed(4)
    gate, sigma = GaussianBlur(9, (0.1, 2.0), p=0.3).draw(20000)
    assert abs(gate.float().mean().item() - 0.3) < 0.01
    assert 0.1 <= sigma.min() and sigma.max() <= 2.0 and abs(sigma.mean().item() - 1.05) < 0.01
    none = torch.zeros(4, dtype=torch.bool)
    images = torch.rand(4, 3, 8, 8)
    assert GaussianBlur(3, p=0.0).apply(images, none, torch.ones(4)) is images
    with pytest.raises(ConfigError, match="odd"):
        GaussianBlur(4)


def test_custom_policy_refuses_images_too_small_to_blur():
    with pytest.raises(ConfigError, match="dataset.size is 1"):
        build_train_view("custom", 1, MEAN[1], STD[1], 1)
    view = build_train_view("custom", 2, MEAN[1], STD[1], 1)
    assert view(torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)).shape == (8, 1, 2, 2)


@pytest.mark.parametrize("size,kernel", [(224, 23), (96, 9), (32, 3), (8, 3), (50, 5)])
def test_blur_kernel_is_odd_tenth_of_size(size, kernel):
    assert blur_kernel_size(size) == kernel


def test_crop_scale_default_depends_on_size():
    assert custom_policy(64, 3)[0].scale == (0.2, 1.0)
    assert custom_policy(96, 3)[0].scale == (0.08, 1.0)


@pytest.mark.parametrize("policy", ["custom", "crop", "randaugment", "autoaugment"])
def test_crop_scale_overrides_every_resized_crop_policy(policy):
    view = build_train_view(policy, 28, MEAN[1], STD[1], 1, crop_scale=[0.5, 1.0])
    crops = [m for m in view.modules() if hasattr(m, "scale")]
    assert [m.scale for m in crops] == [(0.5, 1.0)]


def test_crop_policy_has_no_colour_ops_and_keeps_intensities():
    view = build_train_view("crop", 16, [0.0], [1.0], 1, crop_scale=[1.0, 1.0])
    images = torch.full((4, 1, 16, 16), 0.25)
    torch.testing.assert_close(view(images), images)  # full-area crop of a constant image, flipped or not


@pytest.mark.parametrize("bad", [[0.8, 0.5], [0.0, 1.0], [0.5, 1.5], [0.5]])
def test_bad_crop_scale_is_a_one_line_config_error(bad):
    with pytest.raises(ConfigError, match="dataset.crop_scale"):
        build_train_view("crop", 28, MEAN[1], STD[1], 1, crop_scale=bad)


# ------------------------------------------------------------------ per-sample policy choice
class AddConstant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return x + self.value


def test_per_sample_choice_picks_distinct_branches_per_sample():
    """Branch k adds 10^k: each output reveals which branches ran on that sample."""
    choice = PerSampleChoice([AddConstant(10.0**k) for k in range(4)], picks=2)
    torch.manual_seed(0)
    out = choice(torch.zeros(200, 1, 1, 1))[:, 0, 0, 0].round().long().tolist()
    digits = [[int(d) for d in f"{value:04d}"] for value in out]
    assert all(sorted(d) == [0, 0, 1, 1] for d in digits)  # exactly two distinct branches per sample
    assert len({tuple(d) for d in digits}) == 6  # all C(4, 2) pairs occur: chosen per sample, not per batch


@pytest.mark.parametrize("build", [lambda: rand_augment(), lambda: auto_augment(16), lambda: auto_augment(96)])
def test_policy_ops_keep_grey_images_grey(build):
    """Why 1-channel images may run as 3 repeated channels and come back as the first: no op mixes them apart."""
    torch.manual_seed(0)
    out = build().module(torch.rand(128, 1, 12, 12).repeat(1, 3, 1, 1))
    assert torch.equal(out, out[:, :1].expand_as(out))


def test_policies_work_on_one_channel_and_are_per_sample():
    """RandAugment / AutoAugment ops draw per sample also on 1 channel (kornia's 'color' needs 3: repeated)."""
    for policy in ("randaugment", "autoaugment"):
        torch.manual_seed(0)
        out = train_view(policy, 16, 1)(uint8_images(1, 1, 16).expand(16, -1, -1, -1).contiguous())
        assert out.shape == (16, 1, 16, 16) and len({tuple(r.flatten().tolist()) for r in out}) == 16


# ------------------------------------------------------------------ x̄, ten crops, one-image transform
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height,width,size", [(8, 8, 32), (32, 32, 32), (40, 40, 28), (20, 30, 16), (31, 17, 9)])
def test_eval_view_equals_torchvision_float64(channels, height, width, size):
    images = uint8_images(3, channels, height, width)
    out = build_eval_view(size, MEAN[channels], STD[channels])(images)
    assert out.shape == (3, channels, size, size) and out.dtype == torch.float32
    assert torch.allclose(out.double(), eval_reference(images, size), atol=1e-5)


def test_eval_view_is_deterministic_and_stateless():
    view = build_eval_view(16, MEAN[3], STD[3])
    images = uint8_images(4, 3, 20)
    assert torch.equal(view(images), view(images))
    assert list(view.parameters()) == [] and view.state_dict() == {}


@pytest.mark.parametrize("height,width,size", [(32, 32, 28), (8, 8, 32), (24, 36, 20)])
def test_ten_crop_equals_torchvision_ten_crop(height, width, size):
    images = uint8_images(2, 3, height, width)
    out = build_ten_crop_view(size, MEAN[3], STD[3])(images)
    assert out.shape == (2, 10, 3, size, size)
    resized = TF.resize(images.double() / 255, [round(size * 256 / 224)], antialias=True)
    ref = normalise64(torch.stack(TF.ten_crop(resized, [size, size]), dim=1), 3)
    assert torch.allclose(out.double(), ref, atol=1e-5)


@pytest.mark.parametrize("height,width,size", [(28, 28, 28), (20, 30, 16), (31, 17, 9)])
def test_mirrored_view_is_x_bar_and_torchvision_hflip_of_it(height, width, size):
    images = uint8_images(3, 1, height, width)
    out = build_feature_view(size, MEAN[1], STD[1], mirror=True)(images)
    reference = eval_reference(images, size)
    assert out.shape == (3, 2, 1, size, size)
    assert torch.allclose(out[:, 0].double(), reference, atol=1e-5)
    assert torch.allclose(out[:, 1].double(), TF.hflip(reference), atol=1e-5)
    assert torch.equal(build_feature_view(size, MEAN[1], STD[1], mirror=False)(images), out[:, 0])


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB")])
def test_eval_transform_pil_equals_eval_view(channels, mode):
    images = uint8_images(1, channels, 20, 26)
    array = images[0].permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if channels == 1 else array, mode)
    transform = eval_transform(16, MEAN[channels], STD[channels])
    expected = build_eval_view(16, MEAN[channels], STD[channels])(images)[0]
    assert torch.equal(transform(pil), expected) and torch.equal(transform(images[0]), expected)
    if channels == 1:
        assert torch.equal(transform(images[0, 0]), expected)  # (H, W)
    assert torch.equal(pickle.loads(pickle.dumps(transform))(pil), expected)  # DataLoader workers


def test_eval_transform_converts_pil_mode_to_channels():
    rgba = Image.fromarray(np.full((12, 12, 4), 200, dtype=np.uint8), "RGBA")
    assert eval_transform(8, MEAN[1], STD[1])(rgba).shape == (1, 8, 8)
    assert eval_transform(8, MEAN[3], STD[3])(rgba).shape == (3, 8, 8)


# ------------------------------------------------------------------ modules, errors, devices
def test_train_views_have_no_trainable_state():
    for policy in POLICIES:
        view = train_view(policy, 16, 3)
        assert list(view.parameters()) == [] and view.state_dict() == {}, policy


def test_errors_are_one_line_and_name_the_fix():
    with pytest.raises(
        ConfigError, match="dataset.aug_policy: unknown aug_policy 'mixup'; allowed: authors, autoaugment"
    ):
        build_train_view("mixup", 16, MEAN[3], STD[3], 3)
    with pytest.raises(ConfigError, match="one value per channel"):
        build_train_view("custom", 16, MEAN[3], STD[3], 1)
    with pytest.raises(ConfigError, match="aug_strength"):
        build_train_view("custom", 16, MEAN[3], STD[3], 3, strength=-1.0)
    with pytest.raises(DataError, match=r"expects a \(B, 3, H, W\).*dataset.to_rgb"):
        build_eval_view(16, MEAN[3], STD[3])(uint8_images(2, 1, 8))
    with pytest.raises(ConfigError, match="resize_ratio"):
        build_ten_crop_view(16, MEAN[3], STD[3], resize_ratio=0.5)


def test_views_stay_float32_without_grad_under_autocast():
    """Lightning runs training_step under autocast: the views must not drop to bfloat16 nor record gradients."""
    images = uint8_images(3, 3, 12).float().div(255).requires_grad_()
    for view in [train_view("custom", 16, 3), build_eval_view(16, MEAN[3], STD[3])]:
        torch.manual_seed(0)
        plain = view(images)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = view(images)
        assert mixed.dtype == torch.float32 and not mixed.requires_grad and torch.equal(mixed, plain)


def test_registry_lists_every_policy():
    assert VIEW_POLICIES.names() == POLICIES


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_run_on_cuda_with_the_same_draws():
    images = uint8_images(8, 3, 20)
    for policy in POLICIES:
        view = train_view(policy, 16, 3)
        torch.manual_seed(0)
        cpu = view(images)
        torch.manual_seed(0)
        gpu = view.cuda()(images.cuda())
        assert gpu.shape == cpu.shape and gpu.device.type == "cuda"
        if policy in ("custom", "cifar"):  # parameters are drawn on the CPU: same crops on both devices
            assert torch.allclose(gpu.cpu(), cpu, atol=1e-2)
    eval_view = build_eval_view(16, MEAN[3], STD[3])
    assert torch.allclose(eval_view.cuda()(images.cuda()).cpu(), eval_view(images), atol=1e-5)
    assert not math.isnan(float(build_ten_crop_view(16, MEAN[3], STD[3]).cuda()(images.cuda()).sum()))


def test_test_view_uses_ten_crops_only_for_large_images():
    from mvmr.data.views import build_test_view

    mean, std = [0.5], [0.25]
    small, label = build_test_view(32, mean, std, ten_crop=True)
    assert isinstance(small, EvalView) and "ten-crop needs size >= 64" in label
    large, label = build_test_view(96, mean, std, ten_crop=True)
    assert isinstance(large, TenCropView) and label == "ten-crop"
    images = torch.randint(0, 256, (2, 1, 96, 96), dtype=torch.uint8)
    assert large(images).shape == (2, 10, 1, 96, 96)
    off, label = build_test_view(96, mean, std, ten_crop=False)
    assert isinstance(off, EvalView) and label == "center"
    mirrored, label = build_test_view(32, mean, std, ten_crop=True, mirror=True)
    assert isinstance(mirrored, MirroredView) and label.startswith("center + mirror")
    large, _ = build_test_view(96, mean, std, ten_crop=True, mirror=True)
    assert isinstance(large, TenCropView)  # ten crops already hold the mirror images
