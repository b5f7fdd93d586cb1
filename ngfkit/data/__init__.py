"""Datasets: where to find them on disk, how to read them, and the defender's clean split.

Small datasets (Fashion-MNIST, CIFAR-10, GTSRB) are read whole into memory as uint8 tensors
(:class:`ImageTensorDataset`); ImageNet-size ones stay on disk as a list of files
(:class:`ImageFileDataset`). Both hand out float32 images in [0, 1]; normalisation is the
model's job (see :attr:`DatasetInfo.mean` / :attr:`DatasetInfo.std`).

Each dataset is an entry of :data:`DATASETS`; :func:`load_dataset` looks the name up and the
entry finds its files with :func:`find_dataset_dir`, in this order: the explicit ``root``, the
``NGFKIT_DATA`` folder, a system location (:data:`SYSTEM_DATA_DIRS`), an earlier download in the
cache, and finally a torchvision download when that is allowed.
"""
from __future__ import annotations

import csv
import gzip
import os
import pickle
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import NgfkitError
from ..registry import Registry

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
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if tuple(images.shape[1:]) != tuple(info.image_shape):
            raise ValueError(f"images are {tuple(images.shape[1:])}, {info.name} expects {info.image_shape}")
        labels = torch.as_tensor(labels).to(torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
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


def _read_image(path: Path | str, mode: str) -> Image.Image:
    """Open and decode one image file, converted to PIL ``mode`` ("RGB" or "L")."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except Exception as exc:  # PIL raises many types for bad files; all mean the same to the user
        raise NgfkitError(
            f"cannot read image {path} ({type(exc).__name__}: {_first_line(exc)}); "
            "the file is missing or corrupt, download the dataset again"
        ) from None


def _image_to_tensor(img: Image.Image) -> Tensor:
    """PIL image -> uint8 (C, H, W)."""
    arr = np.array(img, dtype=np.uint8)  # np.array, not asarray: torch wants a writable buffer
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _resize_center_crop(img: Image.Image, short_side: int, height: int, width: int) -> Image.Image:
    """Scale so the shorter side is ``short_side`` (bilinear), then cut the centre (height, width)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = short_side, max(short_side, int(short_side * h / w))
    else:
        new_w, new_h = max(short_side, int(short_side * w / h)), short_side
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    if (new_w, new_h) != (width, height):
        left = int(round((new_w - width) / 2.0))
        top = int(round((new_h - height) / 2.0))
        img = img.crop((left, top, left + width, top + height))
    return img


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
        img = _read_image(path, "RGB" if channels == 3 else "L")
        img = _resize_center_crop(img, self.resize, height, width)
        return _image_to_tensor(img).float().div_(255), label

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


def register_dataset(info: DatasetInfo) -> Callable[[LoaderFn], LoaderFn]:
    """Decorator: register ``fn(root: Path | None, split, download) -> dataset`` under ``info.name``."""

    def add(fn: LoaderFn) -> LoaderFn:
        DATASETS.register(info.name)(DatasetEntry(info, fn))
        return fn

    return add


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = False
) -> LoadedDataset:
    """Load split "train" or "test" of a registered dataset (see :func:`find_dataset_dir` for where
    it looks). Every problem the user can fix raises a one-line :class:`NgfkitError`."""
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


# ---------------------------------------------------------------------------------------------
# Finding the files

# Per-dataset folders installed by the system; a module constant so that tests can redirect it.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


