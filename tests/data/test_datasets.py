"""Dataset builders read the real file formats as the reference readers (torchvision, sklearn) do."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fixtures_data import (
    dataset_cfg,
    stl10_bytes,
    write_cifar10,
    write_cifar100,
    write_flat_folder,
    write_idx,
    write_idx_file,
    write_image,
    write_image_folder,
    write_stl10,
)
from PIL import Image
from torchvision import transforms

from mvmr.data.datasets import (
    DATASETS,
    ArrayImageDataset,
    DatasetInfo,
    FileImageDataset,
    build_dataset,
    load_image,
    pixel_stats,
)
from mvmr.data.datasets.base import StringTable
from mvmr.data.datasets.idx import read_idx
from mvmr.errors import ConfigError, DataError


def chw(images_nhwc: np.ndarray, i: int) -> torch.Tensor:
    return torch.from_numpy(images_nhwc[i]).permute(2, 0, 1)


def reference_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 numpy mean/std per channel of (N, H, W, C) uint8, in [0, 1] units."""
    x = images.astype(np.float64).reshape(-1, images.shape[-1]) / 255.0
    return x.mean(0), x.std(0)


def assert_one_line_error(exc_info, *fragments: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# ------------------------------------------------------------------------------ registry, info
def test_registry_lists_every_dataset_and_rejects_unknown_names():
    assert DATASETS.names() == sorted(
        ["cifar10", "cifar100", "cifar20", "digits", "fashion_mnist", "image_folder", "imagenet", "mnist", "stl10"]
    )
    with pytest.raises(ConfigError) as err:
        build_dataset(dataset_cfg("cifar1O"), "train")
    assert_one_line_error(err, "dataset.name", "cifar10, cifar100")


def test_n_classes_is_checked_against_the_data():
    assert build_dataset(dataset_cfg("digits", n_classes=10), "train").info.n_classes == 10
    with pytest.raises(ConfigError) as err:
        build_dataset(dataset_cfg("digits", n_classes=7), "train")
    assert_one_line_error(err, "dataset.n_classes is 7", "10 classes")


def test_pixel_stats_match_float64_numpy():
    images = np.random.default_rng(1).integers(0, 256, size=(5, 7, 6, 3), dtype=np.uint8)
    mean, std = pixel_stats(images)
    ref_mean, ref_std = reference_stats(images)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(std, ref_std, rtol=1e-12)


def test_dataset_info_survives_a_dict_round_trip():
    info = DatasetInfo(2, 3, [0.1, 0.2, 0.3], [1, 1, 1], ["a", "b"])
    assert info.mean == (0.1, 0.2, 0.3) and info.std == (1.0, 1.0, 1.0)
    assert DatasetInfo(**dataclasses.asdict(info)) == info
    with pytest.raises(ValueError):
        DatasetInfo(2, 3, (0.5,), (0.5,), [])


def test_string_table_round_trip():
    strings = ["a/b.png", "", "ünïcode/файл.JPG", "x" * 300]
    table = StringTable(strings)
    assert len(table) == 4 and [table[i] for i in range(4)] == strings
    assert len(StringTable([])) == 0


# ------------------------------------------------------------------------------ digits
def test_digits_split_values_and_stats():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = build_dataset(dataset_cfg("digits"), "train"), build_dataset(dataset_cfg("digits"), "test")
    assert build_dataset(dataset_cfg("digits"), "extra_unlabeled") is None
    assert len(train) + len(test) == 1797
    assert len(test) == 359  # stratified 80/20: round(0.2 * 1797), floor or ceil of 0.2 * n_c per class
    quotas = 0.2 * np.bincount(bunch.target)
    assert (np.abs(np.bincount(test.targets) - quotas) < 1).all()
    # every train image is one of sklearn's, scaled 0..16 -> 0..255
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8)
    scaled = np.round(bunch.images * 255 / 16)
    hits = np.flatnonzero((scaled == image[0].numpy()).all(axis=(1, 2)) & (bunch.target == label))
    assert len(hits) >= 1
    assert image.max() <= 255 and (scaled.max() == 255)
    ref_mean, ref_std = reference_stats(train.images)
    np.testing.assert_allclose(train.info.mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(train.info.std, ref_std, rtol=1e-12)
    assert test.info == train.info and train.info.class_names == [str(d) for d in range(10)]


def test_to_rgb_repeats_grayscale_channels_and_stats():
    gray = build_dataset(dataset_cfg("digits"), "train")
    rgb = build_dataset(dataset_cfg("digits", to_rgb=True), "train")
    assert rgb.info.channels == 3 and rgb.info.mean == gray.info.mean * 3 and rgb.info.std == gray.info.std * 3
    image, _ = rgb[5]
    assert image.shape == (3, 8, 8) and all(torch.equal(image[c], gray[5][0][0]) for c in range(3))


# ------------------------------------------------------------------------------ IDX (MNIST, Fashion-MNIST)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_plain_and_gzip(tmp_path, gz):
    arrays = write_idx(tmp_path, n_train=12, n_test=5, gz=gz)
    train = build_dataset(dataset_cfg("mnist", tmp_path), "train")
    test = build_dataset(dataset_cfg("mnist", tmp_path), "test")
    assert len(train) == 12 and len(test) == 5
    np.testing.assert_array_equal(train.targets, arrays["train_labels"])
    np.testing.assert_array_equal(test.images[..., 0], arrays["test_images"])
    assert torch.equal(train[3][0], torch.from_numpy(arrays["train_images"][3])[None])
    ref_mean, ref_std = reference_stats(arrays["train_images"][..., None])
    np.testing.assert_allclose(test.info.mean, ref_mean, rtol=1e-12)  # test split normalised with train stats
    np.testing.assert_allclose(test.info.std, ref_std, rtol=1e-12)


def test_idx_reader_matches_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    write_idx(tmp_path, n_train=7, n_test=3, shape=(5, 9))
    for name, reader in (("train-images-idx3-ubyte", read_image_file), ("t10k-labels-idx1-ubyte", read_label_file)):
        np.testing.assert_array_equal(read_idx(tmp_path / name), reader(str(tmp_path / name)).numpy())
    ints = np.arange(-3, 9, dtype=np.int32).reshape(3, 4) * 1000003
    np.testing.assert_array_equal(read_idx(write_idx_file(tmp_path / "ints", ints, gz=True)), ints)


def test_fashion_mnist_in_torchvision_layout_matches_torchvision(tmp_path):
    arrays = write_idx(tmp_path / "FashionMNIST" / "raw", n_train=10, n_test=4)
    ours = build_dataset(dataset_cfg("fashion_mnist", tmp_path), "train")
    theirs = torchvision.datasets.FashionMNIST(str(tmp_path), train=True, download=False)
    np.testing.assert_array_equal(ours.images[..., 0], theirs.data.numpy())
    np.testing.assert_array_equal(ours.targets, theirs.targets.numpy())
    assert ours.info.class_names == theirs.classes and len(arrays["train_labels"]) == 10


def test_idx_bad_magic_and_truncation_are_data_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "bad")
    assert_one_line_error(err, "not an IDX file")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x07")
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "short")
    assert_one_line_error(err, "truncated")


