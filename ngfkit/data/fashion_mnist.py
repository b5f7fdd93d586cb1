"""Fashion-MNIST: 10 classes of 28x28 grey clothing images, read whole into memory as uint8
(N, 1, 28, 28) from the four idx files (gzip or plain), 60000 train and 10000 test.

Found in Debian's package dataset-fashion-mnist (:data:`DEBIAN_DIR`) or in a folder of the
idx files (torchvision's FashionMNIST/raw/ layout too); downloaded by torchvision.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .base import DatasetInfo, ImageTensorDataset, register_dataset
from .files import corrupt, first_line
from .locations import find_dataset_dir


FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    num_classes=10,
    image_shape=(1, 28, 28),
    mean=(0.2860,),
    std=(0.3530,),
    default_arch="smallcnn",
    class_names=("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot"),
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_FIX = "delete it and download it again (--download), or reinstall dataset-fashion-mnist"
_IDX_IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # where apt-get install dataset-fashion-mnist puts it


def _idx_file(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path, magic: int, fix: str = _FASHION_FIX) -> np.ndarray:
    """Read an MNIST idx file of unsigned bytes (gzip or plain) -> uint8 array of the stored shape."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise corrupt(path, f"readable gzip file ({first_line(exc)})", fix) from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise corrupt(path, f"idx file with magic number {magic} (found {found})", fix)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) != header + int(np.prod(dims)):
        need = header + int(np.prod(dims))
        raise corrupt(path, f"complete idx file (shape {dims} needs {need} bytes, has {len(raw)})", fix)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def locator(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        # torchvision's download puts the files in FashionMNIST/raw/
        for sub in (folder, folder / "FashionMNIST" / "raw"):
            if all(_idx_file(sub, stem) is not None for stem in _FASHION_FILES[split]):
                return sub
        return None

    return locate


#: a mirror of the four .gz files (a URL ending in /) used instead of torchvision's, e.g. a local one
MIRROR_ENV = "NGFKIT_FASHION_MNIST_MIRROR"


def fetch(target: Path) -> None:
    """Download the four files into ``target/FashionMNIST/raw`` (torchvision's layout): from
    ``$NGFKIT_FASHION_MNIST_MIRROR`` when set, else with torchvision (md5-checked)."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(target), train=True, download=True)
        return
    import urllib.request

    from ..utils import atomic_path

    # torchvision's md5s are of the upstream gzip bytes, which a re-compressed copy (Debian's) does
    # not share; read_idx's magic-number and size checks guard what is read instead
    raw = target / "FashionMNIST" / "raw"
    for stem in (stem for pair in _FASHION_FILES.values() for stem in pair):
        url = f"{mirror.rstrip('/')}/{stem}.gz"
        print(f"ngfkit: downloading {url} (the Fashion-MNIST mirror in ${MIRROR_ENV})", flush=True)
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(raw / f"{stem}.gz") as tmp:
            tmp.write_bytes(response.read())


@register_dataset(FASHION_MNIST, system_dirs=(DEBIAN_DIR,))
def load(root: Path | None, split: str, download: bool) -> ImageTensorDataset:
    """The split in memory: images uint8 (N, 1, 28, 28), labels int64 (N,)."""
    folder = find_dataset_dir(
        FASHION_MNIST.name,
        "Fashion-MNIST",
        root,
        download,
        locator(split),
        "install Debian's package (apt-get install dataset-fashion-mnist), pass data_root=DIR "
        "(CLI: --data-root DIR), or allow a download with download=True (CLI: --download)",
        fetch,
    )
    image_stem, label_stem = _FASHION_FILES[split]
    image_path, label_path = _idx_file(folder, image_stem), _idx_file(folder, label_stem)
    assert image_path is not None and label_path is not None  # located above
    images = read_idx(image_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, _IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise corrupt(image_path, f"Fashion-MNIST image file (images are {images.shape[1:]}, not 28x28)", _FASHION_FIX)
    if labels.shape[0] != images.shape[0]:
        why = f"label file for {image_path.name} ({labels.shape[0]} labels, {images.shape[0]} images)"
        raise corrupt(label_path, why, _FASHION_FIX)
    if labels.size and labels.max() >= FASHION_MNIST.num_classes:
        raise corrupt(label_path, f"Fashion-MNIST label file (label {labels.max()} >= 10)", _FASHION_FIX)
    return ImageTensorDataset(
        torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64), FASHION_MNIST
    )
