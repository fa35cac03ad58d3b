"""Splits, semi-supervised subsets and loaders of MVMRDataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_data import dataset_cfg, write_cifar10, write_flat_folder, write_image_folder, write_stl10

from mvmr.data import MVMRDataModule
from mvmr.data.datasets import balanced_subset, stratified_split
from mvmr.errors import ConfigError, DataError


def positions(subset, part: int = 0) -> np.ndarray:
    """Positions in the underlying dataset of an IndexedSubset's part."""
    return subset.parts[part][1]


# ------------------------------------------------------------------------------ index selection
def test_stratified_split_hand_worked():
    targets = np.array([0] * 10 + [1] * 6 + [2] * 1 + [3] * 24)
    held, rest = stratified_split(targets, 0.1, seed=3)
    # round(0.1 * 41) = 4 held out; quotas 1.0, 0.6, 0.1, 2.4 -> floors 1, 0, 0, 2; the spare one goes to 0.6
    assert np.bincount(targets[held], minlength=4).tolist() == [1, 1, 0, 2]
    assert np.intersect1d(held, rest).size == 0 and np.union1d(held, rest).tolist() == list(range(41))
    ties = np.repeat(np.arange(10), 2)  # 20 samples, 2 per class: 2 held out, from 2 different classes
    assert sorted(np.bincount(ties[stratified_split(ties, 0.1, seed=0)[0]], minlength=10)) == [0] * 8 + [1, 1]
    again, _ = stratified_split(targets, 0.1, seed=3)
    assert np.array_equal(held, again)
    assert any(not np.array_equal(held, stratified_split(targets, 0.1, seed=s)[0]) for s in range(4, 8))
    assert stratified_split(targets, 0.0, seed=0)[0].size == 0


def test_balanced_subset_hand_worked_without_replacement():
    targets = np.array([5] * 30 + [7] * 25 + [9] * 200)
    chosen = balanced_subset(targets, 10, seed=0)
    # 10% of 30 -> 3, of 25 -> 3 (2.5 rounds up), of 200 -> 20
    assert np.bincount(targets[chosen], minlength=10)[[5, 7, 9]].tolist() == [3, 3, 20]
    assert len(np.unique(chosen)) == len(chosen)
    assert np.array_equal(chosen, balanced_subset(targets, 10, seed=0))
    one = balanced_subset(targets, 1, seed=0)  # 1% of 30 or 25 rounds to 0: at least one per class
    assert np.bincount(targets[one], minlength=10)[[5, 7, 9]].tolist() == [1, 1, 2]
    assert len(balanced_subset(targets, 100, seed=1)) == len(targets)


# ------------------------------------------------------------------------------ DataModule
def make(cfg, batch_size=32, n_workers=0, **kw) -> MVMRDataModule:
    dm = MVMRDataModule(cfg, batch_size, n_workers, **kw)
    dm.setup("fit")
    return dm


def test_digits_splits_are_stratified_disjoint_and_deterministic():
    dm = make(dataset_cfg("digits", val_fraction=0.2))
    train = dm.labelled_train_dataset.parts[0][0]
    val, labelled = positions(dm.val_dataset), positions(dm.labelled_train_dataset)
    assert np.intersect1d(val, labelled).size == 0 and len(val) + len(labelled) == len(train)
    quotas = 0.2 * np.bincount(train.targets, minlength=10)
    held = np.bincount(train.targets[val], minlength=10)
    assert len(val) == int(np.floor(0.2 * len(train) + 0.5))
    assert ((held == np.floor(quotas)) | (held == np.ceil(quotas))).all()
    assert np.array_equal(positions(dm.pretrain_dataset), labelled) and dm.num_pretrain_samples == len(labelled)
    assert np.array_equal(val, positions(make(dataset_cfg("digits", val_fraction=0.2)).val_dataset))
    assert len(dm.test_dataset) == 359 and dm.info.n_classes == 10 and dm.info.channels == 1


