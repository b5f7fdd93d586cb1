"""Tiny ImageNet: 200 classes of 64x64 colour images, left on disk as a list of files
(:class:`~ngfkit.data.base.ImageFileDataset`, items float32 (3, 64, 64)).

The folder is tiny-imagenet-200/ as unzipped from the official zip; "test" is its labelled val/
split. ngfkit cannot download it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import NgfkitError
from .base import DatasetInfo, ImageFileDataset, register_dataset
from .files import corrupt, first_line, image_files
from .locations import find_dataset_dir


TINY_IMAGENET = DatasetInfo(
    name="tiny-imagenet",
    num_classes=200,
    image_shape=(3, 64, 64),
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2770, 0.2691, 0.2821),
    default_arch="preact-resnet18",
)
_TINY_FIX = "download tiny-imagenet-200.zip from the official site (cs231n.stanford.edu) and unzip it again"


def locator(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        for base in (folder / "tiny-imagenet-200", folder):
            if (base / "wnids.txt").is_file() and (base / ("train" if split == "train" else "val")).is_dir():
                return base
        return None

    return locate


@register_dataset(TINY_IMAGENET)
def load(root: Path | None, split: str, download: bool) -> ImageFileDataset:
    """The split as a list of files; items float32 (3, 64, 64). Labels index the sorted wnids.txt."""
    base = find_dataset_dir(
        TINY_IMAGENET.name,
        "Tiny ImageNet",
        root,
        download,
        locator(split),
        "ngfkit cannot download it; get tiny-imagenet-200.zip from the official site (cs231n.stanford.edu), "
        "unzip it and pass --data-root DIR",
    )
    wnids_path = base / "wnids.txt"
    try:
        wnids = sorted({line.strip() for line in wnids_path.read_text().splitlines() if line.strip()})
    except (OSError, UnicodeDecodeError) as exc:
        raise corrupt(wnids_path, f"Tiny ImageNet class list ({first_line(exc)})", _TINY_FIX) from None
    if not wnids or len(wnids) > TINY_IMAGENET.num_classes:
        raise corrupt(wnids_path, f"Tiny ImageNet class list ({len(wnids)} classes, want 1 .. 200)", _TINY_FIX)
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    samples: list[tuple[str, int]] = []
    if split == "train":
        for wnid, label in class_index.items():
            folder = base / "train" / wnid / "images"
            if not folder.is_dir():
                raise NgfkitError(f"Tiny ImageNet folder {folder} is missing; {_TINY_FIX}")
            samples += [(str(p), label) for p in image_files(folder, (".jpeg", ".jpg", ".png"))]
    else:
        ann_path = base / "val" / "val_annotations.txt"
        try:
            lines = ann_path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise NgfkitError(f"cannot read {ann_path} ({first_line(exc)}); {_TINY_FIX}") from None
        for line in filter(str.strip, lines):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_index:
                raise corrupt(ann_path, f"Tiny ImageNet annotation file (bad line {line!r})", _TINY_FIX)
            samples.append((str(base / "val" / "images" / fields[0]), class_index[fields[1]]))
    if not samples:
        raise NgfkitError(f"no Tiny ImageNet {split} images found under {base}; {_TINY_FIX}")
    return ImageFileDataset(samples, TINY_IMAGENET)