def test_missing_idx_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as err:
        build_dataset(dataset_cfg("fashion_mnist", tmp_path), "train")
    assert_one_line_error(
        err,
        "fashion_mnist: no IDX files under",
        "train-images-idx3-ubyte[.gz]",
        "apt-get install -y dataset-fashion-mnist",
        "dataset.path",
    )
    with pytest.raises(DataError) as err:
        build_dataset(dataset_cfg("mnist"), "test")
    assert_one_line_error(err, "mnist: dataset.path is not set")


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_installed_fashion_mnist_is_the_default_path():
    test = build_dataset(dataset_cfg("fashion_mnist"), "test")
    assert len(test) == 10_000 and test[0][0].shape == (1, 28, 28)
    assert np.bincount(test.targets).tolist() == [1000] * 10
    np.testing.assert_allclose(test.info.mean, (0.2860,), atol=1e-4)  # published Fashion-MNIST statistics
    np.testing.assert_allclose(test.info.std, (0.3530,), atol=1e-4)


# ------------------------------------------------------------------------------ CIFAR
@pytest.fixture
def no_md5_checks(monkeypatch):
    """torchvision's readers check the official files' md5 sums; our tiny files have other sums."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)


def test_cifar10_matches_torchvision(tmp_path, no_md5_checks):
    arrays = write_cifar10(tmp_path, n_per_batch=3, n_test=4)
    for split, train in (("train", True), ("test", False)):
        ours = build_dataset(dataset_cfg("cifar10", tmp_path), split)
        theirs = torchvision.datasets.CIFAR10(str(tmp_path), train=train, download=False)
        np.testing.assert_array_equal(ours.images, theirs.data)
        np.testing.assert_array_equal(ours.targets, theirs.targets)
        assert ours.info.class_names == theirs.classes
    assert torch.equal(ours[2][0], chw(arrays["test_images"], 2)) and ours[2][1] == arrays["test_labels"][2]
    assert ours.info.mean == (0.4914, 0.4822, 0.4465) and ours.info.channels == 3
    inner = build_dataset(dataset_cfg("cifar10", tmp_path / "cifar-10-batches-py"), "train")  # the folder itself
    assert len(inner) == 15 and build_dataset(dataset_cfg("cifar10", tmp_path), "extra_unlabeled") is None


def test_cifar100_fine_and_cifar20_coarse_labels(tmp_path, no_md5_checks):
    arrays = write_cifar100(tmp_path, n_train=12, n_test=6)
    fine = build_dataset(dataset_cfg("cifar100", tmp_path), "train")
    coarse = build_dataset(dataset_cfg("cifar20", tmp_path), "test")
    theirs = torchvision.datasets.CIFAR100(str(tmp_path), train=True, download=False)
    np.testing.assert_array_equal(fine.images, theirs.data)
    np.testing.assert_array_equal(fine.targets, theirs.targets)
    np.testing.assert_array_equal(coarse.targets, arrays["test_coarse"])
    assert fine.info.n_classes == 100 and coarse.info.n_classes == 20 and coarse.info.class_names[3] == "coarse3"
    assert torch.equal(coarse[1][0], chw(arrays["test_images"], 1))


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        build_dataset(dataset_cfg("cifar20", tmp_path), "train")
    assert_one_line_error(err, "cifar20: no 'cifar-100-python'", "python version", "dataset.path")


# ------------------------------------------------------------------------------ STL10
def test_stl10_pixel_layout_hand_worked(tmp_path):
    """Byte c*9216 + x*96 + y of an image is channel c, row y, column x (column-major planes)."""
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    raw = np.zeros(2 * 3 * 96 * 96, dtype=np.uint8)
    raw[3 * 96 * 96 + 1 * 9216 + 70 * 96 + 5] = 200  # image 1, green, x=70, y=5
    (folder / "train_X.bin").write_bytes(raw.tobytes())
    (folder / "train_y.bin").write_bytes(bytes([1, 10]))
    data = build_dataset(dataset_cfg("stl10", tmp_path), "train")
    image, label = data[1]
    assert image.shape == (3, 96, 96) and label == 9 and data.targets.tolist() == [0, 9]
    assert image[1, 5, 70] == 200 and int(image.sum()) == 200
    assert data.info.class_names[0] == "airplane"  # no class_names.txt: the official names


def test_stl10_matches_torchvision(tmp_path, no_md5_checks):
    arrays = write_stl10(tmp_path, n_train=4, n_test=3, n_unlabeled=3)
    for split in ("train", "test"):
        ours = build_dataset(dataset_cfg("stl10", tmp_path), split)
        theirs = torchvision.datasets.STL10(str(tmp_path), split=split, download=False)
        for i in range(len(theirs)):
            assert torch.equal(ours[i][0], torch.from_numpy(theirs.data[i]))
            pil, label = theirs[i]
            assert ours[i][1] == label
        np.testing.assert_array_equal(ours.targets, arrays[f"{split}_labels"])
        assert ours.info.class_names == theirs.classes
    extra = build_dataset(dataset_cfg("stl10", tmp_path), "extra_unlabeled")
    theirs = torchvision.datasets.STL10(str(tmp_path), split="unlabeled", download=False)
    assert isinstance(extra, ArrayImageDataset) and isinstance(extra.images, np.memmap)
    assert extra.targets.tolist() == [-1, -1, -1]
    assert torch.equal(extra[2][0], torch.from_numpy(theirs.data[2]))
    assert extra[2][1] == -1 and torch.equal(extra[0][0], chw(arrays["unlabeled_images"], 0))


def test_memmapped_dataset_pickles_as_a_file_reference(tmp_path):
    arrays = write_stl10(tmp_path, n_train=2, n_test=2, n_unlabeled=40)
    extra = build_dataset(dataset_cfg("stl10", tmp_path), "extra_unlabeled")
    blob = pickle.dumps(extra)
    assert len(blob) < 5_000 < arrays["unlabeled_images"].nbytes
    restored = pickle.loads(blob)
    assert len(pickle.dumps(restored)) == len(blob)  # still a view of the mapped file
    for i in (0, 17, 39):
        assert torch.equal(restored[i][0], chw(arrays["unlabeled_images"], i))
    plain = ArrayImageDataset(arrays["train_images"], [0, 1], extra.info)  # an in-memory array pickles its data
    assert torch.equal(pickle.loads(pickle.dumps(plain))[1][0], plain[1][0])


def test_missing_stl10_parts_say_how_to_get_them(tmp_path):
    write_stl10(tmp_path, n_train=2, n_test=2, n_unlabeled=1)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    with pytest.raises(DataError) as err:
        build_dataset(dataset_cfg("stl10", tmp_path), "extra_unlabeled")
    assert_one_line_error(err, "stl10: no 'stl10_binary' folder with unlabeled_X.bin", "binary version")
    (tmp_path / "stl10_binary" / "test_X.bin").write_bytes(stl10_bytes(np.zeros((1, 96, 96, 3), np.uint8))[:-1])
    with pytest.raises(DataError) as err:
        build_dataset(dataset_cfg("stl10", tmp_path), "test")
    assert_one_line_error(err, "not a multiple of 27648")


# ------------------------------------------------------------------------------ files on disk
@pytest.mark.parametrize(
    "size, load_size", [((48, 40), 24), ((30, 57), 24), ((41, 41), 41), ((20, 31), 37), ((40, 43), 40)]
)
def test_load_image_matches_torchvision_resize_and_center_crop(tmp_path, size, load_size):
    path = write_image(tmp_path / "a.png", np.random.default_rng(3), size)
    reference = transforms.Compose([transforms.Resize(load_size), transforms.CenterCrop(load_size)])
    expected = np.asarray(reference(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(np.asarray(load_image(path, "RGB", load_size)), expected)


def test_file_dataset_returns_uint8_chw_rgb_or_gray(tmp_path):
    rng = np.random.default_rng(4)
    paths = [write_image(tmp_path / "c.png", rng, (50, 30), mode="L"), write_image(tmp_path / "d.jpg", rng, (64, 80))]
    rgb = FileImageDataset(paths, [0, 1], DatasetInfo(2, 3, (0.5,) * 3, (0.5,) * 3, ["a", "b"]), load_size=20)
    gray = FileImageDataset(paths, [0, 1], DatasetInfo(2, 1, (0.5,), (0.5,), ["a", "b"]), load_size=20)
    for i in range(2):
        assert rgb[i][0].shape == (3, 20, 20) and rgb[i][0].dtype == torch.uint8 and rgb[i][1] == i
        assert gray[i][0].shape == (1, 20, 20)
    assert torch.equal(rgb[0][0][0], rgb[0][0][2])  # a grayscale file converted to RGB has equal channels
    assert rgb.names == [p.as_posix() for p in paths]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        FileImageDataset([tmp_path / "broken.png"], [0], rgb.info, 20)[0]
    assert_one_line_error(err, "cannot decode image", "broken.png")


def test_imagenet_layout_and_classes_file_subset(tmp_path):
    write_image_folder(tmp_path, classes=("n01", "n02", "n03"), per_class=2, splits=("train", "val"), ext="JPEG")
    full = build_dataset(dataset_cfg("imagenet", tmp_path, size=16), "train")
    assert full.info.class_names == ["n01", "n02", "n03"] and full.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert full.info.mean == (0.485, 0.456, 0.406) and full[0][0].shape == (3, 18, 18)  # round(16 * 256 / 224)
    (tmp_path / "subset.txt").write_text("# ImageNet-2\nn03\n\nn01\n")
    subset = build_dataset(dataset_cfg("imagenet", tmp_path, classes_file=str(tmp_path / "subset.txt")), "test")
    assert subset.info.class_names == ["n01", "n03"] and subset.targets.tolist() == [0, 0, 1, 1]
    assert all("/val/n01/" in n or "/val/n03/" in n for n in subset.names)
    (tmp_path / "bad.txt").write_text("n01\nn99\n")
    with pytest.raises(DataError) as err:
        build_dataset(dataset_cfg("imagenet", tmp_path, classes_file=str(tmp_path / "bad.txt")), "train")
    assert_one_line_error(err, "'n99'")
    with pytest.raises(DataError) as err:
        build_dataset(dataset_cfg("imagenet", tmp_path / "nowhere"), "train")
    assert_one_line_error(err, "imagenet:", "train/<wnid>/*.JPEG")


def test_image_folder_labelled_with_sampled_stats(tmp_path):
    files = write_image_folder(tmp_path, classes=("b", "a"), per_class=3, splits=("train",), size=(30, 30))
    cfg = dataset_cfg("image_folder", tmp_path, size=26, load_size=30)
    train = build_dataset(cfg, "train")
    assert build_dataset(cfg, "test") is None  # no test/ folder
    assert train.info.class_names == ["a", "b"] and train.targets.tolist() == [0, 0, 0, 1, 1, 1]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files["train"]])
    ref_mean, ref_std = reference_stats(pixels)  # load_size equals the file size: no resampling
    np.testing.assert_allclose(train.info.mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(train.info.std, ref_std, rtol=1e-12)
    write_image_folder(tmp_path, classes=("a",), per_class=2, splits=("test",), size=(30, 30))
    assert build_dataset(cfg, "test").targets.tolist() == [0, 0]


def test_flat_image_folder_is_unlabelled(tmp_path):
    files = write_flat_folder(tmp_path, n=5)
    cfg = dataset_cfg("image_folder", tmp_path, load_size=16)
    train = build_dataset(cfg, "train")
    assert len(train) == 5 and train.targets.tolist() == [-1] * 5 and train.info.n_classes == 0
    assert sorted(train.names) == sorted(p.as_posix() for p in files)  # .JPG and .jpeg found, notes.txt not
    assert build_dataset(cfg, "test") is None and build_dataset(cfg, "extra_unlabeled") is None
    with pytest.raises(ConfigError) as err:
        build_dataset(dataset_cfg("image_folder", tmp_path, classes_file="x.txt"), "train")
    assert_one_line_error(err, "classes_file", "train/")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        build_dataset(dataset_cfg("image_folder", empty), "train")
    assert_one_line_error(err, "no images")