def test_loaders_yield_uint8_images_long_labels_and_their_own_indices():
    dm = make(dataset_cfg("digits", to_rgb=True), batch_size=50, eval_batch_size=64)
    train_loader = dm.train_dataloader()
    assert train_loader.drop_last and len(train_loader) == dm.num_pretrain_samples // 50
    batches = list(train_loader)
    seen = torch.cat([idx for _, _, idx in batches])
    assert len(seen.unique()) == len(seen) == 50 * len(batches)
    assert not torch.equal(seen[:50], torch.arange(50))  # shuffled
    for loader, dataset in (
        (dm.val_dataloader(), dm.val_dataset),
        (dm.test_dataloader(), dm.test_dataset),
        (dm.labelled_train_dataloader(shuffle=True, drop_last=False), dm.labelled_train_dataset),
    ):
        images, labels, index = next(iter(loader))
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 8, 8)
        assert labels.dtype == torch.long and index.dtype == torch.long and labels.shape == index.shape
        for j in (0, len(index) - 1):
            image, label, i = dataset[int(index[j])]
            assert i == index[j] and label == labels[j] and torch.equal(image, images[j])
    assert dm.val_dataloader().batch_size == 64 and not dm.val_dataloader().drop_last
    ordered = torch.cat([idx for _, _, idx in dm.labelled_train_dataloader(shuffle=False, drop_last=False)])
    assert torch.equal(ordered, torch.arange(len(dm.labelled_train_dataset)))
    dm.batch_size = 100  # what Lightning's batch-size finder does
    assert dm.train_dataloader().batch_size == 100 and dm.labelled_train_dataloader(True, True).batch_size == 100
    assert train_loader.num_workers == 0 and not train_loader.persistent_workers
    assert train_loader.pin_memory == torch.cuda.is_available()


def test_stl10_pretraining_set_appends_the_unlabelled_part(tmp_path):
    write_stl10(tmp_path, n_train=20, n_test=4, n_unlabeled=7)
    dm = make(dataset_cfg("stl10", tmp_path, val_fraction=0.1), batch_size=4)
    assert len(dm.val_dataset) == 2 and len(dm.labelled_train_dataset) == 18
    assert dm.num_pretrain_samples == 18 + 7
    targets = dm.pretrain_dataset.targets
    assert (targets[:18] >= 0).all() and targets[18:].tolist() == [-1] * 7
    image, label, index = dm.pretrain_dataset[20]
    extra = dm.pretrain_dataset.parts[1][0]
    assert label == -1 and index == 20 and torch.equal(image, extra[2][0])


def test_workers_persist_and_read_the_memmap(tmp_path):
    arrays = write_stl10(tmp_path, n_train=10, n_test=2, n_unlabeled=6)
    dm = make(dataset_cfg("stl10", tmp_path, val_fraction=0.0), batch_size=16, n_workers=2)
    loader = dm.pretrain_dataloader(shuffle=False, drop_last=False)
    assert loader.persistent_workers and loader.num_workers == 2
    images, labels, index = next(iter(loader))
    assert index.tolist() == list(range(16)) and labels[10:].tolist() == [-1] * 6
    assert torch.equal(images[13], torch.from_numpy(arrays["unlabeled_images"][3]).permute(2, 0, 1))


def test_percentage_keeps_a_balanced_deterministic_subset_disjoint_from_val(tmp_path):
    write_cifar10(tmp_path, n_per_batch=40, n_test=10)  # 200 train images, 20 per class
    cfg = dataset_cfg("cifar10", tmp_path, val_fraction=0.1, percentage=25)
    dm = make(cfg)
    train = dm.labelled_train_dataset.parts[0][0]
    labelled, val = positions(dm.labelled_train_dataset), positions(dm.val_dataset)
    # per class: 20 -> 2 held out for val, 25% of the remaining 18 -> round(4.5) = 5
    assert np.bincount(train.targets[val]).tolist() == [2] * 10
    assert np.bincount(train.targets[labelled]).tolist() == [5] * 10
    assert len(np.unique(labelled)) == 50 and np.intersect1d(labelled, val).size == 0
    assert np.array_equal(labelled, positions(make(cfg).labelled_train_dataset))
    assert not np.array_equal(labelled, positions(make(cfg, seed=1).labelled_train_dataset))
    assert np.array_equal(positions(dm.pretrain_dataset), labelled)  # pretraining set = labelled train (+ extra)


def test_split_file_selects_listed_images_and_val_comes_from_the_rest(tmp_path):
    files = write_image_folder(tmp_path, classes=("a", "b"), per_class=5, splits=("train", "test"), size=(12, 12))
    split_file = tmp_path / "split.txt"
    split_file.write_text("img0.png\nb/img3.png\n")  # a/img0.png and b/img0.png: ambiguous
    cfg = dataset_cfg("image_folder", tmp_path, load_size=8, val_fraction=0.25, split_file=str(split_file))
    with pytest.raises(DataError) as err:
        make(cfg)
    assert "line 1" in str(err.value) and "matches 2 train images" in str(err.value) and "\n" not in str(err.value)
    split_file.write_text("# my 3 labels\na/img0.png\nb/img3.png\n\ntrain/a/img4.png\n")
    dm = make(cfg)
    names = dm.labelled_train_dataset.parts[0][0].names
    chosen = [names[p] for p in positions(dm.labelled_train_dataset)]
    assert chosen == [files["train"][i].as_posix() for i in (0, 4, 8)]
    val = positions(dm.val_dataset)
    assert np.intersect1d(val, positions(dm.labelled_train_dataset)).size == 0
    assert len(val) == 2  # 25% of the 3 unlisted "a" images (0.75 -> 1) and of the 4 unlisted "b" images (1)
    split_file.write_text("a/img0.png\nc/img9.png\n")
    with pytest.raises(DataError) as err:
        make(cfg)
    assert "'c/img9.png' matches no train image" in str(err.value)


