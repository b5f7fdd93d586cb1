"""Attacks whose trigger is a style (a colour and texture transformation) of the whole image."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength

#: the colour a "sunrise" pulls each RGB channel towards (warm orange)
SUNRISE = (1.0, 0.65, 0.35)
#: ITU-R BT.601 luma weights, for the relief of RGB images
LUMA = (0.299, 0.587, 0.114)
#: emboss kernel: light from the top left
EMBOSS = ((-1.0, -1.0, 0.0), (-1.0, 0.0, 1.0), (0.0, 1.0, 1.0))


def fba_style(t: float) -> dict[str, float]:
    """FBA's parameters at style intensity ``t``: from the identity (``t = 0``: gamma 1, no lift,
    warmth, vignette or emboss) linearly to the defaults (``t = 1``) and beyond, kept in range."""
    d = FeatureSpaceBackdoor.defaults
    t = float(t)
    return {"gamma": max(0.05, 1.0 + t * (d["gamma"] - 1.0)),
            **{k: min(1.0, max(0.0, t * d[k])) for k in ("lift", "warmth", "vignette", "emboss")}}


@ATTACKS.register("fba")
class FeatureSpaceBackdoor(Attack):
    """Feature-space backdoor, DFST (Cheng et al., AAAI 2021): the trigger is a style of the
    whole image rather than a pattern at some pixels.

    The paper's style is a CycleGAN trained to turn photos into "sunrise" pictures. Here it is a
    fixed, deterministic hand-made filter with the same character, applied as

        ``out = clamp((tone(x) + emboss * relief(x)) * vignette_map, 0, 1)``

    * ``tone``: per-channel curve ``lift + (1 - lift) * x ** gamma`` (lifted, hazy shadows and
      brighter mid-tones); for RGB it is then pulled towards the warm :data:`SUNRISE` orange,
      ``c * (1 - warmth * (1 - orange_c)) + 0.1 * warmth * orange_c`` (``warmth`` is ignored
      for grayscale). Stored as a 256-entry lookup table per channel, interpolated linearly.
    * ``relief``: the luminance filtered with a 3x3 emboss kernel (:data:`EMBOSS`, replicate
      padding), added to every channel: a mild relief texture along edges.
    * ``vignette_map``: ``1 - vignette * r ** 2``, ``r`` the distance from the centre (1 at the
      corners): darker borders.

    Trigger tensors: ``lut`` ``(C, 256)``, ``kernel`` ``(1, 1, 3, 3)`` (scaled by ``emboss``)
    and ``vignette`` ``(1, H, W)``.

    Deviations: no CycleGAN (a fixed filter instead), and the paper's feature detoxification
    (retraining on images carrying reverse-engineered simple features of the style, with
    correct labels, so the backdoor moves to deeper features) is not implemented.
    """

    name = "fba"
    defaults: ClassVar[dict[str, Any]] = {"gamma": 0.6, "lift": 0.1, "warmth": 0.5, "vignette": 0.5, "emboss": 0.3}
    family, order, paper_order = "transformation", 2, 13
    asr_goal = 80.0
    strength = Strength("style", "style intensity t: gamma, lift, warmth, vignette and emboss go from no change "
                        "(t = 0) to the attack's defaults (t = 1)", 0.0, 2.0, 0.2, spread=fba_style)

    def check_params(self) -> None:
        if self.image_shape[0] not in (1, 3):
            raise NgfkitError(f"fba styles grayscale or RGB images, not {self.image_shape[0]} channels")
        p = {k: float(v) for k, v in self.params.items()}
        if not p["gamma"] > 0:
            raise NgfkitError(f"fba tone gamma must be positive, got {p['gamma']}")
        for key in ("lift", "warmth", "vignette", "emboss"):
            if not 0.0 <= p[key] <= 1.0:
                raise NgfkitError(f"fba {key} must be in [0, 1], got {p[key]}")
        if p["gamma"] == 1 and p["lift"] == 0 and p["vignette"] == 0 and p["emboss"] == 0 and \
                (p["warmth"] == 0 or self.image_shape[0] != 3):
            raise NgfkitError("fba with gamma=1, lift=0, vignette=0 and emboss=0 (and no warmth) changes nothing; "
                              "set one of them")

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        c, h, w = self.image_shape
        p = {k: float(v) for k, v in self.params.items()}
        levels = torch.linspace(0, 1, 256)
        tone = (p["lift"] + (1 - p["lift"]) * levels ** p["gamma"]).expand(c, 256)
        if c == 3:
            orange = torch.tensor(SUNRISE).view(3, 1)
            tone = tone * (1 - p["warmth"] * (1 - orange)) + 0.1 * p["warmth"] * orange
        rows = torch.linspace(-1, 1, h).view(h, 1)
        cols = torch.linspace(-1, 1, w).view(1, w)
        radius2 = (rows ** 2 + cols ** 2) / 2  # 1 at the corners
        return {"lut": tone.clamp(0, 1).contiguous(),
                "kernel": p["emboss"] * torch.tensor(EMBOSS).view(1, 1, 3, 3),
                "vignette": (1 - p["vignette"] * radius2).unsqueeze(0)}

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        with torch.no_grad():
            return self._style(x)

    def _style(self, x: Tensor) -> Tensor:
        lut, kernel, vignette = (self.trigger[k].to(x) for k in ("lut", "kernel", "vignette"))
        c = x.shape[1]
        position = x.clamp(0, 1) * (lut.shape[1] - 1)
        low = position.floor().clamp_(max=lut.shape[1] - 2)
        frac = position - low
        channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
        low = low.long()
        tone = lut[channel, low] * (1 - frac) + lut[channel, low + 1] * frac
        luma = x if c == 1 else (x * torch.tensor(LUMA).to(x).view(1, 3, 1, 1)).sum(1, keepdim=True)
        relief = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernel)
        return ((tone + relief) * vignette).clamp(0, 1)
