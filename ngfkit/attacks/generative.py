"""Attacks whose trigger is made per image by a small network trained with a classifier.

* ``dynamic-one`` / ``dynamic-all``: the input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020).
* ``lira``: learnable, imperceptible and robust backdoor (Doan et al., ICCV 2021).

The networks' weights are the trigger: a flat state dict in :attr:`Attack.trigger` (seeded at
construction, replaced by the learned weights in :meth:`Attack.fit_trigger`), run through
:func:`torch.func.functional_call` on a parameter-free skeleton, so a checkpoint's trigger
tensors rebuild the attack exactly. The helpers here (:class:`UNet`, :func:`seeded_weights`,
:func:`call_network`, ...) are shared with :mod:`ngfkit.attacks.issba`.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..batches import iterate_batches
from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength, TriggerContext

#: keeps tanh-rescaled outputs strictly inside (0, 1), as in the Dynamic paper's code
EPSILON = 1e-7


# -- shared helpers (also used by issba) ------------------------------------------------------


class UNet(nn.Module):
    """A small fully convolutional U-Net, ``(B, cin, H, W) -> (B, cout, H, W)``.

    Two stride-2 downsamplings and two nearest-neighbour upsamplings with skip connections, so
    ``H`` and ``W`` must be divisible by 4 (:func:`require_divisible_by_4`). No normalisation
    layers: the network is its parameters alone, a flat state dict a trigger can hold. About
    ``108 * width**2`` parameters (28k at width 16).
    """

    def __init__(self, cin: int, cout: int, width: int):
        super().__init__()
        self.inc = nn.Conv2d(cin, width, 3, padding=1)
        self.down1 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.up1 = nn.Conv2d(4 * width, width, 3, padding=1)
        self.up0 = nn.Conv2d(2 * width, width, 3, padding=1)
        self.out = nn.Conv2d(width, cout, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        full = F.relu(self.inc(x))
        half = F.relu(self.down1(full))
        quarter = F.relu(self.down2(half))
        half = F.relu(self.up1(torch.cat([F.interpolate(quarter, scale_factor=2.0), half], 1)))
        full = F.relu(self.up0(torch.cat([F.interpolate(half, scale_factor=2.0), full], 1)))
        return self.out(full)


def skeleton(factory, *args) -> nn.Module:
    """Build a module on the meta device: its shapes without memory, and without drawing from
    torch's global random state (the weights come from :func:`seeded_weights`)."""
    with torch.device("meta"):
        return factory(*args)


