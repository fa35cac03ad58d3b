"""The frozen-teacher representation: preprocessing against independent references, offline loading, freezing.

No downloads: a tiny open_clip architecture with random weights, a random torchvision resnet18 and a tiny
checkpoint of this project, each saved to a temporary file and loaded through ``pretrained=<file>``.
"""

import dataclasses
import os

import numpy as np
import open_clip
import pytest
import torch
import torchvision
from fixtures_clip import refuse_network, write_tiny_open_clip
from PIL import Image
from torch import nn

from mvmr.errors import ConfigError, DataError
from mvmr.representations import build_representation

# Typed from the reference implementations (OpenAI CLIP's preprocess; torchvision's ImageNet weights).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_MEAN = (0.4, 0.5, 0.6)  # the dataset normalisation of x̄ in these tests
DATA_STD = (0.2, 0.25, 0.3)
TINY = "mvmr-test-tiny-vit"


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test: any socket connection is refused and recorded (libraries may swallow the error)."""
    attempts = refuse_network(monkeypatch)
    yield
    assert attempts == []


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(model, weights file) of a tiny random open_clip CLIP registered as ``TINY``."""
    return write_tiny_open_clip(tmp_path_factory.mktemp("open_clip"), TINY)


def as_tensor(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1)


def normalise(pixels, mean=DATA_MEAN, std=DATA_STD):
    """[0, 1] pixels -> x̄ as the eval view produces it (float32)."""
    return ((pixels.double() - as_tensor(mean)) / as_tensor(std)).float()


def random_pixels(batch=2, channels=3, size=32, seed=0):
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def build_teacher(params, channels=3, size=32, mean=DATA_MEAN, std=DATA_STD):
    full = {"dataset_mean": list(mean[:channels]), "dataset_std": list(std[:channels]), **params}
    return build_representation("teacher", full, in_channels=channels, image_size=size)


def clip_teacher(path, channels=3, size=32, mean=DATA_MEAN, std=DATA_STD, **params):
    return build_teacher(
        {"kind": "open_clip", "model_name": TINY, "pretrained": str(path), **params},
        channels=channels,
        size=size,
        mean=mean,
        std=std,
    )


def pil_bicubic(pixels, size):
    """Float64 reference resize: PIL's bicubic on float ('F') images per channel, clipped to [0, 1]."""
    out = np.empty(pixels.shape[:2] + (size, size))
    for b, c in np.ndindex(*pixels.shape[:2]):
        plane = Image.fromarray(pixels[b, c].numpy().astype(np.float32), mode="F")
        out[b, c] = np.asarray(plane.resize((size, size), Image.BICUBIC))
    return torch.from_numpy(out.clip(0, 1))


def encode(model, prepared):
    with torch.no_grad():
        return model.encode_image(prepared.float())


# ------------------------------------------------------------------ open_clip
def test_open_clip_embeds_clip_normalised_pixels_not_dataset_normalised(tiny_clip):
    model, path = tiny_clip
    rep = clip_teacher(path)
    pixels = random_pixels()
    out = rep(normalise(pixels))
    expected = encode(model, (pixels.double() - as_tensor(CLIP_MEAN)) / as_tensor(CLIP_STD))
    assert out.shape == (2, 16) == (2, rep.output_dim()) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rep.teacher.mean.flatten().double(), torch.tensor(CLIP_MEAN, dtype=torch.float64))
    torch.testing.assert_close(rep.teacher.std.flatten().double(), torch.tensor(CLIP_STD, dtype=torch.float64))
    authors_bug = encode(model, normalise(pixels))  # CLIP fed the dataset-normalised view
    assert (out - authors_bug).abs().max() > 1e-2


@pytest.mark.parametrize("size", [20, 48])  # up- and down-sampling to the teacher's 32
def test_resize_is_bicubic_antialiased_like_pil(tiny_clip, size):
    model, path = tiny_clip
    rep = clip_teacher(path, size=size)
    pixels = random_pixels(size=size, seed=1)
    reference = (pil_bicubic(pixels, 32) - as_tensor(CLIP_MEAN)) / as_tensor(CLIP_STD)
    torch.testing.assert_close(rep.teacher.prepare(pixels).double(), reference, rtol=0, atol=2e-5)
    torch.testing.assert_close(rep(normalise(pixels)), encode(model, reference), rtol=1e-4, atol=1e-4)


def test_preprocessing_agrees_with_open_clips_own_transform_on_uint8(tiny_clip):
    model, path = tiny_clip
    rep = clip_teacher(path, size=20)
    coarse = random_pixels(batch=1, size=5, seed=2)  # a smooth image: PIL's uint8 passes clip noise's overshoot
    smooth = torch.nn.functional.interpolate(coarse, size=(20, 20), mode="bilinear", align_corners=True)[0]
    image = (smooth * 255).round().to(torch.uint8)
    transform = open_clip.image_transform(
        model.visual.image_size, is_train=False, mean=model.visual.image_mean, std=model.visual.image_std
    )
    official = transform(Image.fromarray(image.permute(1, 2, 0).numpy()))
    ours = rep.teacher.prepare(image[None].float() / 255)[0]
    # PIL rounds the resized image to uint8: about 1/255 per pixel, divided by CLIP's std (~0.27).
    assert (ours - official).abs().max() < 0.02


