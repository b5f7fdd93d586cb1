"""Tests for ngfkit.data: each dataset is written in its exact on-disk format into tmp_path and
read back through load_dataset."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ngfkit import data
from ngfkit.data import fashion_mnist, locations
from ngfkit.data import (
    DATASETS,
    DatasetInfo,
    ImageFileDataset,
    ImageTensorDataset,
    dataset_info,
    defender_split,
    load_dataset,
)
from ngfkit.errors import NgfkitError

REAL_SYSTEM_DATA_DIRS = dict(data.SYSTEM_DATA_DIRS)
DEBIAN_FASHION = REAL_SYSTEM_DATA_DIRS["fashion-mnist"][0]


@pytest.fixture(autouse=True)
def _isolated_locations(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may find data in the user's NGFKIT_DATA, the cache or the Debian folder by accident."""
    empty = tmp_path_factory.mktemp("nowhere")
    monkeypatch.delenv("NGFKIT_DATA", raising=False)
    monkeypatch.setenv("NGFKIT_CACHE", str(empty / "cache"))
    # patched in ngfkit.data.locations, the module whose candidate_dirs reads it
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIRS", {name: (empty / name,) for name in data.SYSTEM_DATA_DIRS})


# --- writers for the on-disk formats ---------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    """MNIST idx: big-endian magic, big-endian uint32 sizes, then the uint8 values."""
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_fashion(folder: Path, n_train: int = 7, n_test: int = 3, compress: bool = True) -> dict:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    suffix = ".gz" if compress else ""
    for prefix, n, split in (("train", n_train, "train"), ("t10k", n_test, "test")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, 2051, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 2049, compress)
        written[split] = (images, labels)
    return written


class Py2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote str (BINSTRING opcode), as in the official CIFAR-10 batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def cifar_pickle(entry: dict, py2: bool) -> bytes:
    if not py2:
        return pickle.dumps(entry, protocol=4)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(entry)
    # the official files were written by numpy 1.x, which kept _reconstruct in numpy.core
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_cifar(root: Path, per_batch: int = 2, n_test: int = 3, py2: bool = True) -> dict:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written: dict[str, list] = {"train": [], "test": []}
    names = [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)] + [("test_batch", "test", n_test)]
    for name, split, n in names:
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        entry = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": rows,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(cifar_pickle(entry, py2))
        written[split].append((rows, labels))
    return {split: (np.concatenate([r for r, _ in b]), sum((l for _, l in b), [])) for split, b in written.items()}


def random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")


# --- Fashion-MNIST ---------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_root(tmp_path: Path, compress: bool) -> None:
    written = write_fashion(tmp_path, compress=compress)
    for split in ("train", "test"):
        ds = load_dataset("fashion-mnist", split, root=tmp_path)
        images, labels = written[split]
        assert isinstance(ds, ImageTensorDataset)
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert ds.targets.dtype == torch.int64 and ds.targets.tolist() == labels.tolist()
        x, y = ds[1]
        assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert torch.allclose(x, torch.from_numpy(images[1]).float()[None] / 255)
        assert y == int(labels[1]) and isinstance(y, int)
    assert ds.info == dataset_info("fashion-mnist")


def test_fashion_mnist_torchvision_raw_layout(tmp_path: Path) -> None:
    written = write_fashion(tmp_path / "FashionMNIST" / "raw")
    ds = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert ds.targets.tolist() == written["test"][1].tolist()


@pytest.mark.parametrize("subfolder", ["fashion-mnist", ""])
def test_fashion_mnist_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, subfolder: str) -> None:
    written = write_fashion(tmp_path / subfolder)
    monkeypatch.setenv("NGFKIT_DATA", str(tmp_path))
    ds = load_dataset("fashion-mnist", "train")
    assert len(ds) == 7 and ds.targets.tolist() == written["train"][1].tolist()


def test_fashion_mnist_from_system_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion(tmp_path / "debian")
    monkeypatch.setitem(locations.SYSTEM_DATA_DIRS, "fashion-mnist", (tmp_path / "debian",))
    assert len(load_dataset("fashion-mnist", "test")) == 3


def test_fashion_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(NgfkitError) as err:
        load_dataset("fashion-mnist", "train")
    msg = str(err.value)
    assert "\n" not in msg and "not found" in msg
    for fix in ("dataset-fashion-mnist", "--data-root", "--download"):
        assert fix in msg
    assert str(locations.SYSTEM_DATA_DIRS["fashion-mnist"][0]) in msg


