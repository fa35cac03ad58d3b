"""ImageNet-style file datasets: x̄ is torchvision's Resize(256) + CenterCrop(224), and x' is a random resized crop
of the WHOLE image cut by the loader's workers (not of the decoded centre square)."""

import re

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_boxes_like
from fixtures_data import dataset_cfg, write_image_folder
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from mvmr.data import loader_crops
from mvmr.data.datamodule import MVMRDataModule
from mvmr.data.datasets import build_dataset
from mvmr.data.views import LoaderCrops, build_eval_view, build_train_view
from mvmr.errors import ConfigError


def png(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_x_bar_of_a_file_dataset_is_resize_then_center_crop(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=2, splits=("train",), size=(100, 70))
    dataset = build_dataset(dataset_cfg("image_folder", tmp_path, size=56), "train")
    assert dataset.info.eval_resize == 64  # 56 * 256 / 224
    view = build_eval_view(56, [0.0] * 3, [1.0] * 3, dataset.info.eval_resize)
    reference = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(56), transforms.PILToTensor()])
    for i in range(len(dataset)):
        image, _ = dataset[i]
        ours = view(image[None])[0]
        theirs = reference(Image.open(dataset.path(i)).convert("RGB")).float() / 255
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def recorded_boxes(monkeypatch):
    boxes = []
    original = loader_crops.sample_resized_crop_boxes

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        boxes.append(out)
        return out

    monkeypatch.setattr(loader_crops, "sample_resized_crop_boxes", record)
    return boxes


def test_crop_boxes_cover_the_whole_image_with_torchvisions_distribution(tmp_path, monkeypatch):
    path = png(tmp_path / "wide.png", 320, 160)
    boxes = recorded_boxes(monkeypatch)
    spec = LoaderCrops(size=8, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5, count=400)
    torch.manual_seed(0)
    for _ in range(5):
        square, crops = loader_crops.decode_with_crops(path, "RGB", 16, spec)
        assert square.shape == (3, 16, 16) and crops.shape == (400, 3, 8, 8) and crops.dtype == torch.uint8
    ours = torch.cat(boxes)
    torch.manual_seed(1)
    reference = torch.tensor(
        [
            transforms.RandomResizedCrop.get_params(torch.zeros(1, 160, 320), list(spec.scale), list(spec.ratio))
            for _ in range(2000)
        ],
        dtype=torch.float64,
    )
    assert_boxes_like(ours, reference, height=160, width=320)
    # a centre square (80..240) would never give these: crops reach both ends of the long side
    right_edge = ours[:, 1] + ours[:, 3]
    assert (ours[:, 1] < 40).float().mean() > 0.1 and (right_edge > 280).float().mean() > 0.1
    assert (ours[:, 3] > 160).any()  # wider than the short side: only possible from the whole image


def test_a_crop_is_torchvisions_resized_crop_of_the_whole_image(tmp_path, monkeypatch):
    path = png(tmp_path / "tall.png", 90, 150)
    fixed = torch.tensor([[20.0, 5.0, 100.0, 70.0], [0.0, 0.0, 150.0, 90.0], [60.0, 30.0, 33.0, 41.0]])
    monkeypatch.setattr(loader_crops, "sample_resized_crop_boxes", lambda *args, **kwargs: fixed)
    monkeypatch.setattr(loader_crops.torch, "rand", lambda n: torch.tensor([0.9, 0.1, 0.9])[:n])  # mirror the 2nd
    spec = LoaderCrops(size=24, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5, count=3)
    _, crops = loader_crops.decode_with_crops(path, "RGB", 32, spec)
    image = Image.open(path).convert("RGB")
    for (top, left, h, w), crop, flip in zip(fixed.int().tolist(), crops, (False, True, False)):
        theirs = TF.pil_to_tensor(
            TF.resized_crop(image, top, left, h, w, [24, 24], transforms.InterpolationMode.BILINEAR)
        )
        theirs = TF.hflip(theirs) if flip else theirs
        assert (crop.int() - theirs.int()).abs().max() <= 1