def download_dir(name: str) -> Path:
    """Where downloads of ``name`` go: ``$NGFKIT_CACHE/data/<name>``, else ``~/.cache/ngfkit/data/<name>``."""
    base = os.environ.get("NGFKIT_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "ngfkit") / "data" / name


def candidate_dirs(name: str, root: Path | None) -> list[Path]:
    """Folders to search, best first. An explicit ``root`` is the only place searched, so that a
    wrong ``--data-root`` is reported instead of silently replaced by another copy."""
    if root is not None:
        bases = [root / name, root]
    else:
        bases = []
        env = os.environ.get("NGFKIT_DATA")
        if env:
            bases += [Path(env).expanduser() / name, Path(env).expanduser()]
        bases += list(SYSTEM_DATA_DIRS.get(name, ()))
        bases.append(download_dir(name))
    unique: list[Path] = []
    for d in bases:
        if d not in unique:
            unique.append(d)
    return unique


def find_dataset_dir(
    name: str,
    title: str,
    root: Path | None,
    download: bool,
    locate: Callable[[Path], Path | None],
    fixes: str,
    fetch: Callable[[Path], None] | None = None,
) -> Path:
    """Search :func:`candidate_dirs` with ``locate`` (folder -> the dataset folder inside it, or
    None); failing that, ``fetch`` into ``root`` or :func:`download_dir` when ``download`` is set.
    Raises a one-line NgfkitError naming where it looked and ``fixes``."""
    looked = candidate_dirs(name, root)
    for folder in looked:
        if folder.is_dir() and (found := locate(folder)) is not None:
            return found
    if download and fetch is not None:
        target = root if root is not None else download_dir(name)
        try:
            target.mkdir(parents=True, exist_ok=True)
            fetch(target)
        except NgfkitError:
            raise
        except Exception as exc:  # network, disk and checksum failures all get the same advice
            raise NgfkitError(
                f"downloading {title} into {target} failed ({type(exc).__name__}: {_first_line(exc)}); "
                "check the network connection, or fetch the files yourself and pass --data-root DIR"
            ) from None
        found = locate(target)
        if found is not None:
            return found
        raise NgfkitError(f"downloaded {title} into {target}, but its files are not where expected; {fixes}")
    raise NgfkitError(f"{title} not found (looked in {', '.join(str(d) for d in looked)}): {fixes}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def _corrupt(path: Path, why: str, fix: str) -> NgfkitError:
    return NgfkitError(f"{path} is corrupt or not a {why}; {fix}")


def _load_images_resized(paths: Sequence[Path | str], height: int, width: int) -> Tensor:
    """Read RGB files and resize each to (height, width) -> uint8 (N, 3, H, W)."""

    def one(path: Path | str) -> np.ndarray:
        img = _read_image(path, "RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        return np.array(img, dtype=np.uint8)

    if not paths:
        return torch.empty((0, 3, height, width), dtype=torch.uint8)
    # PIL releases the GIL while decoding and resizing, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(one, paths, chunksize=64))
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))


def _image_files(folder: Path, extensions: Iterable[str]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in exts)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST

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
        raise _corrupt(path, f"readable gzip file ({_first_line(exc)})", fix) from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise _corrupt(path, f"idx file with magic number {magic} (found {found})", fix)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) != header + int(np.prod(dims)):
        need = header + int(np.prod(dims))
        raise _corrupt(path, f"complete idx file (shape {dims} needs {need} bytes, has {len(raw)})", fix)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _locate_fashion(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        # torchvision's download puts the files in FashionMNIST/raw/
        for sub in (folder, folder / "FashionMNIST" / "raw"):
            if all(_idx_file(sub, stem) is not None for stem in _FASHION_FILES[split]):
                return sub
        return None

    return locate


def _fetch_fashion(target: Path) -> None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(target), train=True, download=True)


@register_dataset(FASHION_MNIST)
def _load_fashion_mnist(root: Path | None, split: str, download: bool) -> ImageTensorDataset:
    folder = find_dataset_dir(
        "fashion-mnist",
        "Fashion-MNIST",
        root,
        download,
        _locate_fashion(split),
        "install Debian's package (apt-get install dataset-fashion-mnist), pass --data-root DIR, "
        "or allow a download with --download",
        _fetch_fashion,
    )
    image_stem, label_stem = _FASHION_FILES[split]
    image_path, label_path = _idx_file(folder, image_stem), _idx_file(folder, label_stem)
    assert image_path is not None and label_path is not None  # located above
    images = read_idx(image_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, _IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise _corrupt(image_path, f"Fashion-MNIST image file (images are {images.shape[1:]}, not 28x28)", _FASHION_FIX)
    if labels.shape[0] != images.shape[0]:
        why = f"label file for {image_path.name} ({labels.shape[0]} labels, {images.shape[0]} images)"
        raise _corrupt(label_path, why, _FASHION_FIX)
    if labels.size and labels.max() >= FASHION_MNIST.num_classes:
        raise _corrupt(label_path, f"Fashion-MNIST label file (label {labels.max()} >= 10)", _FASHION_FIX)
    return ImageTensorDataset(
        torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64), FASHION_MNIST
    )


