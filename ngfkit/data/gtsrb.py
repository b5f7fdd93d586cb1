"""GTSRB (German Traffic Sign Recognition Benchmark): 43 classes of sign photos of varying size,
each resized to 32x32 and held in memory as uint8 (N, 3, 32, 32).

Train images are the .ppm files of GTSRB/Training/<class>/, test labels come from
GT-final_test.csv; downloaded by torchvision into gtsrb/.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import torch

from ..errors import NgfkitError
from .base import DatasetInfo, ImageTensorDataset, register_dataset
from .files import corrupt, first_line, image_files, load_images_resized
from .locations import find_dataset_dir


GTSRB = DatasetInfo(
    name="gtsrb",
    num_classes=43,
    image_shape=(3, 32, 32),
    mean=(0.3403, 0.3121, 0.3214),
    std=(0.2724, 0.2608, 0.2669),
    default_arch="preact-resnet18",
)
_GTSRB_FIX = "delete the gtsrb folder and download it again (--download)"


def locator(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        for base in (folder / "gtsrb", folder):
            if split == "train" and (base / "GTSRB" / "Training").is_dir():
                return base
            if (
                split == "test"
                and (base / "GTSRB" / "Final_Test" / "Images").is_dir()
                and (base / "GT-final_test.csv").is_file()
            ):
                return base
        return None

    return locate


def _gtsrb_train_samples(base: Path) -> list[tuple[Path, int]]:
    training = base / "GTSRB" / "Training"
    samples: list[tuple[Path, int]] = []
    for class_dir in sorted(p for p in training.iterdir() if p.is_dir()):
        if not class_dir.name.isdigit() or int(class_dir.name) >= GTSRB.num_classes:
            raise NgfkitError(f"unexpected folder {class_dir} in GTSRB training data (want 00000 .. 00042)")
        samples += [(path, int(class_dir.name)) for path in image_files(class_dir, (".ppm",))]
    return samples


def _gtsrb_test_samples(base: Path) -> list[tuple[Path, int]]:
    csv_path = base / "GT-final_test.csv"
    images = base / "GTSRB" / "Final_Test" / "Images"
    try:
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
        samples = [(images / row["Filename"], int(row["ClassId"])) for row in rows]
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as exc:
        why = f"GTSRB test label file ({type(exc).__name__}: {first_line(exc)})"
        raise corrupt(csv_path, why, _GTSRB_FIX) from None
    if any(not 0 <= label < GTSRB.num_classes for _, label in samples):
        raise corrupt(csv_path, "GTSRB test label file (ClassId outside 0 .. 42)", _GTSRB_FIX)
    return samples


def fetcher(split: str) -> Callable[[Path], None]:
    def fetch(target: Path) -> None:
        from torchvision.datasets import GTSRB as TvGTSRB

        TvGTSRB(str(target), split=split, download=True)  # downloads into target/gtsrb

    return fetch


@register_dataset(GTSRB)
def load(root: Path | None, split: str, download: bool) -> ImageTensorDataset:
    """The split in memory, every image resized to 32x32: images uint8 (N, 3, 32, 32), labels int64 (N,)."""
    base = find_dataset_dir(
        GTSRB.name,
        "GTSRB",
        root,
        download,
        locator(split),
        "pass --data-root DIR (the folder holding gtsrb/GTSRB/), or allow a download with --download",
        fetcher(split),
    )
    samples = _gtsrb_train_samples(base) if split == "train" else _gtsrb_test_samples(base)
    if not samples:
        raise NgfkitError(f"no GTSRB {split} images found under {base}; {_GTSRB_FIX}")
    _, height, width = GTSRB.image_shape
    images = load_images_resized([p for p, _ in samples], height, width)
    return ImageTensorDataset(images, torch.tensor([y for _, y in samples], dtype=torch.int64), GTSRB)
