"""A tiny Fashion-MNIST written in its exact on-disk format (gzipped idx), and a test world that
sees no user data folder or cache: shared by the CLI, bad-input and resume tests."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from ngfkit import data


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload))


def write_fashion_mnist(folder: Path, train: int = 20, test: int = 5, seed: int = 0) -> Path:
    """``train`` and ``test`` random 28x28 images with labels ``0..9`` cycling, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8), 2049)
    return folder


def isolate_user_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No user data folder or cache is seen or written; the test runs inside ``tmp_path``."""
    monkeypatch.delenv("NGFKIT_DATA", raising=False)
    monkeypatch.setenv("NGFKIT_CACHE", str(tmp_path / "cache"))
    nowhere = tmp_path / "nowhere"
    monkeypatch.setattr(data.locations, "SYSTEM_DATA_DIRS", {name: (nowhere / name,) for name in data.SYSTEM_DATA_DIRS})
    monkeypatch.chdir(tmp_path)
    return tmp_path