# ---------------------------------------------------------------------------------------------
# CIFAR-10

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
        raise _corrupt(path, f"CIFAR-10 batch ({type(exc).__name__}: {_first_line(exc)})", _CIFAR_FIX) from None
    if not isinstance(entry, dict):
        raise _corrupt(path, "CIFAR-10 batch (not a dict)", _CIFAR_FIX)
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _corrupt(path, "CIFAR-10 batch (no uint8 'data' array of shape (N, 3072))", _CIFAR_FIX)
    try:
        label_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise _corrupt(path, "CIFAR-10 batch (bad 'labels')", _CIFAR_FIX) from None
    if label_arr.shape[0] != data.shape[0] or (label_arr.size and (label_arr.min() < 0 or label_arr.max() >= 10)):
        raise _corrupt(path, "CIFAR-10 batch ('labels' do not match 'data')", _CIFAR_FIX)
    return data, label_arr


def _locate_cifar10(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        for sub in (folder / "cifar-10-batches-py", folder):
            if all((sub / f).is_file() for f in _CIFAR_FILES[split]):
                return sub
        return None

    return locate


def _fetch_cifar10(target: Path) -> None:
    # Only torchvision's download + md5 check; its loader would unpickle without restrictions.
    from torchvision.datasets import CIFAR10 as TvCIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(TvCIFAR10.url, str(target), filename=TvCIFAR10.filename, md5=TvCIFAR10.tgz_md5)


@register_dataset(CIFAR10)
def _load_cifar10(root: Path | None, split: str, download: bool) -> ImageTensorDataset:
    folder = find_dataset_dir(
        "cifar10",
        "CIFAR-10",
        root,
        download,
        _locate_cifar10(split),
        "pass --data-root DIR (the folder holding cifar-10-batches-py/), or allow a download with --download",
        _fetch_cifar10,
    )
    batches = [_read_cifar_batch(folder / f) for f in _CIFAR_FILES[split]]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    # each row is 1024 red, then 1024 green, then 1024 blue values, rows of 32 pixels
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    return ImageTensorDataset(images, torch.from_numpy(labels), CIFAR10)


# ---------------------------------------------------------------------------------------------
# GTSRB

GTSRB = DatasetInfo(
    name="gtsrb",
    num_classes=43,
    image_shape=(3, 32, 32),
    mean=(0.3403, 0.3121, 0.3214),
    std=(0.2724, 0.2608, 0.2669),
    default_arch="preact-resnet18",
)
_GTSRB_FIX = "delete the gtsrb folder and download it again (--download)"


def _locate_gtsrb(split: str) -> Callable[[Path], Path | None]:
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
        samples += [(path, int(class_dir.name)) for path in _image_files(class_dir, (".ppm",))]
    return samples


def _gtsrb_test_samples(base: Path) -> list[tuple[Path, int]]:
    csv_path = base / "GT-final_test.csv"
    images = base / "GTSRB" / "Final_Test" / "Images"
    try:
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
        samples = [(images / row["Filename"], int(row["ClassId"])) for row in rows]
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as exc:
        why = f"GTSRB test label file ({type(exc).__name__}: {_first_line(exc)})"
        raise _corrupt(csv_path, why, _GTSRB_FIX) from None
    if any(not 0 <= label < GTSRB.num_classes for _, label in samples):
        raise _corrupt(csv_path, "GTSRB test label file (ClassId outside 0 .. 42)", _GTSRB_FIX)
    return samples


def _fetch_gtsrb(split: str) -> Callable[[Path], None]:
    def fetch(target: Path) -> None:
        from torchvision.datasets import GTSRB as TvGTSRB

        TvGTSRB(str(target), split=split, download=True)  # downloads into target/gtsrb

    return fetch


@register_dataset(GTSRB)
def _load_gtsrb(root: Path | None, split: str, download: bool) -> ImageTensorDataset:
    base = find_dataset_dir(
        "gtsrb",
        "GTSRB",
        root,
        download,
        _locate_gtsrb(split),
        "pass --data-root DIR (the folder holding gtsrb/GTSRB/), or allow a download with --download",
        _fetch_gtsrb(split),
    )
    samples = _gtsrb_train_samples(base) if split == "train" else _gtsrb_test_samples(base)
    if not samples:
        raise NgfkitError(f"no GTSRB {split} images found under {base}; {_GTSRB_FIX}")
    _, height, width = GTSRB.image_shape
    images = _load_images_resized([p for p, _ in samples], height, width)
    return ImageTensorDataset(images, torch.tensor([y for _, y in samples], dtype=torch.int64), GTSRB)


# ---------------------------------------------------------------------------------------------
# Tiny ImageNet

TINY_IMAGENET = DatasetInfo(
    name="tiny-imagenet",
    num_classes=200,
    image_shape=(3, 64, 64),
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2770, 0.2691, 0.2821),
    default_arch="preact-resnet18",
)
_TINY_FIX = "download tiny-imagenet-200.zip from the official site (cs231n.stanford.edu) and unzip it again"