def test_grayscale_is_repeated_to_rgb(tiny_clip):
    _, path = tiny_clip
    grey = random_pixels(channels=1, seed=3)
    out_grey = clip_teacher(path, channels=1, mean=(0.3,), std=(0.5,))(normalise(grey, (0.3,), (0.5,)))
    out_rgb = clip_teacher(path)(normalise(grey.repeat(1, 3, 1, 1)))
    torch.testing.assert_close(out_grey, out_rgb, rtol=1e-5, atol=1e-5)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """An empty Hugging Face cache and home folder (so ~/.cache/clip is empty too)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_tag_cached_on_disk_is_used_with_the_tags_mean_std(tiny_clip, empty_caches, monkeypatch):
    model, path = tiny_clip
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED,
        TINY,
        {"cached_tag": {"hf_hub": "mvmr-test/tiny/", "mean": (0.5,) * 3, "std": (0.5,) * 3}},
    )
    snapshot = empty_caches / "hub" / "models--mvmr-test--tiny" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(path.read_bytes())
    rep = build_teacher({"kind": "open_clip", "model_name": TINY, "pretrained": "cached_tag"})
    assert rep.weights_identity[0] == str((snapshot / "open_clip_pytorch_model.bin").resolve())
    pixels = random_pixels(seed=4)
    torch.testing.assert_close(
        rep(normalise(pixels)), encode(model, (pixels.double() - 0.5) / 0.5), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "pretrained, message",
    [
        (
            "laion400m_e32",
            "teacher.pretrained: the weights of open_clip ViT-B-16 tag 'laion400m_e32' are not in the "
            "local cache and nothing is downloaded at run time; pass a local file "
            "(teacher.pretrained=/path/to/weights)",
        ),
        (
            "no_such_tag",
            "teacher.pretrained: 'no_such_tag' is neither a file nor an open_clip tag of ViT-B-16; "
            "pass a local file (teacher.pretrained=/path/to/weights)",
        ),
    ],
)
def test_tag_without_local_weights_is_one_line_data_error_offline(empty_caches, pretrained, message):
    with pytest.raises(DataError) as err:
        build_teacher({"pretrained": pretrained})  # default kind open_clip, model ViT-B-16
    assert str(err.value) == message


def test_missing_file_and_unreadable_file_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError) as err:
        build_teacher({"kind": "torchvision", "pretrained": str(tmp_path / "missing.pt")})
    assert str(err.value) == (
        f"teacher.pretrained: file '{tmp_path / 'missing.pt'}' not found; "
        "pass a local file (teacher.pretrained=/path/to/weights)"
    )
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    rep = build_teacher({"kind": "torchvision", "model_name": "resnet18", "pretrained": str(garbage)})
    assert not rep.loaded  # nothing is read before first use
    with pytest.raises(DataError, match="cannot be loaded as a torchvision resnet18 teacher") as err:
        rep.output_dim()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ torchvision
def test_torchvision_pooled_features_with_imagenet_stats(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)  # any class count: the classifier is dropped
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial running statistics (eval mode matters)
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    rep = build_teacher({"kind": "torchvision", "model_name": "resnet18", "pretrained": str(path), "input_size": 32})
    pixels = random_pixels(seed=5)
    out = rep(normalise(pixels))
    net.fc = nn.Identity()
    expected = net.eval()(((pixels.double() - as_tensor(IMAGENET_MEAN)) / as_tensor(IMAGENET_STD)).float())
    assert rep.output_dim() == 512
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)
    default = build_teacher({"kind": "torchvision", "model_name": "resnet18", "pretrained": str(path)})
    assert default.teacher.size == (224, 224)


# ------------------------------------------------------------------ mvmr checkpoint
def test_mvmr_checkpoint_backbone_with_its_own_stats_and_size(tmp_path):
    from mvmr.config import PretrainConfig, build_dataclass, to_dict
    from mvmr.data import DatasetInfo
    from mvmr.methods.pretrain import MVMRPretrainModule

    cfg = build_dataclass(
        PretrainConfig,
        {"dataset": {"name": "digits", "size": 24}, "encoder": {"backbone": "resnet18", "out_dim": "16-16"}},
    )
    info = DatasetInfo(10, 1, (0.3,), (0.2,), [str(i) for i in range(10)])
    torch.manual_seed(0)
    module = MVMRPretrainModule(cfg, info).eval()
    path = tmp_path / "teacher.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {"config": to_dict(cfg), "info": dataclasses.asdict(info)},
        },
        path,
    )
    rep = build_teacher({"kind": "mvmr", "pretrained": str(path)}, channels=1, size=16, mean=(0.5,), std=(0.25,))
    pixels = random_pixels(channels=1, size=16, seed=6)
    out = rep(normalise(pixels, (0.5,), (0.25,)))
    with torch.no_grad():
        expected = module.backbone((pil_bicubic(pixels, 24).float() - 0.3) / 0.2)
    assert rep.output_dim() == module.feature_dim == 512
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="teacher.model_name must be null for kind mvmr"):
        build_teacher({"kind": "mvmr", "model_name": "resnet18", "pretrained": str(path)})


# ------------------------------------------------------------------ frozen, outside the checkpoint, float32
def test_teacher_is_frozen_and_never_saved_or_optimised(tiny_clip):
    _, path = tiny_clip
    rep = clip_teacher(path)
    student = nn.Linear(4, 2)
    parent = nn.ModuleDict({"phi": rep, "student": student}).train()
    assert rep.output_dim() == 16 and rep.loaded
    assert list(rep.parameters()) == [] and rep.state_dict() == {}
    assert set(parent.state_dict()) == {"student.weight", "student.bias"}
    parent.load_state_dict(parent.state_dict(), strict=True)
    assert len(torch.optim.Adam(parent.parameters()).param_groups[0]["params"]) == 2
    parent.train()
    assert not rep.teacher.training and not rep.teacher.encoder.training
    assert all(not p.requires_grad for p in rep.teacher.parameters())
    out = rep(normalise(random_pixels()).requires_grad_(True))
    assert not out.requires_grad


def test_device_moves_reach_the_teacher_but_dtype_casts_do_not(tiny_clip):
    _, path = tiny_clip
    rep = clip_teacher(path)
    parent = nn.ModuleDict({"phi": rep})
    x = normalise(random_pixels(seed=7))
    before = rep(x)
    parent.double()
    assert next(rep.teacher.parameters()).dtype == torch.float32
    torch.testing.assert_close(rep(x), before, rtol=1e-6, atol=1e-6)
    parent.to("meta")
    assert {p.device.type for p in rep.teacher.parameters()} == {"meta"}
    late = clip_teacher(path).to("meta")  # loaded after the move: lands on the module's device
    assert next(late.teacher.parameters()).device.type == "meta"


def test_output_is_float32_and_unchanged_under_bf16_autocast(tiny_clip):
    _, path = tiny_clip
    rep = clip_teacher(path)
    x = normalise(random_pixels(seed=8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rep(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, rep(x), rtol=0, atol=0)


def test_repr_names_the_teacher_and_tracks_the_weights_file(tiny_clip, tmp_path):
    _, path = tiny_clip
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    text = repr(clip_teacher(copy))
    for needle in ("kind='open_clip'", f"model_name='{TINY}'", f"pretrained='{copy}'", "dataset_mean=(0.4, 0.5, 0.6)"):
        assert needle in text
    assert "\n" not in text  # the network is not part of the module tree
    stat = os.stat(copy)
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file rewritten in place
    assert repr(clip_teacher(copy)) != text


# ------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    "params, message",
    [
        ({"kind": "clip"}, "teacher.kind must be one of open_clip, torchvision, mvmr, got 'clip'"),
        (
            {"pretrained": None},
            "teacher.pretrained must be a local weights file (open_clip: or a tag whose weights "
            "are cached on disk), got None",
        ),
        ({"dataset_mean": None}, "teacher.dataset_mean must be a list of finite numbers, one per channel, got None"),
        ({"dataset_mean": [0.5]}, "teacher.dataset_mean must be a list of 3 numbers (one per channel), got (0.5,)"),
        (
            {"dataset_std": [0.2, 0.0, 0.2]},
            "teacher.dataset_std must be a list of finite numbers > 0, got (0.2, 0.0, 0.2)",
        ),
        ({"input_size": 0}, "teacher.input_size must be an int >= 1 or null, got 0"),
        (
            {"model_name": "ViT-X-99"},
            "teacher.model_name must be an open_clip architecture (open_clip.list_models()) "
            "for kind open_clip, got 'ViT-X-99'",
        ),
        (
            {"kind": "torchvision", "model_name": "resnet7"},
            "teacher.model_name must be a torchvision classifier for kind torchvision, got 'resnet7'",
        ),
    ],
)
def test_invalid_parameters_are_one_line_config_errors(tiny_clip, params, message):
    _, path = tiny_clip
    with pytest.raises(ConfigError) as err:
        build_teacher({"pretrained": str(path), **params})
    assert str(err.value) == message


def test_channel_count_the_teacher_cannot_take_is_a_config_error(tiny_clip):
    _, path = tiny_clip
    rep = clip_teacher(path, channels=2, mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ConfigError, match="a 3-channel teacher cannot take 2-channel images"):
        rep.output_dim()
