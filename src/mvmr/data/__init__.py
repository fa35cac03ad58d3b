"""Data: datasets (registry), the DataModule, and (views.py) the on-device view transforms."""

from mvmr.data.datamodule import IndexedSubset, LabelledDataModule, MVMRDataModule
from mvmr.data.datasets import DATASETS, ArrayImageDataset, DatasetInfo, FileImageDataset, ImageDataset, build_dataset

__all__ = [
    "DATASETS",
    "ArrayImageDataset",
    "DatasetInfo",
    "FileImageDataset",
    "ImageDataset",
    "IndexedSubset",
    "LabelledDataModule",
    "MVMRDataModule",
    "build_dataset",
]
