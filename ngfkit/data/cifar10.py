"""CIFAR-10: 10 classes of 32x32 colour photos, read whole into memory as uint8 (N, 3, 32, 32)
from the python batches in cifar-10-batches-py/ (50000 train, 10000 test).

The batches are pickles; they are unpickled with only numpy's array globals allowed, so a
tampered file cannot run code. Downloaded (with md5 check) by torchvision's downloader.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .base import DatasetInfo, ImageTensorDataset, register_dataset
from .files import corrupt, first_line
from .locations import find_dataset_dir


CIFAR10 = DatasetInfo(
    name="cifar10",
    num_classes=10,
    image_shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    default_arch="preact-resnet18",
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_FIX = "delete cifar-10-batches-py and download it again (--download)"

# The batches are pickled numpy arrays; rebuilding one needs exactly these globals. Anything else
# in a pickle could run code, so it is refused. numpy moved _reconstruct between versions.
_NUMPY_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 (N, 3072), int64 (N,))."""
    try:
        with path.open("rb") as f:
            # latin1: the official batches were pickled by Python 2 (str keys and array bytes)
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # a damaged pickle can raise almost any exception type
        raise corrupt(path, f"CIFAR-10 batch ({type(exc).__name__}: {first_line(exc)})", _CIFAR_FIX) from None
    if not isinstance(entry, dict):
        raise corrupt(path, "CIFAR-10 batch (not a dict)", _CIFAR_FIX)
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise corrupt(path, "CIFAR-10 batch (no uint8 'data' array of shape (N, 3072))", _CIFAR_FIX)
    try:
        label_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise corrupt(path, "CIFAR-10 batch (bad 'labels')", _CIFAR_FIX) from None
    if label_arr.shape[0] != data.shape[0] or (label_arr.size and (label_arr.min() < 0 or label_arr.max() >= 10)):
        raise corrupt(path, "CIFAR-10 batch ('labels' do not match 'data')", _CIFAR_FIX)
    return data, label_arr


def locator(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        for sub in (folder / "cifar-10-batches-py", folder):
            if all((sub / f).is_file() for f in _CIFAR_FILES[split]):
                return sub
        return None

    return locate


def fetch(target: Path) -> None:
    # Only torchvision's download + md5 check; its loader would unpickle without restrictions.
    from torchvision.datasets import CIFAR10 as TvCIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(TvCIFAR10.url, str(target), filename=TvCIFAR10.filename, md5=TvCIFAR10.tgz_md5)


@register_dataset(CIFAR10)
def load(root: Path | None, split: str, download: bool) -> ImageTensorDataset:
    """The split in memory: images uint8 (N, 3, 32, 32), labels int64 (N,)."""
    folder = find_dataset_dir(
        CIFAR10.name,
        "CIFAR-10",
        root,
        download,
        locator(split),
        "pass --data-root DIR (the folder holding cifar-10-batches-py/), or allow a download with --download",
        fetch,
    )
    batches = [_read_cifar_batch(folder / f) for f in _CIFAR_FILES[split]]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    # each row is 1024 red, then 1024 green, then 1024 blue values, rows of 32 pixels
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    return ImageTensorDataset(images, torch.from_numpy(labels), CIFAR10)