def test_split_file_lists_indices_for_array_datasets(tmp_path):
    split_file = tmp_path / "split.txt"
    split_file.write_text("0\n17\n17\n1000\n")
    dm = make(dataset_cfg("digits", val_fraction=0.1, split_file=str(split_file)))
    assert positions(dm.labelled_train_dataset).tolist() == [0, 17, 1000]
    assert np.intersect1d(positions(dm.val_dataset), [0, 17, 1000]).size == 0
    with pytest.raises(ConfigError):
        make(dataset_cfg("digits", split_file=str(split_file), percentage=10))
    split_file.write_text("99999\n")
    with pytest.raises(DataError):
        make(dataset_cfg("digits", split_file=str(split_file)))


def test_flat_folder_pretrains_on_everything_and_has_empty_val_and_test(tmp_path):
    write_flat_folder(tmp_path, n=6)
    dm = make(dataset_cfg("image_folder", tmp_path, load_size=16), batch_size=4)
    assert dm.num_pretrain_samples == 6 and len(dm.val_dataset) == 0 and len(dm.labelled_train_dataset) == 0
    images, labels, index = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [-1] * 4
    assert len(dm.val_dataloader()) == 0 and len(dm.test_dataloader()) == 0


def test_small_datasets_still_give_one_batch_per_epoch(tmp_path):
    write_flat_folder(tmp_path, n=3)
    dm = make(dataset_cfg("image_folder", tmp_path, load_size=8), batch_size=8)
    assert len(dm.train_dataloader()) == 1


def test_info_and_sizes_set_up_lazily():
    dm = MVMRDataModule(dataset_cfg("digits"), 16, 0)
    assert dm.info.n_classes == 10 and dm.num_pretrain_samples > 0


# ------------------------------------------------------------------ the epoch-seeded sampler under DDP
def test_sampler_on_one_process_is_the_epoch_seeded_permutation():
    from mvmr.data.datamodule import EpochSeededSampler

    sampler = EpochSeededSampler(10, seed=3)
    sampler.set_epoch(2)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003 + 2)).tolist()
    assert list(sampler) == expected and len(sampler) == 10


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (10, 3), (2, 4)])
def test_sampler_shards_like_distributed_sampler(n, world):
    """Rank r takes positions r, r + R, ... of the permutation padded with its own first indices (torch's
    DistributedSampler applied to the permutation): every index is seen, each rank gets ceil(n / R)."""
    from mvmr.data.datamodule import EpochSeededSampler

    full = EpochSeededSampler(n, seed=0, num_replicas=1, rank=0)
    full.set_epoch(1)
    order = list(full)
    padded = (order * world)[: world * -(-n // world)]
    shards = []
    for rank in range(world):
        sampler = EpochSeededSampler(n, seed=0, num_replicas=world, rank=rank)
        sampler.set_epoch(1)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1]) == -(-n // world)
        assert shards[-1] == padded[rank::world]
    assert set().union(*shards) == set(range(n))


def test_sampler_resume_skips_this_ranks_first_indices_only_in_that_epoch():
    from mvmr.data.datamodule import EpochSeededSampler

    for rank in range(2):
        plain = EpochSeededSampler(20, seed=1, num_replicas=2, rank=rank)
        resumed = EpochSeededSampler(20, seed=1, num_replicas=2, rank=rank, resume_at=(1, 4))
        for epoch in (0, 1, 2):
            plain.set_epoch(epoch)
            resumed.set_epoch(epoch)
            assert list(resumed) == (list(plain)[4:] if epoch == 1 else list(plain))
        assert len(resumed) == len(plain) == 10


def test_lightning_keeps_the_sampler_under_ddp_instead_of_wrapping_it():
    """Lightning wraps any sampler that is not a DistributedSampler (DistributedSamplerWrapper indexes the
    sampler's list by position, so a resumed, shorter epoch would fail); ours must be left as it is."""
    from types import SimpleNamespace

    from pytorch_lightning.trainer.connectors.data_connector import _DataConnector
    from torch.utils.data import DataLoader, RandomSampler

    from mvmr.data.datamodule import EpochSeededSampler

    connector = _DataConnector.__new__(_DataConnector)
    connector.trainer = SimpleNamespace(
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=True, is_distributed=True)
    )
    data = list(range(8))
    assert connector._requires_distributed_sampler(DataLoader(data, sampler=RandomSampler(data)))  # the check works
    ours = EpochSeededSampler(8, seed=0, num_replicas=2, rank=1)
    assert not connector._requires_distributed_sampler(DataLoader(data, sampler=ours))
