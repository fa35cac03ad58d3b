"""The one DataModule behind every entry point: splits, semi-supervised subsets and loaders.

Every loader yields ``(images uint8 (B, C, H, W), labels long (B,), indices long (B,))``; an index is
the sample's position in that loader's dataset, stable across epochs (a key for per-sample caches).
Labels are -1 for unlabelled samples.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mvmr.data.datasets import (
    DatasetInfo,
    FileImageDataset,
    ImageDataset,
    balanced_subset,
    build_dataset,
    stratified_split,
)
from mvmr.data.loader_crops import decode_with_crops
from mvmr.data.views import LoaderCrops
from mvmr.errors import ConfigError, DataError
from mvmr.parallel import distributed_world


class IndexedSubset(Dataset):
    """Chosen positions of one or more datasets, concatenated; item i is (image, label, i), or with ``crops``
    (file datasets only) (image, label, i, crops uint8 (count, C, size, size)) cut from the whole image by the
    loader's worker (:func:`mvmr.data.loader_crops.decode_with_crops`)."""

    def __init__(self, parts: Sequence[tuple[ImageDataset, np.ndarray]], crops: LoaderCrops | None = None):
        if crops is not None and not all(isinstance(dataset, FileImageDataset) for dataset, _ in parts):
            raise ConfigError(
                "dataset.crops_in_loader needs image files (imagenet, image_folder); "
                "set dataset.crops_in_loader=false for this dataset"
            )
        self.crops = crops
        self.parts = [(dataset, np.asarray(positions, dtype=np.int64)) for dataset, positions in parts]
        self._ends = np.cumsum([len(positions) for _, positions in self.parts], dtype=np.int64)
        targets = [dataset.targets[positions] for dataset, positions in self.parts]
        self.targets = np.concatenate(targets) if targets else np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        part = int(np.searchsorted(self._ends, index, side="right"))
        dataset, positions = self.parts[part]
        start = int(self._ends[part - 1]) if part else 0
        position = int(positions[index - start])
        if self.crops is not None:
            image, crops = decode_with_crops(dataset.path(position), dataset.mode, dataset.load_size, self.crops)
            return image, int(dataset.targets[position]), index, crops
        image, label = dataset[position]
        return image, label, index


def read_split_file(path: str) -> list[str]:
    """Listed names, one per line (blank lines and '#' comments skipped)."""
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as err:
        raise DataError(f"dataset.split_file: cannot read '{path}' ({err.strerror})") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def positions_listed(path: str, dataset: ImageDataset) -> np.ndarray:
    """Sorted positions of the samples a split file lists: each line is a sample's name (an array dataset's
    "<index>") or the ending of its path (a file name, or a path relative to the split's folder)."""
    names = dataset.names
    by_basename: dict[str, list[int]] = defaultdict(list)
    for position, name in enumerate(names):
        by_basename[name.rsplit("/", 1)[-1]].append(position)
    listed = read_split_file(path)
    if not listed:
        raise DataError(f"dataset.split_file '{path}' lists no image; write one file name per line")
    positions = []
    for number, line in enumerate(listed, 1):
        entry = line.replace("\\", "/")
        matches = [
            p
            for p in by_basename.get(entry.rsplit("/", 1)[-1], [])
            if names[p] == entry or names[p].endswith("/" + entry.lstrip("/"))
        ]
        if len(matches) != 1:
            problem = "matches no train image" if not matches else f"matches {len(matches)} train images"
            fix = (
                "list file names, relative paths or, for array datasets, sample indices"
                if not matches
                else "use a longer relative path"
            )
            raise DataError(f"dataset.split_file '{path}' line {number}: {line!r} {problem}; {fix}")
        positions.append(matches[0])
    return np.unique(np.asarray(positions, dtype=np.int64))


