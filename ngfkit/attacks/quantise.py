"""Attacks whose trigger is a loss of colour depth."""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength


@functools.lru_cache(maxsize=8)
def _wavefronts(h: int, w: int) -> tuple[tuple[Tensor, Tensor], ...]:
    """Per step of :func:`floyd_steinberg`, the pixels ``(y, x)`` with ``x + 2 y = step``: their flat
    indices in the ``(H, W)`` output and in the padded ``(H + 1, W + 2)`` work buffer."""
    fronts = []
    all_rows = torch.arange(h)
    for step in range(w + 2 * (h - 1)):
        cols = step - 2 * all_rows
        valid = (cols >= 0) & (cols < w)
        rows, cols = all_rows[valid], cols[valid]
        fronts.append((rows * w + cols, rows * (w + 2) + cols + 1))
    return tuple(fronts)


def floyd_steinberg(x: Tensor, levels: int) -> Tensor:
    """Quantise ``x`` ``(B, C, H, W)`` in ``[0, 1]`` to ``levels`` grey levels per channel with
    Floyd–Steinberg error diffusion (errors spread 7/16 right, 3/16 down-left, 5/16 down,
    1/16 down-right; each channel on its own; quantised values clamped to the palette).

    The scan is the usual raster order, but pixel ``(y, x)`` only waits for its left neighbour and
    the three pixels above, so all pixels with the same ``x + 2 y`` are processed together: ``W + 2H``
    batched steps instead of ``H W``. Each pixel receives its errors in the same order as in the
    raster scan, so the result is exactly the sequential algorithm's (in float64).
    """
    b, c, h, w = x.shape
    top = levels - 1
    # one column of padding on each side takes the errors that fall off the left and right edges,
    # one extra row those that fall off the bottom; flat indices make each step a few gathers
    work = torch.zeros(b * c, h + 1, w + 2, dtype=torch.float64, device=x.device)
    work[:, :h, 1 : w + 1] = x.reshape(b * c, h, w).to(torch.float64) * top
    work = work.view(b * c, -1)
    out = torch.empty(b * c, h * w, dtype=torch.float64, device=x.device)
    stride = w + 2
    for pixels, here in _wavefronts(h, w):
        pixels, here = pixels.to(x.device), here.to(x.device)
        value = work.index_select(1, here)
        new = value.round().clamp_(0, top)
        error = value - new
        out.index_copy_(1, pixels, new)
        # down-left, down, down-right first, then right: the raster scan's order of arrival
        for offset, weight in ((stride - 1, 3 / 16), (stride, 5 / 16), (stride + 1, 1 / 16), (1, 7 / 16)):
            work.index_add_(1, here + offset, error * weight)
    return (out / top).view(b, c, h, w).to(x.dtype)


@ATTACKS.register("bpp")
class BppAttack(Attack):
    """BppAttack (Wang et al., CVPR 2022): the trigger is colour-depth squeezing to ``bits`` bits
    per channel with Floyd–Steinberg dithering (:func:`floyd_steinberg`); it needs no trigger
    tensors (the trigger is the quantiser itself).

    Negative samples (``neg_ratio * poison_rate`` of the training set, labels kept): the paper's
    contrastive adversarial training shows the model samples that carry quantisation-like
    changes which are *not* the trigger, so that it keys on the exact dithered quantisation of
    the image rather than on "some quantisation noise". A negative sample here is a clean image
    plus the quantisation residual ``squeeze(x') - x'`` of another image ``x'`` (another cover
    image of the batch, turned by 180 degrees so that even a batch of one gets a residual that
    does not fit its content), as the authors' code builds them from a bank of residuals of
    other training images; no adversarial optimisation against the model being trained.

    Deviation: the paper squeezes CIFAR-10 to 5 bits. Fashion-MNIST is mostly flat black
    background, which is exactly representable at any depth, and after one epoch (156-step
    proxy runs) 3 bits gave 3% ASR even without negative samples, 2 bits 94% (84% with
    ``neg_ratio = 1``), so the default here is ``bits = 2`` (four grey levels).
    """

    name = "bpp"
    defaults: ClassVar[dict[str, Any]] = {"bits": 2, "neg_ratio": 1.0}
    family, order, paper_order = "transformation", 1, 11
    strength = Strength("bits", "bits per channel after squeezing (fewer bits: a stronger trigger)", 1, 7, 1,
                        integer=True, zero_is_clean=False)

    def check_params(self) -> None:
        bits, neg = self.params["bits"], float(self.params["neg_ratio"])
        if int(bits) != bits or not 1 <= int(bits) <= 7:
            raise NgfkitError(f"bpp squeezes 8-bit images to 1..7 bits per channel, got bits={bits}")
        if not neg >= 0:
            raise NgfkitError(f"bpp neg_ratio must be >= 0, got {neg}")
        if self.poison_rate * (1 + neg) >= 1:
            raise NgfkitError(f"bpp poisons {self.poison_rate} and adds {neg}x as many negative samples, more than the "
                              f"whole training set; lower neg_ratio or the poison rate")

    def _squeeze(self, x: Tensor) -> Tensor:
        return floyd_steinberg(x, 2 ** int(self.params["bits"]))

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        with torch.no_grad():
            return self._squeeze(x)

    def cover_fraction(self) -> float:
        return float(self.params["neg_ratio"]) * self.poison_rate

    def apply_cover(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_input(x)
        with torch.no_grad():
            donors = x.roll(1, dims=0).flip(-2, -1)
            residual = self._squeeze(donors) - donors
            return (x + residual).clamp(0.0, 1.0)
