"""Datasets: where to find them on disk, how to read them, and the defender's clean split.

Small datasets (Fashion-MNIST, CIFAR-10, GTSRB) are read whole into memory as uint8 tensors
(N, C, H, W) (:class:`ImageTensorDataset`); ImageNet-size ones stay on disk as a list of files
(:class:`ImageFileDataset`). Both hand out float32 images in [0, 1], (C, H, W) per item and
(B, C, H, W) per batch; normalisation is the model's job (see :attr:`DatasetInfo.mean` /
:attr:`DatasetInfo.std`).

Each dataset is an entry of :data:`DATASETS`, registered by its own module (:mod:`.fashion_mnist`,
:mod:`.cifar10`, :mod:`.gtsrb`, :mod:`.tiny_imagenet`, :mod:`.imagenet`); :func:`load_dataset`
looks the name up and the entry finds its files with :func:`find_dataset_dir`
(:mod:`.locations`), in this order: the explicit ``root``, the ``NGFKIT_DATA`` folder, a system
location (:data:`SYSTEM_DATA_DIRS`), an earlier download in the cache, and finally a torchvision
download when that is allowed. The classes, :class:`DatasetInfo` and the registry live in
:mod:`.base`, the shared file readers in :mod:`.files`.
"""
from __future__ import annotations

# Importing the dataset modules registers them in DATASETS.
from . import cifar10, fashion_mnist, gtsrb, imagenet, tiny_imagenet  # noqa: F401
from .base import (
    DATASETS,
    SPLITS,
    DatasetEntry,
    DatasetInfo,
    ImageFileDataset,
    ImageTensorDataset,
    IndexLike,
    LoadedDataset,
    LoaderFn,
    dataset_info,
    defender_split,
    load_dataset,
    register_dataset,
)
from .cifar10 import CIFAR10
from .fashion_mnist import FASHION_MNIST, read_idx
from .gtsrb import GTSRB
from .imagenet import IMAGENET
from .locations import SYSTEM_DATA_DIRS, candidate_dirs, download_dir, find_dataset_dir
from .tiny_imagenet import TINY_IMAGENET

__all__ = [
    "CIFAR10",
    "DATASETS",
    "FASHION_MNIST",
    "GTSRB",
    "IMAGENET",
    "SPLITS",
    "SYSTEM_DATA_DIRS",
    "TINY_IMAGENET",
    "DatasetEntry",
    "DatasetInfo",
    "ImageFileDataset",
    "ImageTensorDataset",
    "IndexLike",
    "LoadedDataset",
    "LoaderFn",
    "candidate_dirs",
    "dataset_info",
    "defender_split",
    "download_dir",
    "find_dataset_dir",
    "load_dataset",
    "read_idx",
    "register_dataset",
]
