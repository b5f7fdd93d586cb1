"""Attacks whose trigger is a geometric warp of the whole image."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength


def _identity_grid(height: int, width: int) -> Tensor:
    """``(H, W, 2)`` sampling grid of :func:`F.grid_sample` (last axis ``(x, y)`` in ``[-1, 1]``)
    that reproduces the image, with ``align_corners=True``."""
    rows = torch.linspace(-1, 1, height).view(height, 1).expand(height, width)
    cols = torch.linspace(-1, 1, width).view(1, width).expand(height, width)
    return torch.stack((cols, rows), dim=-1)


def _warp(x: Tensor, grid: Tensor) -> Tensor:
    """Resample ``x`` ``(B, C, H, W)`` at ``grid`` (``(H, W, 2)`` shared or ``(B, H, W, 2)``)."""
    if grid.dim() == 3:
        grid = grid.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
    out = F.grid_sample(x, grid.to(x), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.clamp_(0.0, 1.0)


@ATTACKS.register("wanet")
class WaNet(Attack):
    """WaNet (Nguyen & Tran, ICLR 2021): the trigger is a smooth, fixed warp of the image.

    A seeded ``k x k`` field of offsets, uniform in ``[-1, 1]`` and normalised by its mean absolute
    value, is upsampled bicubically to ``H x W``, scaled by ``s / H`` (``s / W`` for x; this is
    the paper's code, so ``s`` is about twice the mean shift in pixels), added to the identity
    sampling grid and clamped to ``[-1, 1]``; images are resampled on it with bilinear
    :func:`F.grid_sample` (``align_corners=True``). The trigger tensor is that grid, ``(H, W, 2)``.

    Noise mode: ``cross_ratio * poison_rate`` of the training set (the paper's cross ratio 2)
    is warped with the grid plus per-image uniform noise in ``[-1, 1] / H`` and keeps its label,
    so the model learns the exact warp rather than "any warp".

    Deviation: the paper's CIFAR default is ``k = 4, s = 0.5``, trained for hundreds of epochs.
    On 28x28 Fashion-MNIST with one epoch of training that warp (a quarter pixel on average) is
    learned only partly (about 74% ASR after 156 steps, against 96% for ``s = 1``), so the
    default strength here is ``s = 1`` (half a pixel on average); ``k = 4`` as in the paper.
    """

    name = "wanet"
    defaults: ClassVar[dict[str, Any]] = {"k": 4, "s": 1.0, "cross_ratio": 2.0}
    family, order, paper_order = "transformation", 0, 8
    strength = Strength("s", "warp strength s (about twice the mean shift, in pixels)", 0.0, 4.0, 0.5)

    def check_params(self) -> None:
        _, h, w = self.image_shape
        k, s, cross = self.params["k"], float(self.params["s"]), float(self.params["cross_ratio"])
        if int(k) != k or not 2 <= int(k) <= min(h, w):
            raise NgfkitError(f"wanet control grid size k must be an integer in 2..{min(h, w)} for {h}x{w} images, got {k}")
        if not s > 0:
            raise NgfkitError(f"wanet warp strength s must be positive, got {s}")
        if not cross >= 0:
            raise NgfkitError(f"wanet cross_ratio must be >= 0, got {cross}")
        if self.poison_rate * (1 + cross) >= 1:
            raise NgfkitError(f"wanet poisons {self.poison_rate} and adds {cross}x as many noise images, more than the "
                              f"whole training set; lower cross_ratio or the poison rate")

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        _, h, w = self.image_shape
        k, s = int(self.params["k"]), float(self.params["s"])
        offsets = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
        offsets = offsets / offsets.abs().mean()
        field = F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
        field = field * s / torch.tensor([w, h], dtype=field.dtype)
        return {"grid": (_identity_grid(h, w) + field).clamp(-1, 1)}

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        with torch.no_grad():
            return _warp(x, self.trigger["grid"])

    def cover_fraction(self) -> float:
        return float(self.params["cross_ratio"]) * self.poison_rate

    def apply_cover(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_input(x)
        _, h, w = self.image_shape
        with torch.no_grad():
            grid = self.trigger["grid"].to(x).unsqueeze(0)
            jitter = (torch.rand(x.shape[0], h, w, 2, device=x.device, dtype=x.dtype) * 2 - 1) / h
            return _warp(x, (grid + jitter).clamp(-1, 1))