def _locate_tiny(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        for base in (folder / "tiny-imagenet-200", folder):
            if (base / "wnids.txt").is_file() and (base / ("train" if split == "train" else "val")).is_dir():
                return base
        return None

    return locate


@register_dataset(TINY_IMAGENET)
def _load_tiny_imagenet(root: Path | None, split: str, download: bool) -> ImageFileDataset:
    base = find_dataset_dir(
        "tiny-imagenet",
        "Tiny ImageNet",
        root,
        download,
        _locate_tiny(split),
        "ngfkit cannot download it; get tiny-imagenet-200.zip from the official site (cs231n.stanford.edu), "
        "unzip it and pass --data-root DIR",
    )
    wnids_path = base / "wnids.txt"
    try:
        wnids = sorted({line.strip() for line in wnids_path.read_text().splitlines() if line.strip()})
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(wnids_path, f"Tiny ImageNet class list ({_first_line(exc)})", _TINY_FIX) from None
    if not wnids or len(wnids) > TINY_IMAGENET.num_classes:
        raise _corrupt(wnids_path, f"Tiny ImageNet class list ({len(wnids)} classes, want 1 .. 200)", _TINY_FIX)
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    samples: list[tuple[str, int]] = []
    if split == "train":
        for wnid, label in class_index.items():
            folder = base / "train" / wnid / "images"
            if not folder.is_dir():
                raise NgfkitError(f"Tiny ImageNet folder {folder} is missing; {_TINY_FIX}")
            samples += [(str(p), label) for p in _image_files(folder, (".jpeg", ".jpg", ".png"))]
    else:
        ann_path = base / "val" / "val_annotations.txt"
        try:
            lines = ann_path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise NgfkitError(f"cannot read {ann_path} ({_first_line(exc)}); {_TINY_FIX}") from None
        for line in filter(str.strip, lines):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_index:
                raise _corrupt(ann_path, f"Tiny ImageNet annotation file (bad line {line!r})", _TINY_FIX)
            samples.append((str(base / "val" / "images" / fields[0]), class_index[fields[1]]))
    if not samples:
        raise NgfkitError(f"no Tiny ImageNet {split} images found under {base}; {_TINY_FIX}")
    return ImageFileDataset(samples, TINY_IMAGENET)


# ---------------------------------------------------------------------------------------------
# ImageNet (ILSVRC2012)

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


def _locate_imagenet(split: str) -> Callable[[Path], Path | None]:
    def locate(folder: Path) -> Path | None:
        return folder if (folder / _IMAGENET_DIRS[split]).is_dir() else None

    return locate


@register_dataset(IMAGENET)
def _load_imagenet(root: Path | None, split: str, download: bool) -> ImageFileDataset:
    base = find_dataset_dir(
        "imagenet",
        "ImageNet",
        root,
        download,
        _locate_imagenet(split),
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
        samples += [(str(p), label) for p in _image_files(split_dir / wnid, (".jpeg", ".jpg", ".png"))]
    if not samples:
        raise NgfkitError(
            f"no images in the class folders of {split_dir}; ImageNet must be laid out as {_IMAGENET_LAYOUT}"
        )
    return ImageFileDataset(samples, IMAGENET, resize=_IMAGENET_RESIZE)
