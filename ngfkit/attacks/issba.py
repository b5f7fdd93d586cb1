"""ISSBA: invisible sample-specific backdoor attack (Li et al., ICCV 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength, TriggerContext
from .generative import (UNet, call_network, endless_batches, require_divisible_by_4, require_in_open_unit_interval,
                         require_positive_ints, seeded_weights, skeleton, trainable_copy)

#: channels of the code's spatial map that the encoder reads beside the image
CODE_CHANNELS = 4


class StegaEncoder(nn.Module):
    """StegaStamp-style encoder: ``(x (B, C, H, W), code (B, bits) in {-1, 1}) -> (B, C, H, W)``.

    The code goes through a linear layer to a ``CODE_CHANNELS x H/4 x W/4`` map, is upsampled
    to ``H x W`` and concatenated with the image, and a :class:`UNet` makes the residual's
    pre-activation, so the residual depends on both the code and the image.
    """

    def __init__(self, channels: int, height: int, width: int, bits: int, net_width: int):
        super().__init__()
        self.code_shape = (CODE_CHANNELS, height // 4, width // 4)
        self.code_map = nn.Linear(bits, CODE_CHANNELS * (height // 4) * (width // 4))
        self.net = UNet(channels + CODE_CHANNELS, channels, net_width)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        spatial = F.relu(self.code_map(code)).view(len(x), *self.code_shape)
        spatial = F.interpolate(spatial, scale_factor=4.0)
        return self.net(torch.cat([x, spatial], 1))


class StegaDecoder(nn.Module):
    """Recovers the code: ``(B, C, H, W) -> (B, bits)`` logits (three stride-2 convolutions and a
    linear layer)."""

    def __init__(self, channels: int, bits: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * width, bits))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@ATTACKS.register("issba")
class Issba(Attack):
    """ISSBA (Li et al., ICCV 2021): a steganographic encoder hides the attacker's code in each image.

    An encoder ``E`` (:class:`StegaEncoder`) and a decoder ``D`` (:class:`StegaDecoder`) are
    trained in :meth:`fit_trigger` on ``context.train`` images with random ``bits``-bit codes:
    binary cross-entropy of ``D(x')`` against the code plus ``lambda_residual`` times the mean
    squared residual (relative to ``eps``), for ``steps`` Adam steps; as in StegaStamp, the
    residual penalty is off while the decoder learns to read codes (first third of the steps)
    and then ramps up linearly (second third). The attacker's code is a
    fixed seeded bit string (``trigger["code"]``, ``(bits,)``); the trigger of an image ``x``
    ``(B, C, H, W)`` is ``x' = clamp(x + eps * tanh(E(x, code)), 0, 1)``: different for every
    image, and never more than ``eps`` from ``x``. Only the encoder's weights and the code are
    trigger tensors; the decoder serves the training only.

    Deviations: the paper uses the full StegaStamp (a U-Net encoder on 400x400 images, L2 +
    LPIPS + critic losses, image corruptions between encoder and decoder) trained on ImageNet
    for many epochs; here a small encoder is trained for 300 steps on the attacker's own
    images (about 96% of the bits of random codes are decoded at the end on Fashion-MNIST),
    with an explicit ``eps`` bound (tanh, 0.1 by default; the mean change is about 0.04) and
    an L2 penalty instead of the perceptual and critic losses.
    """

    name = "issba"
    defaults = {"eps": 0.1, "bits": 32, "steps": 300, "batch_size": 64, "lambda_residual": 0.1, "width": 16}
    learned = True
    family, order, paper_order = "generator", 3, 9
    # a narrower encoder, all 300 steps (about 25 s of CPU): with fewer steps or smaller batches
    # the decoder never learns the code and the residual penalty erases the trigger
    short_fit = {"width": 8}
    strength = Strength("eps", "L∞ bound ε of the encoder's residual (fitted at the default; other values "
                        "rescale the same encoder's output)", 0.0, 0.5, 0.05)

    #: Adam for encoder and decoder (StegaStamp's 1e-4 is too slow for a few hundred steps)
    lr = 1e-3

    def check_params(self) -> None:
        require_positive_ints(self, "bits", "batch_size", "width")
        steps = self.params["steps"]
        if isinstance(steps, bool) or int(steps) != steps or int(steps) < 0:
            raise NgfkitError(f"attack 'issba' parameter steps must be an integer >= 0, got {steps!r}")
        require_in_open_unit_interval(self, "eps")
        if not float(self.params["lambda_residual"]) >= 0.0:
            raise NgfkitError(f"attack 'issba' parameter lambda_residual must be >= 0, got {self.params['lambda_residual']}")
        require_divisible_by_4(self)

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        c, h, w = self.image_shape
        bits = int(self.params["bits"])
        self._encoder = skeleton(StegaEncoder, c, h, w, bits, int(self.params["width"]))
        code = (torch.rand(bits, generator=generator) < 0.5).float()
        return {"code": code, **seeded_weights(self._encoder, "encoder.", generator)}

    def _embed(self, weights: dict[str, Tensor], x: Tensor, code: Tensor) -> Tensor:
        """``x`` with the codes ``(B, bits)`` in ``{0, 1}`` hidden in it."""
        residual = torch.tanh(call_network(self._encoder, weights, "encoder.", x, code.to(x) * 2 - 1))
        return (x + float(self.params["eps"]) * residual).clamp(0, 1)

    @torch.no_grad()
    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        code = self.trigger["code"].to(x).expand(len(x), -1)
        return self._embed(self.trigger, x, code)

    def fit_trigger(self, context: TriggerContext) -> None:
        generator = torch.Generator().manual_seed(context.seed)
        c = self.image_shape[0]
        bits, width = int(self.params["bits"]), int(self.params["width"])
        decoder_net = skeleton(StegaDecoder, c, bits, width)
        weights = {**trainable_copy(self.trigger, context.device, "encoder."),
                   **trainable_copy(seeded_weights(decoder_net, "decoder.", generator), context.device)}
        optimiser = torch.optim.Adam(weights.values(), lr=self.lr)
        eps, lambda_residual = float(self.params["eps"]), float(self.params["lambda_residual"])
        batches = endless_batches(context.train, int(self.params["batch_size"]), generator, context.device)
        steps = int(self.params["steps"])
        bar = tqdm(range(steps), desc="issba: encoder + decoder",
                   disable=not context.progress, leave=False)
        for step in bar:
            x, _ = next(batches)
            codes = (torch.rand(len(x), bits, generator=generator) < 0.5).float().to(x.device)
            encoded = self._embed(weights, x, codes)
            logits = call_network(decoder_net, weights, "decoder.", encoded)
            # StegaStamp's schedule: the decoder first learns to read codes with no image loss,
            # then the residual penalty ramps up (first, second, last third of the steps)
            ramp = min(max(3 * step / steps - 1, 0.0), 1.0)
            loss = (F.binary_cross_entropy_with_logits(logits, codes)
                    + ramp * lambda_residual * ((encoded - x) / eps).pow(2).mean())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if step % 20 == 0:
                bit_accuracy = ((logits > 0).float() == codes).float().mean().item()
                bar.set_postfix(bits=f"{bit_accuracy:.1%}", residual=f"{(encoded - x).abs().mean().item():.4f}")
        self.trigger = {"code": self.trigger["code"],
                        **{k: v.detach().cpu() for k, v in weights.items() if k.startswith("encoder.")}}
