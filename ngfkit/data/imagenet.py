"""ImageNet (ILSVRC2012): 1000 classes, left on disk as a list of files
(:class:`~ngfkit.data.base.ImageFileDataset`): shorter side resized to 256, centre crop
float32 (3, 224, 224).

Expects train/<wnid>/ and val/<wnid>/ class folders ("test" is val/); labels are the sorted
folder names. ngfkit cannot download it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import NgfkitError
from .base import DatasetInfo, ImageFileDataset, register_dataset
from .files import image_files
from .locations import find_dataset_dir


IMAGENET = DatasetInfo(
    name="imagenet",
    num_classes=1000,
    image_shape=(3, 224, 224),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    default_arch="resnet18",
)
_IMAGENET_RESIZE = 256  # shorter side before the 224 centre crop, as in the PyTorch ImageNet example
_IMAGENET_DIRS = {"train": "train", "test": "val"}
_IMAGENET_LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, val sorted into class folders"


def _class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def locator(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        return folder if (folder / _IMAGENET_DIRS[split]).is_dir() else None

    return locate


@register_dataset(IMAGENET)
def load(root: Path | None, split: str, download: bool) -> ImageFileDataset:
    """The split as a list of files; items float32 (3, 224, 224). Labels index the sorted class folders."""
    base = find_dataset_dir(
        IMAGENET.name,
        "ImageNet",
        root,
        download,
        locator(split),
        f"ngfkit cannot download it; get ILSVRC2012 from image-net.org, lay it out as {_IMAGENET_LAYOUT} "
        "(as the PyTorch ImageNet example expects) and pass --data-root DIR",
    )
    split_dir = base / _IMAGENET_DIRS[split]
    classes = _class_folders(split_dir)
    if not classes:
        raise NgfkitError(f"no class folders in {split_dir}; ImageNet must be laid out as {_IMAGENET_LAYOUT}")
    if len(classes) > IMAGENET.num_classes:
        raise NgfkitError(f"{split_dir} has {len(classes)} class folders, ImageNet has {IMAGENET.num_classes}")
    other = base / _IMAGENET_DIRS["test" if split == "train" else "train"]
    # labels come from sorted folder names, so both splits must have the same folders
    if other.is_dir() and _class_folders(other) != classes:
        raise NgfkitError(
            f"{split_dir} and {other} have different class folders; ImageNet must be laid out as {_IMAGENET_LAYOUT}"
        )
    samples: list[tuple[str, int]] = []
    for label, wnid in enumerate(classes):
        samples += [(str(p), label) for p in image_files(split_dir / wnid, (".jpeg", ".jpg", ".png"))]
    if not samples:
        raise NgfkitError(
            f"no images in the class folders of {split_dir}; ImageNet must be laid out as {_IMAGENET_LAYOUT}"
        )
    return ImageFileDataset(samples, IMAGENET, resize=_IMAGENET_RESIZE)