def test_jpeg_crops_are_decoded_at_a_reduced_scale_when_the_crop_allows(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, size=(24, 32, 3)), np.ones((32, 32, 1))).astype(np.uint8)  # 768 x 1024
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=90)
    fixed = torch.tensor([[100.0, 200.0, 600.0, 700.0]])
    monkeypatch.setattr(loader_crops, "sample_resized_crop_boxes", lambda *args, **kwargs: fixed)
    spec = LoaderCrops(size=64, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.0, count=1)
    assert loader_crops.draft_target(1024, 768, 73, fixed, 64) == (110, 82)  # reduction min(768 / 73, 600 / 64) = 9.375
    _, crops = loader_crops.decode_with_crops(path, "RGB", 73, spec)
    full = TF.pil_to_tensor(
        TF.resized_crop(
            Image.open(path).convert("RGB"), 100, 200, 600, 700, [64, 64], transforms.InterpolationMode.BILINEAR
        )
    )
    assert (crops[0].float() - full.float()).abs().mean() < 4  # the reduced decode is close to the full one


def test_the_training_loader_carries_the_crops_and_x_bar_squares(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=4, splits=("train",), size=(90, 60))
    dm = MVMRDataModule(dataset_cfg("image_folder", tmp_path, size=28, val_fraction=0.0), batch_size=4, n_workers=0)
    dm.train_crops = LoaderCrops(size=28, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5, count=2)
    images, labels, index, crops = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and crops.shape == (4, 2, 3, 28, 28) and labels.shape == index.shape == (4,)
    dm.train_crops = None
    assert len(next(iter(dm.train_dataloader()))) == 3


def test_only_policies_that_start_with_a_resized_crop_and_only_files(tmp_path):
    view = build_train_view("authors", 32, [0.5] * 3, [0.2] * 3, 3, crops_in_loader=True)
    assert view.loader_crops == LoaderCrops(32, (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
    assert all(type(m).__name__ != "ResizedCropFlip" for m in view.modules())  # the device no longer crops
    with pytest.raises(ConfigError, match="does not start with a random resized crop"):
        build_train_view("cifar20", 32, [0.5] * 3, [0.2] * 3, 3, crops_in_loader=True)
    from mvmr.config import load_config
    from mvmr.data.datasets import DatasetInfo
    from mvmr.methods.pretrain import crops_in_loader

    cfg = load_config(ROOT / "configs" / "digits_self_supervised.yaml")
    digits = DatasetInfo(10, 3, (0.5,) * 3, (0.2,) * 3)
    files = DatasetInfo(10, 3, (0.5,) * 3, (0.2,) * 3, eval_resize=37)
    assert crops_in_loader(cfg, files) and not crops_in_loader(cfg, digits)
    cfg.dataset.crops_in_loader = True
    with pytest.raises(ConfigError, match="crops_in_loader needs image files"):
        crops_in_loader(cfg, digits)


def test_data_path_benchmark_prints_workers_per_gpu():
    from conftest import load_benchmark

    out = load_benchmark("data_path").run(images=3, rounds=1, step_images_per_s=None)
    assert "ESTIMATED from FLOPs" in out and "| square + crops" in out and "workers per GPU" in out
    measured = load_benchmark("data_path").run(images=3, rounds=1, step_images_per_s=10.0)
    assert "measured" in measured


def test_gpu_check_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    from conftest import load_benchmark

    text = load_benchmark("gpu_check").run(steps=3, warmup=1, out=tmp_path, tiny=True)
    assert "| STL10 (cached representations)" in text and "| ImageNet (representations every step)" in text
    assert "TINY" in text and list(tmp_path.glob("gpu_check_*_tiny.md"))
    numerics = text.split("Numerics on the device")[1]
    for name in (
        "scatnet",
        "hog",
        "local_std",
        "gabor",
        "dct",
    ):  # the deterministic ones of the STL10 config, each within tolerance
        assert re.search(rf"\| {name} +\|.*\| ok +\|", numerics), numerics
    assert "CHECK" not in numerics.split("\n", 1)[1]