def seeded_weights(module: nn.Module, prefix: str, generator: torch.Generator) -> dict[str, Tensor]:
    """PyTorch's default initialisation of linear and convolution layers (weights and biases
    uniform in ``+-1/sqrt(fan_in)``), drawn from ``generator``, keyed ``prefix + name``.

    Each layer shrinks the signal a little, so a fresh generator's tanh outputs are far from
    saturation and differ between images (a saturated generator gives every image the same
    pattern and the diversity loss nothing to work with)."""
    weights = {}
    for name, param in module.named_parameters():
        layer = name.rpartition(".")[0]
        fan_in = module.get_parameter(f"{layer}.weight" if layer else "weight")[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        weights[prefix + name] = (torch.rand(param.shape, generator=generator) * 2 - 1) * bound
    return weights


def call_network(module: nn.Module, weights: dict[str, Tensor], prefix: str, *inputs: Tensor) -> Tensor:
    """Run the skeleton ``module`` with the tensors of ``weights`` whose keys start with ``prefix``
    (moved to the first input's device and dtype; a no-op, gradients kept, while training)."""
    like = inputs[0]
    own = {k[len(prefix):]: v.to(like) for k, v in weights.items() if k.startswith(prefix)}
    return torch.func.functional_call(module, own, inputs)


def require_divisible_by_4(attack: Attack) -> None:
    _, h, w = attack.image_shape
    if h % 4 or w % 4:
        raise NgfkitError(f"attack {attack.name!r} needs image height and width divisible by 4 (its "
                          f"generator downsamples twice), got {h}x{w}; resize or pad the images")


def require_positive_ints(attack: Attack, *names: str) -> None:
    for name in names:
        value = attack.params[name]
        if isinstance(value, bool) or int(value) != value or int(value) < 1:
            raise NgfkitError(f"attack {attack.name!r} parameter {name} must be a positive integer, got {value!r}")


def require_in_open_unit_interval(attack: Attack, *names: str) -> None:
    for name in names:
        value = float(attack.params[name])
        if not 0.0 < value < 1.0:
            raise NgfkitError(f"attack {attack.name!r} parameter {name} must be in (0, 1), got {value}")


def trainable_copy(weights: dict[str, Tensor], device: torch.device | str, prefix: str = "") -> dict[str, Tensor]:
    """Leaf copies (``requires_grad``) of the tensors whose keys start with ``prefix``."""
    return {k: v.detach().clone().to(device).requires_grad_() for k, v in weights.items() if k.startswith(prefix)}


def endless_batches(dataset, batch_size: int, generator: torch.Generator,
                    device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled ``(x, y)`` batches of ``dataset``, epoch after epoch."""
    while True:
        yield from iterate_batches(dataset, batch_size, shuffle=True, generator=generator,
                                   device=device, drop_last=True)


def rescale_tanh(x: Tensor) -> Tensor:
    """``tanh`` squeezed into ``(0, 1)``: the Dynamic generators' output layer."""
    return torch.tanh(x) / (2 + EPSILON) + 0.5


def mean_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-image root-mean-square distance, ``(B, ...) -> (B,)``; the tiny offset keeps the
    gradient of the square root finite when two images are equal."""
    return ((a - b).pow(2).flatten(1).mean(1) + 1e-12).sqrt()


# -- Input-aware dynamic backdoor -------------------------------------------------------------


class _DynamicBackdoor(Attack):
    """Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020).

    A pattern generator ``G`` and a mask generator ``M`` (small U-Nets, :class:`UNet`) make a
    trigger for every image: ``x' = x * (1 - m) + p * m`` with ``p = G(x)`` in ``(0, 1)``
    (``(B, C, H, W)``, tanh rescaled) and ``m = threshold(M(x))`` (``(B, 1, H, W)``, the paper's
    steep ``tanh(20 m - 10)``, nearly binary). :meth:`fit_trigger` follows the paper's two phases:

    1. ``mask_steps`` Adam steps train ``M`` alone: ``lambda_norm * mean(relu(m - mask_density))``
       (the sparsity loss, ``mask_density`` 0.032 as in the paper's code) plus the diversity loss
       ``lambda_div * ||x1 - x2|| / ||m1 - m2||``; we add ``lambda_norm * relu(mask_density -
       mean(m_i))`` per image, which keeps every mask at about the target density.
    2. ``steps`` steps train ``G`` (Adam) jointly with a fresh classifier (``context.make_model()``,
       SGD) while ``M`` is fixed: cross-entropy on a batch whose first ``poison_rate`` share is
       triggered and relabelled (the paper's ``p_attack``), whose next ``cross_ratio`` share gets
       the trigger generated from *another* image and keeps its label (cross-trigger mode), and
       the rest clean, plus the pattern diversity loss ``lambda_div * ||x1 - x2|| / ||G(x1) - G(x2)||``.

    The victim is then trained by ngfkit from scratch on data poisoned with the fixed generators
    (``poison_rate`` of it triggered, ``cross_ratio`` of it cross-triggered by
    :meth:`apply_cover`), not the jointly trained classifier of the paper.

    Deviations, forced by the CPU budget: U-Nets of width 16 without BatchNorm instead of the
    paper's deeper encoder-decoders (with BatchNorm); 80 mask steps on batches of 32 and 150
    joint steps (a third of an epoch of Fashion-MNIST) instead of 25 and hundreds of epochs; the
    classifier's SGD uses ngfkit's learning rate 0.05 (cosine) rather than 0.01 so that it
    learns in that short time; the share of triggered images per batch is ``poison_rate``; the
    lower bound on each mask's density (without it, after 80 steps, some images' masks are
    almost empty and the victim's ASR on them is near 0).
    """

    defaults = {"steps": 150, "mask_steps": 80, "batch_size": 128, "cross_ratio": 0.1,
                "mask_density": 0.032, "lambda_div": 1.0, "lambda_norm": 100.0, "width": 16}
    learned = True
    family = "generator"
    strength = Strength(None, "the trigger is what the fitted generators output; no parameter scales it "
                        "without a new fit")

    #: Adam (lr 0.01, betas 0.5/0.9) for both generators as in the paper's code
    generator_lr = 0.01
    classifier_lr = 0.05
    #: the mask phase trains a generator alone: small batches are enough and keep it cheap
    mask_batch_size = 32

    def check_params(self) -> None:
        require_positive_ints(self, "batch_size", "width")
        for name in ("steps", "mask_steps"):
            value = self.params[name]
            if isinstance(value, bool) or int(value) != value or int(value) < 0:
                raise NgfkitError(f"attack {self.name!r} parameter {name} must be an integer >= 0, got {value!r}")
        require_in_open_unit_interval(self, "cross_ratio", "mask_density")
        if self.poison_rate + float(self.params["cross_ratio"]) >= 1.0:
            raise NgfkitError(f"poison rate {self.poison_rate} plus cross_ratio {self.params['cross_ratio']} "
                              f"leaves no clean images; lower one of them")
        for name in ("lambda_div", "lambda_norm"):
            if not float(self.params[name]) >= 0.0:
                raise NgfkitError(f"attack {self.name!r} parameter {name} must be >= 0, got {self.params[name]}")
        require_divisible_by_4(self)

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        c = self.image_shape[0]
        width = int(self.params["width"])
        self._pattern_net = skeleton(UNet, c, c, width)
        self._mask_net = skeleton(UNet, c, 1, width)
        return {**seeded_weights(self._pattern_net, "pattern_generator.", generator),
                **seeded_weights(self._mask_net, "mask_generator.", generator)}

    def _pattern(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return rescale_tanh(call_network(self._pattern_net, weights, "pattern_generator.", x))

    def _mask(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        mask = rescale_tanh(call_network(self._mask_net, weights, "mask_generator.", x))
        return rescale_tanh(20 * mask - 10)

    @staticmethod
    def _stamp(x: Tensor, pattern: Tensor, mask: Tensor) -> Tensor:
        return (x * (1 - mask) + pattern * mask).clamp(0, 1)

    @torch.no_grad()
    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self._stamp(x, self._pattern(self.trigger, x), self._mask(self.trigger, x))

    def cover_fraction(self) -> float:
        return float(self.params["cross_ratio"])

    @torch.no_grad()
    def apply_cover(self, x: Tensor, y: Tensor) -> Tensor:
        """Cross-trigger: each image gets the pattern and mask generated from another image of the
        batch (a random cyclic shift of a random order, so never its own); a single image is paired
        with itself rotated by 180 degrees, which gives it a different trigger."""
        self.check_input(x)
        if len(x) == 1:
            partners = x.flip(-1, -2)
        else:
            order = torch.randperm(len(x)).to(x.device)
            partners = torch.empty_like(x)
            partners[order] = x[order.roll(1)]
        return self._stamp(x, self._pattern(self.trigger, partners), self._mask(self.trigger, partners))

    def fit_trigger(self, context: TriggerContext) -> None:
        torch.manual_seed(context.seed)
        weights = trainable_copy(self.trigger, context.device)
        self._fit_mask(weights, context)
        self._fit_pattern(weights, context)
        self.trigger = {k: v.detach().cpu() for k, v in weights.items()}

    def _paired_batches(self, context: TriggerContext, batch_size: int):
        """Two independently shuffled streams of batches (the paper's two data loaders)."""
        return zip(*(endless_batches(context.train, batch_size, torch.Generator().manual_seed(context.seed + i),
                                     context.device) for i in (0, 1)))

    def _fit_mask(self, weights: dict[str, Tensor], context: TriggerContext) -> None:
        mask_weights = [v for k, v in weights.items() if k.startswith("mask_generator.")]
        optimiser = torch.optim.Adam(mask_weights, lr=self.generator_lr, betas=(0.5, 0.9))
        density = float(self.params["mask_density"])
        lambda_div, lambda_norm = float(self.params["lambda_div"]), float(self.params["lambda_norm"])
        batches = self._paired_batches(context, min(self.mask_batch_size, int(self.params["batch_size"])))
        bar = tqdm(range(int(self.params["mask_steps"])), desc=f"{self.name}: mask generator",
                   disable=not context.progress, leave=False)
        for step in bar:
            (x1, _), (x2, _) = next(batches)
            n = min(len(x1), len(x2))
            x1, x2 = x1[:n], x2[:n]
            mask1, mask2 = self._mask(weights, x1), self._mask(weights, x2)
            # the paper's sparsity loss pushes every pixel down; the second term stops any image's
            # mask from vanishing below the target density (in a short training some do, and
            # those images get no trigger)
            loss_norm = F.relu(mask1 - density).mean() + F.relu(density - mask1.flatten(1).mean(1)).mean()
            loss_div = (mean_distance(x1, x2) / (mean_distance(mask1, mask2) + EPSILON)).mean()
            loss = lambda_norm * loss_norm + lambda_div * loss_div
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if step % 20 == 0:
                bar.set_postfix(density=f"{mask1.mean().item():.3f}", div=f"{loss_div.item():.2f}")
        for v in mask_weights:
            v.requires_grad_(False)

    def _fit_pattern(self, weights: dict[str, Tensor], context: TriggerContext) -> None:
        classifier = context.make_model().to(context.device).train()
        steps = int(self.params["steps"])
        pattern_weights = [v for k, v in weights.items() if k.startswith("pattern_generator.")]
        optimiser_g = torch.optim.Adam(pattern_weights, lr=self.generator_lr, betas=(0.5, 0.9))
        optimiser_c = torch.optim.SGD(classifier.parameters(), lr=self.classifier_lr, momentum=0.9,
                                      weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser_c, max(1, steps))
        lambda_div = float(self.params["lambda_div"])
        cross_ratio = float(self.params["cross_ratio"])
        batches = self._paired_batches(context, int(self.params["batch_size"]))
        bar = tqdm(range(steps), desc=f"{self.name}: pattern generator + classifier",
                   disable=not context.progress, leave=False)
        for step in bar:
            (x1, y1), (x2, _) = next(batches)
            n = min(len(x1), len(x2))
            x1, y1, x2 = x1[:n], y1[:n], x2[:n]
            # at least one triggered and one cross image per batch, and a clean one where there is room
            num_bd = max(1, round(self.poison_rate * n))
            num_cross = max(1, min(round(cross_ratio * n), n - num_bd - 1))
            cross = slice(num_bd, num_bd + num_cross)
            with torch.no_grad():
                mask_bd, mask_cross = self._mask(weights, x1[:num_bd]), self._mask(weights, x2[cross])
            pattern_bd, pattern_cross = self._pattern(weights, x1[:num_bd]), self._pattern(weights, x2[cross])
            inputs = torch.cat([self._stamp(x1[:num_bd], pattern_bd, mask_bd),
                                self._stamp(x1[cross], pattern_cross, mask_cross), x1[num_bd + num_cross:]])
            labels = torch.cat([self.target_labels(y1[:num_bd]), y1[num_bd:]])
            loss_ce = F.cross_entropy(classifier(inputs), labels)
            pairs = min(num_bd, num_cross)
            loss_div = (mean_distance(x1[:pairs], x2[num_bd:num_bd + pairs])
                        / (mean_distance(pattern_bd[:pairs], pattern_cross[:pairs]) + EPSILON)).mean()
            loss = loss_ce + lambda_div * loss_div
            optimiser_g.zero_grad(set_to_none=True)
            optimiser_c.zero_grad(set_to_none=True)
            loss.backward()
            optimiser_g.step()
            optimiser_c.step()
            schedule.step()
            if step % 20 == 0:
                bar.set_postfix(ce=f"{loss_ce.item():.3f}", div=f"{loss_div.item():.2f}")


@ATTACKS.register("dynamic-one")
class DynamicOne(_DynamicBackdoor):
    __doc__ = _DynamicBackdoor.__doc__ + "\n    ``dynamic-one``: every triggered image goes to ``target``.\n"
    name = "dynamic-one"
    modes = ("all-to-one",)
    order, paper_order = 0, 6
    # most of the steps on smaller batches (the mask phase, whose batch is min(32, batch_size),
    # is then the full fit's): about 26 s of CPU
    short_fit = {"batch_size": 32, "steps": 75}


@ATTACKS.register("dynamic-all")
class DynamicAll(_DynamicBackdoor):
    __doc__ = _DynamicBackdoor.__doc__ + (
        "\n    ``dynamic-all``: a triggered image of class ``y`` goes to ``(y + 1) mod C``. It trains the"
        "\n    pattern generator for 210 steps rather than 150: the victim must both see the trigger and"
        "\n    recognise the class it maps from, and a longer-trained generator helps (ASR 80% -> 83%).\n")
    name = "dynamic-all"
    modes = ("all-to-all",)
    defaults = {**_DynamicBackdoor.defaults, "steps": 210}
    order, paper_order = 1, 7
    short_fit = {"batch_size": 32, "steps": 105}  # as dynamic-one's: about 32 s of CPU


# -- LIRA --------------------------------------------------------------------------------------


@ATTACKS.register("lira")
class Lira(Attack):
    """LIRA (Doan et al., ICCV 2021): a learned, imperceptible, sample-specific additive trigger.

    A generator ``T`` (a small :class:`UNet`) makes ``x' = clamp(x + eps * tanh(T(x)), 0, 1)``
    for ``x`` of shape ``(B, C, H, W)``, so ``|x' - x| <= eps`` everywhere. :meth:`fit_trigger`
    is LIRA's stage 1: ``T`` and a fresh classifier (``context.make_model()``) are trained
    together for ``steps`` batches, the classifier on ``alpha * CE(f(x), y) + (1 - alpha) *
    CE(f(x'), target)`` and the generator to make ``f(x')`` the target against the current
    classifier.

    Deviations: the paper alternates the two updates and steps the generator against a
    look-ahead (one unrolled SGD step) copy of the classifier; here both take a step from the
    gradients of the same batch loss (simultaneous updates, no unrolling, half the cost), for
    160 batches of 64 instead of many epochs, with a U-Net of width 16 as the generator. LIRA's
    stage 2 fine-tunes the stage-1 classifier on poisoned data; here the victim is trained by
    ngfkit from scratch on data poisoned with the fixed generator. ``eps`` = 0.05, the top of
    the paper's range (0.01-0.05), so that one epoch of victim training on Fashion-MNIST
    learns the trigger.
    """

    name = "lira"
    defaults = {"eps": 0.05, "steps": 160, "batch_size": 64, "alpha": 0.5, "width": 16}
    learned = True
    family, order, paper_order = "generator", 2, 10
    short_fit = {"batch_size": 16, "steps": 80}  # most of the steps on smaller batches: about 16 s of CPU
    strength = Strength("eps", "L∞ bound ε of the generator's residual (fitted at the default; other values "
                        "rescale the same generator's output)", 0.0, 0.3, 0.025)

    #: Adam for the generator; the paper's 1e-4 is too slow for a few hundred steps
    generator_lr = 1e-3
    classifier_lr = 0.05

    def check_params(self) -> None:
        require_positive_ints(self, "batch_size", "width")
        steps = self.params["steps"]
        if isinstance(steps, bool) or int(steps) != steps or int(steps) < 0:
            raise NgfkitError(f"attack 'lira' parameter steps must be an integer >= 0, got {steps!r}")
        require_in_open_unit_interval(self, "eps", "alpha")
        require_divisible_by_4(self)

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        c = self.image_shape[0]
        self._generator_net = skeleton(UNet, c, c, int(self.params["width"]))
        return seeded_weights(self._generator_net, "generator.", generator)

    def _poison(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        noise = torch.tanh(call_network(self._generator_net, weights, "generator.", x))
        return (x + float(self.params["eps"]) * noise).clamp(0, 1)

    @torch.no_grad()
    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self._poison(self.trigger, x)

    def fit_trigger(self, context: TriggerContext) -> None:
        torch.manual_seed(context.seed)
        weights = trainable_copy(self.trigger, context.device)
        classifier = context.make_model().to(context.device).train()
        steps = int(self.params["steps"])
        optimiser_g = torch.optim.Adam(weights.values(), lr=self.generator_lr)
        optimiser_c = torch.optim.SGD(classifier.parameters(), lr=self.classifier_lr, momentum=0.9,
                                      weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser_c, max(1, steps))
        alpha = float(self.params["alpha"])
        batches = endless_batches(context.train, int(self.params["batch_size"]),
                                  torch.Generator().manual_seed(context.seed), context.device)
        bar = tqdm(range(steps), desc="lira: generator + classifier", disable=not context.progress, leave=False)
        for step in bar:
            x, y = next(batches)
            # one forward pass on clean and poisoned images together keeps BatchNorm's statistics
            # those of the mixture the classifier is trained on
            logits = classifier(torch.cat([x, self._poison(weights, x)]))
            loss_clean = F.cross_entropy(logits[: len(x)], y)
            loss_poison = F.cross_entropy(logits[len(x):], self.target_labels(y))
            optimiser_g.zero_grad(set_to_none=True)
            optimiser_c.zero_grad(set_to_none=True)
            (alpha * loss_clean + (1 - alpha) * loss_poison).backward()
            optimiser_c.step()
            optimiser_g.step()
            schedule.step()
            if step % 20 == 0:
                bar.set_postfix(clean=f"{loss_clean.item():.3f}", poison=f"{loss_poison.item():.3f}")
        self.trigger = {k: v.detach().cpu() for k, v in weights.items()}