class MVMRDataModule(pl.LightningDataModule):
    """Train/val/test splits of ``cfg_dataset`` and their loaders.

    - val: ``val_fraction`` of the labelled train split (stratified, ``seed``); never the test split.
    - labelled train: the rest, reduced by ``percentage`` (class-balanced) or to ``split_file``'s list
      (then val is drawn from the unlisted images).
    - pretraining set: labelled train (the reduced one when percentage / split_file is set) + unlabelled
      train samples (a flat image folder) + the dataset's extra unlabelled part (stl10), labels -1 where unknown.
    """

    def __init__(
        self, cfg_dataset: Any, batch_size: int, n_workers: int, seed: int = 0, eval_batch_size: int | None = None
    ):
        super().__init__()
        self.cfg = cfg_dataset
        self.batch_size = batch_size  # Lightning's batch-size finder changes this attribute
        self.eval_batch_size = eval_batch_size
        self.n_workers = n_workers
        self.seed = seed
        self._info: DatasetInfo | None = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples already seen) of a mid-epoch resume
        self.train_crops: LoaderCrops | None = None  # set by the pretraining module: x' cropped in the loader

    # ------------------------------------------------------------------ splits
    def setup(self, stage: str | None = None) -> None:
        """Build every split once (later calls do nothing)."""
        if self._info is not None:
            return
        train = build_dataset(self.cfg, "train")
        test = build_dataset(self.cfg, "test")
        extra = build_dataset(self.cfg, "extra_unlabeled")
        val_positions, labelled_positions = self._labelled_split(train)
        unlabelled_positions = np.flatnonzero(train.targets < 0)
        self.val_dataset = IndexedSubset([(train, val_positions)])
        self.labelled_train_dataset = IndexedSubset([(train, labelled_positions)])
        pretrain = [(train, np.union1d(labelled_positions, unlabelled_positions))]
        if extra is not None:
            pretrain.append((extra, np.arange(len(extra))))
        self.pretrain_dataset = IndexedSubset(pretrain)
        self.test_dataset = IndexedSubset([(test, np.arange(len(test)))] if test is not None else [])
        self._info = train.info

    def _labelled_split(self, train: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
        """(val positions, labelled-train positions) within the train split."""
        cfg = self.cfg
        if cfg.split_file and cfg.percentage is not None:
            raise ConfigError("dataset.percentage and dataset.split_file are both set; keep one of them")
        labelled = np.flatnonzero(train.targets >= 0)
        listed = positions_listed(cfg.split_file, train) if cfg.split_file else None
        if listed is not None and (train.targets[listed] < 0).any():
            raise DataError(
                f"dataset.split_file '{cfg.split_file}' lists unlabelled images; "
                f"list images of the labelled train split"
            )
        pool = labelled if listed is None else np.setdiff1d(labelled, listed)
        held, _ = stratified_split(train.targets[pool], cfg.val_fraction, self.seed)
        val = pool[held]
        if listed is not None:
            return val, listed
        rest = np.setdiff1d(labelled, val)
        if cfg.percentage is not None:
            rest = rest[balanced_subset(train.targets[rest], cfg.percentage, self.seed)]
        return val, rest

    @property
    def info(self) -> DatasetInfo:
        self.setup()
        return self._info

    @property
    def num_pretrain_samples(self) -> int:
        self.setup()
        return len(self.pretrain_dataset)

    @property
    def num_labelled_train_samples(self) -> int:
        self.setup()
        return len(self.labelled_train_dataset)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: IndexedSubset, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        self.setup()
        sampler = EpochSeededSampler(len(dataset), self.seed, resume_at=self._resume_at) if shuffle else None
        # a private generator: creating an iterator draws a worker base seed, which must not advance the global
        # RNG that the on-device views use (a resumed run re-creates iterators)
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=generator,
            drop_last=drop_last and len(dataset) >= batch_size,  # never an empty epoch
            num_workers=self.n_workers,
            persistent_workers=self.n_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def resume_within_epoch(self, epoch: int, batches_done: int) -> None:
        """Shuffled loaders built from now on start epoch ``epoch`` after its first ``batches_done`` batches
        (a run resumed from a checkpoint written in the middle of that epoch)."""
        self._resume_at = (epoch, batches_done * self.batch_size)

    def pretrain_dataloader(self, shuffle: bool, drop_last: bool) -> DataLoader:
        """The pretraining set (labels -1 where unknown)."""
        return self._loader(self.pretrain_dataset, self.batch_size, shuffle, drop_last)

    def train_dataloader(self) -> DataLoader:
        """The shuffled pretraining set; with ``train_crops`` its batches carry the loader's crops of x' as a 4th
        element (B, count, C, size, size)."""
        if self.train_crops is None:
            return self.pretrain_dataloader(shuffle=True, drop_last=True)
        self.setup()
        dataset = IndexedSubset(self.pretrain_dataset.parts, crops=self.train_crops)
        return self._loader(dataset, self.batch_size, shuffle=True, drop_last=True)

    def labelled_train_dataloader(self, shuffle: bool, drop_last: bool) -> DataLoader:
        return self._loader(self.labelled_train_dataset, self.batch_size, shuffle, drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.eval_batch_size or self.batch_size, False, False)

    def test_dataloader(self) -> DataLoader:
        """The test split (empty when the dataset has none, e.g. a flat image folder)."""
        return self._loader(self.test_dataset, self.eval_batch_size or self.batch_size, False, False)


class EpochSeededSampler(DistributedSampler):
    """A random permutation of ``range(n)`` drawn from (seed, epoch) alone, not from the global RNG: re-creating
    the iterator (as a resumed run does) replays the same order. Lightning calls ``set_epoch`` at each epoch start.

    Under DDP (``num_replicas`` > 1; by default read from the initialised process group) the permutation is
    padded with its own first indices to a multiple of ``num_replicas`` and rank r takes positions r, r + R, ...
    (``DistributedSampler``'s sharding). Being a ``DistributedSampler``, Lightning uses it as it is instead of
    wrapping it, so the sharding and the resume skip below stay in this one place.

    ``resume_at=(epoch, k)``: in that epoch, leave out this rank's first ``k`` indices (the batches it saw before
    a mid-epoch checkpoint); ``len`` stays the same so Lightning's batch count is unchanged.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        resume_at: tuple[int, int] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        world, this_rank = distributed_world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = this_rank if rank is None else rank
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.n, self.resume_at = n, resume_at

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        padding = self.total_size - self.n
        order += (order * (padding // max(self.n, 1) + 1))[:padding]
        order = order[self.rank : self.total_size : self.num_replicas]
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            order = order[self.resume_at[1] :]
        return iter(order)


class LabelledDataModule(MVMRDataModule):
    """The shared DataModule, training on the labelled (sub)set instead of the pretraining set."""

    def train_dataloader(self):
        n = len(self.labelled_train_dataloader(shuffle=False, drop_last=False).dataset)
        return self.labelled_train_dataloader(shuffle=True, drop_last=n > self.batch_size)
