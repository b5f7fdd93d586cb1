"""Attacks whose trigger is a fixed image stamped or blended onto every input."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength


@ATTACKS.register("badnets")
class BadNets(Attack):
    """BadNets (Gu et al. 2017): a ``patch_size``² black-and-white checkerboard in the
    bottom-right corner, ``margin`` pixels from the edges."""

    name = "badnets"
    defaults = {"patch_size": 3, "margin": 1}
    family, order, paper_order = "patch", 0, 0
    strength = Strength("patch_size", "side of the checkerboard patch (pixels)", 0, 8, 1, integer=True)

    def check_params(self) -> None:
        size, margin = int(self.params["patch_size"]), int(self.params["margin"])
        _, h, w = self.image_shape
        if size < 1 or margin < 0 or size + margin > min(h, w):
            raise NgfkitError(f"a {size}x{size} patch with margin {margin} does not fit {h}x{w} images; "
                              f"lower patch_size or margin")

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        c, h, w = self.image_shape
        size, margin = int(self.params["patch_size"]), int(self.params["margin"])
        rows = torch.arange(size).view(-1, 1)
        cols = torch.arange(size).view(1, -1)
        checker = ((rows + cols) % 2 == 0).float()
        pattern = torch.zeros(c, h, w)
        mask = torch.zeros(1, h, w)
        top, left = h - margin - size, w - margin - size
        pattern[:, top : top + size, left : left + size] = checker
        mask[:, top : top + size, left : left + size] = 1.0
        return {"pattern": pattern, "mask": mask}

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        mask = self.trigger["mask"].to(x)
        return x * (1 - mask) + self.trigger["pattern"].to(x) * mask


@ATTACKS.register("blend")
class Blend(Attack):
    """Blended injection (Chen et al. 2017): ``(1 - alpha) * x + alpha * noise`` with a fixed,
    seeded uniform-noise image."""

    name = "blend"
    defaults = {"alpha": 0.2}
    family, order, paper_order = "patch", 1, 1
    strength = Strength("alpha", "weight α of the noise image in the blend", 0.0, 0.9, 0.1)

    def check_params(self) -> None:
        if not 0.0 < float(self.params["alpha"]) < 1.0:
            raise NgfkitError(f"blend alpha must be in (0, 1), got {self.params['alpha']}")

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {"pattern": torch.rand(self.image_shape, generator=generator)}

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        alpha = float(self.params["alpha"])
        return (1 - alpha) * x + alpha * self.trigger["pattern"].to(x)
