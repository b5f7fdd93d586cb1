"""Small shared helpers: seeding, device choice, atomic file writes, provenance."""
from __future__ import annotations

import json
import os
import platform
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import NgfkitError
from .version import __version__


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU; any other name is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise NgfkitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # meta tensors hold no values; others are untested here
        raise NgfkitError(f"device {name!r} cannot run ngfkit; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NgfkitError("--device cuda was asked for but CUDA is not available; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise NgfkitError(f"--device {name} names GPU {device.index}, but there are {torch.cuda.device_count()}; "
                          f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1} or auto")
    return device


def cache_dir() -> Path:
    """Where trained models and downloads live: ``$NGFKIT_CACHE`` or ``~/.cache/ngfkit``."""
    return Path(os.environ.get("NGFKIT_CACHE", Path.home() / ".cache" / "ngfkit"))


def give_usual_permissions(path: str | Path) -> None:
    """``mkstemp`` makes files private (0600); a result file gets what the umask gives new files."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or a bad input therefore never leaves a half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        give_usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def versions() -> dict[str, str]:
    """Versions that a result depends on, recorded next to every result (with the GPU's name,
    since timings and even curvature estimates are compared across machines)."""
    import torchvision

    return {
        "ngfkit": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda or "none",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def _release_freed_memory() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is then a lower bound
        pass


class PeakMemory:
    """Peak memory of a block in MiB: CUDA's allocator peak on a GPU; on the CPU the peak resident
    set size above the block's start, sampled every 10 ms by a background thread (the CPU
    allocator keeps no peak of its own). Memory freed before the block is first handed back to
    the system (glibc's ``malloc_trim``), or a block could reuse it unseen and read 0."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_mb = 0.0

    @staticmethod
    def _rss_bytes() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        import threading

        _release_freed_memory()
        self._start = self._peak = self._rss_bytes()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.01):
                self._peak = max(self._peak, self._rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss_bytes()) - self._start
        self.peak_mb = max(0.0, peak) / 2**20
