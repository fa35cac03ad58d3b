"""Data: datasets (registry), the DataModule, and (views.py) the on-device view transforms."""

from mvmr.data.datamodule import IndexedSubset, MVMRDataModule
from mvmr.data.datasets import DATASETS, ArrayImageDataset, DatasetInfo, FileImageDataset, ImageDataset, build_dataset

__all__ = [
    "DATASETS",
    "ArrayImageDataset",
    "DatasetInfo",
    "FileImageDataset",
    "ImageDataset",
    "IndexedSubset",
    "MVMRDataModule",
    "build_dataset",
]
