"""Batch iteration shared by training, evaluation and feature caching.

In-memory datasets (those with ``get_batch``) are sliced directly, which on a 2-core CPU is
several times faster than a ``DataLoader``; file-backed datasets go through a ``DataLoader``.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


def iterate_batches(dataset: Dataset, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    drop_last: bool = False, num_workers: int = 0,
                    replacement: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` with ``x`` of shape ``(B, C, H, W)`` in ``[0, 1]`` and ``y`` of shape ``(B,)``.

    ``shuffle`` visits every item once per pass in random order; with ``replacement`` too, a pass
    is ``len(dataset)`` items drawn with replacement (as the NGF reference code samples)."""
    n = len(dataset)
    if hasattr(dataset, "get_batch"):
        if shuffle and replacement:
            order = torch.randint(n, (n,), generator=generator)
        else:
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            x, y = dataset.get_batch(order[start : start + batch_size])
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, generator=generator) \
        if shuffle and replacement else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                        generator=generator if sampler is None else None,
                        drop_last=drop_last and n >= batch_size, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    for x, y in loader:
        yield x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)


def num_batches(dataset: Dataset, batch_size: int, drop_last: bool = False) -> int:
    n = len(dataset)
    if drop_last and n >= batch_size:
        return n // batch_size
    return -(-n // batch_size)


def random_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> Tensor:
    """Batched random crop (zero padding ``pad``) and horizontal flip of ``x`` ``(B, C, H, W)``."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).to(x.device)
    cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).to(x.device)
    out = padded[torch.arange(b, device=x.device).view(b, 1, 1, 1), torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1),
                 rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
    if flip:
        flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out = torch.where(flips.view(b, 1, 1, 1), out.flip(-1), out)
    return out


def subset_of(dataset: Dataset, indices: Tensor) -> Dataset:
    """The images ``indices`` of ``dataset``: its own ``subset`` when it has one (ngfkit's in-memory
    datasets stay sliceable), else a :class:`torch.utils.data.Subset` (any map-style dataset)."""
    if hasattr(dataset, "subset"):
        return dataset.subset(indices)
    return torch.utils.data.Subset(dataset, [int(i) for i in indices])
