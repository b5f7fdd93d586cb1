"""Reading dataset files: decoding image files into uint8 tensors, listing a folder's images,
and the one-line errors for files that are missing or corrupt.

Every image comes back as uint8: one image (C, H, W), a stack (N, 3, H, W); conversion to
float32 in [0, 1] is left to the dataset classes of :mod:`ngfkit.data.base`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import NgfkitError


def read_image(path: Path | str, mode: str) -> Image.Image:
    """Open and decode one image file, converted to PIL ``mode`` ("RGB" or "L")."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except Exception as exc:  # PIL raises many types for bad files; all mean the same to the user
        raise NgfkitError(
            f"cannot read image {path} ({type(exc).__name__}: {first_line(exc)}); "
            "the file is missing or corrupt, download the dataset again"
        ) from None


def image_to_tensor(img: Image.Image) -> Tensor:
    """PIL image -> uint8 (C, H, W)."""
    arr = np.array(img, dtype=np.uint8)  # np.array, not asarray: torch wants a writable buffer
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def resize_center_crop(img: Image.Image, short_side: int, height: int, width: int) -> Image.Image:
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def corrupt(path: Path, why: str, fix: str) -> NgfkitError:
    return NgfkitError(f"{path} is corrupt or not a {why}; {fix}")


def load_images_resized(paths: Sequence[Path | str], height: int, width: int) -> Tensor:
    """Read RGB files and resize each to (height, width) -> uint8 (N, 3, H, W)."""

    def one(path: Path | str) -> np.ndarray:
        img = read_image(path, "RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        return np.array(img, dtype=np.uint8)

    if not paths:
        return torch.empty((0, 3, height, width), dtype=torch.uint8)
    # PIL releases the GIL while decoding and resizing, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(one, paths, chunksize=64))
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))


def image_files(folder: Path, extensions: Iterable[str]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in exts)
