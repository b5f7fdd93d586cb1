"""The two dataset classes, what a dataset is known by (:class:`DatasetInfo`), the
:data:`DATASETS` registry that :func:`load_dataset` looks names up in, and the defender's
clean split (:func:`defender_split`).

:class:`ImageTensorDataset` holds a whole split in memory as uint8 (N, C, H, W);
:class:`ImageFileDataset` keeps a list of files and reads each when asked. Both hand out
float32 images in [0, 1]: one (C, H, W) from ``ds[i]``, a batch (B, C, H, W) from ``get_batch``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .. import validation as check
from ..errors import NgfkitError
from ..registry import Registry
from .files import image_to_tensor, read_image, resize_center_crop
from .locations import SYSTEM_DATA_DIRS

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of ngfkit needs to know about a dataset without loading it."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) of the images a loader hands out
    mean: tuple[float, ...]  # per channel, for the model's Normalize layer
    std: tuple[float, ...]
    default_arch: str
    class_names: tuple[str, ...] | None = None  # for figures; None: classes are shown by index

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names else str(index)


IndexLike = Union[Tensor, Sequence[int], np.ndarray, range]


def _as_index(indices: IndexLike) -> Tensor:
    """Indices (list, range, array, long or bool tensor) -> int64 tensor (K,) on the CPU."""
    if isinstance(indices, range):
        indices = list(indices)
    idx = torch.as_tensor(indices).cpu()
    if idx.dtype == torch.bool:
        return idx.nonzero().flatten()
    return idx.to(torch.int64).flatten()


class ImageTensorDataset(Dataset):
    """Whole split in memory: images uint8 (N, C, H, W), labels int64 (N,)."""

    def __init__(self, images: Tensor, labels: Tensor, info: DatasetInfo):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8:
            raise NgfkitError(f"images must be uint8 (0..255), got {images.dtype}; for floats in [0, 1] pass "
                              f"(images * 255).round().to(torch.uint8)")
        check.image_batch(images, "images", info.image_shape)
        labels = check.labels(labels, "labels", info.num_classes)
        if labels.shape != (images.shape[0],):
            raise NgfkitError(f"labels must have shape ({images.shape[0]},), one per image, got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.info = info

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """-> (float32 (C, H, W) in [0, 1], label)."""
        return self.images[i].float().div_(255), int(self.labels[i])

    def get_batch(self, indices: IndexLike) -> tuple[Tensor, Tensor]:
        """-> (float32 (B, C, H, W) in [0, 1], int64 (B,)); much faster than B calls of ``[i]``."""
        idx = _as_index(indices)
        return self.images[idx].float().div_(255), self.labels[idx]

    def subset(self, indices: IndexLike) -> "ImageTensorDataset":
        """A new in-memory dataset holding copies of the given rows."""
        idx = _as_index(indices)
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.info)

    @property
    def targets(self) -> Tensor:
        """int64 (N,)."""
        return self.labels


class ImageFileDataset(Dataset):
    """Files on disk (ImageNet-size data): each item is opened with PIL, converted to RGB (or L
    for one channel), its shorter side resized to ``resize`` and centre-cropped to
    ``info.image_shape``.

    ``resize`` defaults to the larger of the target height/width, i.e. no extra margin.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], info: DatasetInfo, resize: int | None = None):
        channels, height, width = info.image_shape
        if channels not in (1, 3):
            raise ValueError(f"image files can be read as 1 or 3 channels, not {channels}")
        self.samples: list[tuple[str, int]] = [(str(p), int(y)) for p, y in samples]
        self.info = info
        self.resize = max(height, width) if resize is None else int(resize)
        if self.resize < max(height, width):
            raise ValueError(f"resize={self.resize} is smaller than the crop {height}x{width}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """-> (float32 (C, H, W) in [0, 1], label)."""
        path, label = self.samples[i]
        channels, height, width = self.info.image_shape
        img = read_image(path, "RGB" if channels == 3 else "L")
        img = resize_center_crop(img, self.resize, height, width)
        return image_to_tensor(img).float().div_(255), label

    def get_batch(self, indices: IndexLike) -> tuple[Tensor, Tensor]:
        """-> (float32 (B, C, H, W) in [0, 1], int64 (B,)); reads the files one by one."""
        items = [self[int(i)] for i in _as_index(indices)]
        if not items:
            return torch.empty((0, *self.info.image_shape)), torch.empty(0, dtype=torch.int64)
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)

    def subset(self, indices: IndexLike) -> "ImageFileDataset":
        """A new dataset over the given rows (no files are read)."""
        return ImageFileDataset([self.samples[int(i)] for i in _as_index(indices)], self.info, self.resize)

    @property
    def targets(self) -> Tensor:
        """int64 (N,)."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)


LoadedDataset = Union[ImageTensorDataset, ImageFileDataset]
LoaderFn = Callable[[Union[Path, None], str, bool], LoadedDataset]


@dataclass(frozen=True)
class DatasetEntry:
    """A registry entry: the dataset's :class:`DatasetInfo` plus its loader.

    Calling the entry calls the loader: ``entry(root, split, download)``, where ``root`` is the
    user's explicit folder or None (then the loader searches the usual places).
    """

    info: DatasetInfo
    load: LoaderFn

    def __call__(self, root: Path | None, split: str, download: bool) -> LoadedDataset:
        return self.load(root, split, download)


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(info: DatasetInfo, system_dirs: Sequence[Path] = ()) -> Callable[[LoaderFn], LoaderFn]:
    """Decorator: register ``fn(root: Path | None, split, download) -> dataset`` under ``info.name``.

    ``system_dirs``: folders where a system package installs the dataset; they are searched
    (see :data:`~ngfkit.data.locations.SYSTEM_DATA_DIRS`) after ``NGFKIT_DATA``.
    """

    def add(fn: LoaderFn) -> LoaderFn:
        DATASETS.register(info.name)(DatasetEntry(info, fn))
        if system_dirs:
            SYSTEM_DATA_DIRS[info.name] = tuple(system_dirs)
        return fn

    return add


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = False
) -> LoadedDataset:
    """Load split "train" or "test" of a registered dataset (see
    :func:`~ngfkit.data.locations.find_dataset_dir` for where it looks). Every problem the user
    can fix raises a one-line :class:`NgfkitError`."""
    entry = DATASETS.get(name)
    if split not in SPLITS:
        raise NgfkitError(f"unknown split {split!r} for dataset {name!r}; choose one of: {', '.join(SPLITS)}")
    return entry(Path(root).expanduser() if root is not None else None, split, download)


def dataset_info(name: str) -> DatasetInfo:
    """The dataset's :class:`DatasetInfo`, without touching the disk."""
    return DATASETS.get(name).info


def defender_split(num_train: int, clean_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded split of training indices into (attacker_indices, clean_indices), both sorted int64.

    The defender's clean set is held out of the attacker's (poisoned) training data, so it is
    disjoint from every poisoned image. Clean set size = max(1, round(clean_fraction * num_train)).
    """
    if not 0.0 < clean_fraction < 1.0:
        raise NgfkitError(f"clean fraction must be strictly between 0 and 1, got {clean_fraction}")
    num_clean = max(1, round(clean_fraction * num_train))
    if num_clean >= num_train:
        raise NgfkitError(
            f"a clean fraction of {clean_fraction} of {num_train} training images leaves none for the attacker; "
            "use a smaller fraction or more training data"
        )
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(num_train, generator=generator)
    return perm[num_clean:].sort().values, perm[:num_clean].sort().values