def test_fashion_mnist_download_goes_to_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    targets: list[Path] = []

    def fake_fetch(target: Path) -> None:  # stands in for torchvision's download
        targets.append(target)
        write_fashion(target / "FashionMNIST" / "raw")

    monkeypatch.setenv("NGFKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "fetch", fake_fetch)
    assert len(load_dataset("fashion-mnist", "test", download=True)) == 3
    assert targets == [tmp_path / "cache" / "data" / "fashion-mnist"]
    assert len(load_dataset("fashion-mnist", "train")) == 7  # an earlier download is found again
    assert len(targets) == 1


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fetch(target: Path) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://..., got:\nno network")

    monkeypatch.setattr(fashion_mnist, "fetch", failing_fetch)
    with pytest.raises(NgfkitError) as err:
        load_dataset("fashion-mnist", "train", root=tmp_path, download=True)
    assert "\n" not in str(err.value) and "download" in str(err.value) and str(tmp_path) in str(err.value)


def test_explicit_root_is_the_only_place_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion(tmp_path / "env")
    monkeypatch.setenv("NGFKIT_DATA", str(tmp_path / "env"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NgfkitError, match="empty"):
        load_dataset("fashion-mnist", root=tmp_path / "empty")


def test_fashion_mnist_wrong_magic(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros((3, 28, 28), np.uint8), 2049, compress=True)
    with pytest.raises(NgfkitError) as err:
        load_dataset("fashion-mnist", "test", root=tmp_path)
    assert str(bad) in str(err.value) and "download" in str(err.value) and "\n" not in str(err.value)


def test_fashion_mnist_truncated_gzip(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(NgfkitError) as err:
        load_dataset("fashion-mnist", "train", root=tmp_path)
    assert str(bad) in str(err.value) and "download" in str(err.value)


def test_fashion_mnist_truncated_idx(tmp_path: Path) -> None:
    write_fashion(tmp_path, compress=False)
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(NgfkitError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(), reason=f"{DEBIAN_FASHION} not installed (apt-get install dataset-fashion-mnist)"
)
def test_fashion_mnist_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIRS", REAL_SYSTEM_DATA_DIRS)
    ds = load_dataset("fashion-mnist", "test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert ds.targets.bincount().tolist() == [1000] * 10


# --- CIFAR-10 --------------------------------------------------------------------------------


@pytest.mark.parametrize("py2", [True, False], ids=["py2-pickle", "py3-pickle"])
def test_cifar10(tmp_path: Path, py2: bool) -> None:
    written = write_cifar(tmp_path, py2=py2)
    for split, n in (("train", 10), ("test", 3)):
        ds = load_dataset("cifar10", split, root=tmp_path)
        rows, labels = written[split]
        assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
        assert ds.targets.tolist() == labels
        # row layout: channel-major, then rows of 32 pixels
        assert ds.images[2, 1, 5, 7] == rows[2, 1 * 1024 + 5 * 32 + 7]
        assert ds.images[n - 1, 2, 31, 0] == rows[n - 1, 2 * 1024 + 31 * 32]
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == labels[0]


class _Malicious:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.remove, (str(self.target),))


def test_cifar10_refuses_pickled_code(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "marker"
    marker.write_text("must survive")
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": _Malicious(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(NgfkitError) as err:
        load_dataset("cifar10", "test", root=tmp_path)
    assert marker.exists()
    assert str(bad) in str(err.value) and "download" in str(err.value)


def test_cifar10_truncated_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(NgfkitError, match="data_batch_3"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_cifar10_missing_mentions_fixes(tmp_path: Path) -> None:
    with pytest.raises(NgfkitError, match="CIFAR-10 not found.*--data-root.*--download"):
        load_dataset("cifar10", "test", root=tmp_path)


# --- GTSRB -----------------------------------------------------------------------------------


def test_gtsrb(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = tmp_path / "gtsrb"
    train = {0: [(35, 30), (32, 32)], 2: [(40, 44)], 42: [(29, 31), (50, 48)]}
    exact = None
    for label, sizes in train.items():
        folder = base / "GTSRB" / "Training" / f"{label:05d}"
        folder.mkdir(parents=True)
        (folder / f"GT-{label:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
        for i, (w, h) in enumerate(sizes):
            img = random_image(rng, w, h)
            img.save(folder / f"00000_{i:05d}.ppm")
            if (w, h) == (32, 32):
                exact = np.array(img)
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    test_labels = [5, 0, 12]
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, label in enumerate(test_labels):
        random_image(rng, 30 + i, 33).save(test_dir / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;{30 + i};33;5;5;25;28;{label}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")

    ds = load_dataset("gtsrb", "train", root=tmp_path)
    assert ds.images.shape == (5, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.targets.tolist() == [0, 0, 2, 42, 42]
    assert ds.info.num_classes == 43
    assert torch.equal(ds.images[1], torch.from_numpy(exact).permute(2, 0, 1))  # 32x32 kept as is

    test = load_dataset("gtsrb", "test", root=tmp_path)
    assert test.images.shape == (3, 3, 32, 32) and test.targets.tolist() == test_labels


def test_gtsrb_corrupt_image(tmp_path: Path) -> None:
    folder = tmp_path / "gtsrb" / "GTSRB" / "Training" / "00001"
    folder.mkdir(parents=True)
    (folder / "00000_00000.ppm").write_bytes(b"P6\n32 32\n255\n" + b"\x00" * 10)
    with pytest.raises(NgfkitError, match="00000_00000.ppm"):
        load_dataset("gtsrb", "train", root=tmp_path)


# --- Tiny ImageNet ---------------------------------------------------------------------------


def write_jpeg(path: Path, width: int, height: int, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path, quality=95)


def test_tiny_imagenet(tmp_path: Path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n09999999", "n01443537", "n02000000"]  # unsorted on purpose: labels follow sorted order
    base.mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colors = {"n01443537": (255, 0, 0), "n02000000": (0, 255, 0), "n09999999": (0, 0, 255)}
    for wnid in wnids:
        for i in range(2):
            write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 64, 64, colors[wnid])
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val = [("val_0.JPEG", "n02000000"), ("val_1.JPEG", "n09999999"), ("val_2.JPEG", "n01443537")]
    for name, wnid in val:
        write_jpeg(base / "val" / "images" / name, 64, 64, colors[wnid])
    (base / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t0\t0\t63\t63\n" for n, w in val))

    ds = load_dataset("tiny-imagenet", "train", root=tmp_path)
    assert isinstance(ds, ImageFileDataset) and len(ds) == 6
    assert ds.targets.tolist() == [0, 0, 1, 1, 2, 2]
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 0
    assert x[0].mean() > 0.95 and x[1:].mean() < 0.05  # n01443537 is red

    test = load_dataset("tiny-imagenet", "test", root=tmp_path)
    assert test.targets.tolist() == [1, 2, 0]
    x, y = test[1]
    assert x[2].mean() > 0.95 and y == 2
    xb, yb = test.get_batch(torch.tensor([2, 0]))
    assert xb.shape == (2, 3, 64, 64) and yb.tolist() == [0, 1]
    assert test.subset([1]).samples == [test.samples[1]]


def test_tiny_imagenet_missing_says_no_download(tmp_path: Path) -> None:
    with pytest.raises(NgfkitError, match="cannot download.*--data-root"):
        load_dataset("tiny-imagenet", "train", root=tmp_path, download=True)


# --- ImageNet --------------------------------------------------------------------------------


def write_imagenet(root: Path) -> None:
    for split, wnids in (("train", ["n02", "n01"]), ("val", ["n01", "n02"])):
        for wnid in wnids:
            # wide image: red margins, green centre 256 wide; after resize 256 + crop 224 only green is left
            arr = np.zeros((256, 512, 3), np.uint8)
            arr[:, :, 0] = 255
            arr[:, 128:384] = (0, 255, 0)
            path = root / split / wnid / f"{wnid}_{split}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path, quality=95)
            write_jpeg(root / split / wnid / f"{wnid}_{split}_b.JPEG", 300, 400, (10, 20, 30))


def test_imagenet(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("imagenet", split, root=tmp_path)
        assert isinstance(ds, ImageFileDataset) and len(ds) == 4
        assert ds.targets.tolist() == [0, 0, 1, 1]  # sorted folder names
        x, y = ds[0]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        assert x[1].min() > 0.9 and x[0].max() < 0.1  # centre crop kept only the green middle
        x, _ = ds[1]
        assert x.shape == (3, 224, 224) and 0.0 <= x.min() and x.max() <= 1.0
    assert dataset_info("imagenet").num_classes == 1000


def test_imagenet_missing_layout(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(NgfkitError, match="no class folders"):
        load_dataset("imagenet", "train", root=tmp_path)
    with pytest.raises(NgfkitError, match="ImageNet not found"):
        load_dataset("imagenet", "test", root=tmp_path)


def test_imagenet_mismatched_class_folders(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    (tmp_path / "val" / "n03").mkdir()
    with pytest.raises(NgfkitError, match="different class folders"):
        load_dataset("imagenet", "train", root=tmp_path)


def test_image_file_dataset_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds = ImageFileDataset([(str(bad), 0)], dataset_info("tiny-imagenet"))
    with pytest.raises(NgfkitError, match="broken.JPEG"):
        ds[0]


# --- registry, info, splits ------------------------------------------------------------------


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(NgfkitError) as err:
        load_dataset("mnist-9000")
    for name in ("fashion-mnist", "cifar10", "gtsrb", "tiny-imagenet", "imagenet"):
        assert name in str(err.value)
    with pytest.raises(NgfkitError, match="cifar10"):
        dataset_info("nope")


def test_unknown_split(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    with pytest.raises(NgfkitError, match="split 'val'.*train, test"):
        load_dataset("fashion-mnist", "val", root=tmp_path)


def test_dataset_info() -> None:
    expected = {
        "fashion-mnist": (10, (1, 28, 28), "smallcnn"),
        "cifar10": (10, (3, 32, 32), "preact-resnet18"),
        "gtsrb": (43, (3, 32, 32), "preact-resnet18"),
        "tiny-imagenet": (200, (3, 64, 64), "preact-resnet18"),
        "imagenet": (1000, (3, 224, 224), "resnet18"),
    }
    assert set(DATASETS.names()) == set(expected)
    for name, (classes, shape, arch) in expected.items():
        info = dataset_info(name)
        assert isinstance(info, DatasetInfo) and info.name == name
        assert (info.num_classes, info.image_shape, info.default_arch) == (classes, shape, arch)
        assert len(info.mean) == len(info.std) == shape[0]


def test_get_batch_and_subset() -> None:
    info = dataset_info("cifar10")
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ds = ImageTensorDataset(images, torch.tensor([3, 1, 4, 1, 5, 9]), info)
    idx = torch.tensor([4, 0, 4])
    xb, yb = ds.get_batch(idx)
    assert xb.shape == (3, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    for row, i in enumerate(idx.tolist()):
        x, y = ds[i]
        assert torch.equal(xb[row], x) and yb[row].item() == y
    sub = ds.subset([5, 2])
    assert isinstance(sub, ImageTensorDataset) and len(sub) == 2 and sub.targets.tolist() == [9, 4]
    assert torch.equal(sub.images[0], images[5]) and sub.info == info
    assert len(ds.subset(torch.tensor([True, False, True, False, False, False]))) == 2


def test_image_tensor_dataset_rejects_bad_shapes() -> None:
    with pytest.raises(NgfkitError, match="uint8"):
        ImageTensorDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2), dataset_info("cifar10"))
    with pytest.raises(NgfkitError, match=r"images must be shaped \(N, 3, 32, 32\)"):
        ImageTensorDataset(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2), dataset_info("cifar10"))


@pytest.mark.parametrize("num_train,fraction", [(1000, 0.05), (101, 0.5), (10, 0.01), (60000, 0.02)])
def test_defender_split(num_train: int, fraction: float) -> None:
    attacker, clean = defender_split(num_train, fraction, seed=7)
    assert clean.dtype == attacker.dtype == torch.int64
    assert len(clean) == max(1, round(fraction * num_train))
    assert len(set(clean.tolist()) & set(attacker.tolist())) == 0
    assert sorted(clean.tolist() + attacker.tolist()) == list(range(num_train))
    again = defender_split(num_train, fraction, seed=7)
    assert torch.equal(again[0], attacker) and torch.equal(again[1], clean)
    if num_train >= 100:
        assert not torch.equal(defender_split(num_train, fraction, seed=8)[1], clean)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_defender_split_bad_fraction(fraction: float) -> None:
    with pytest.raises(NgfkitError, match="between 0 and 1"):
        defender_split(100, fraction, seed=0)


def test_defender_split_leaves_attacker_data() -> None:
    with pytest.raises(NgfkitError):
        defender_split(2, 0.9, seed=0)
