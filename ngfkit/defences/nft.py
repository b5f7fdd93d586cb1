"""NFT, neural mask fine-tuning (Karim et al., ECCV 2024, *Augmented Neural Fine-Tuning for
Efficient Backdoor Purification*, arXiv 2407.10052; code ``nazmul-karim170/NFT``,
``src/Remove_Backdoor.py`` and ``src/networks/mask_filter.py``).

NFT does not tune weights. Every neuron gets a mask ``m`` (init 1), and only the masks are
trained on a few clean images. MixUp stands in for the trigger synthesis or adversarial neuron
noise that earlier defences need (ANP, I-BAU), and a regulariser keeps the masks near 1 so the
model does not drift. The loss of a batch, mixed as ``λ x + (1 − λ) x[π]`` with
``λ ~ Beta(1, 1)`` and ``π`` a random permutation of the batch, is

    λ CE(f(x̃), y) + (1 − λ) CE(f(x̃), y[π]) + η Σ_l Σ_c |1 − m_lc| / N_c,

where ``N_c`` is the number of clean images per class. After every step the masks of the l-th
masked layer (l = 1, 2, … in order) are clipped to ``[α e^(−β l), 1]``, so deeper layers may be
damped further.

What is masked (the authors' code, ``Masked_BN2d``/``Masked_BN1d``): the per-channel weight (γ)
of the BatchNorm layers, not their bias (β) and not the classifier. A masked channel is scaled,
not switched off: its output becomes ``γ m x̂ + β``.

The authors' setting: SGD lr 0.05, momentum 0.95, no weight decay; batches of 128 drawn with
replacement; 1,000 iterations; ``CosineAnnealingLR(T_max=5, eta_min=0.02)`` stepped after each
block of 200 iterations (the lr is 0.05, 0.047, 0.040, 0.030, 0.023 in the five blocks); MixUp
``Beta(1, 1)``; η = 0.001; α = 0.8, β = 0.5; random crop (pad 4) and flip; BatchNorm in train
mode (batch statistics); 1 % of CIFAR-10's training set (500 images).

Here: :class:`NFT`, trained through :func:`ngfkit.train.train_model` with the masks as its only
parameters. The masks are attached with :mod:`torch.nn.utils.parametrize`, so the model's own
forward runs; MixUp is drawn by the step hooks and applied on the way into the model; the
clipping is the hooks' ``after_step``. At the end each mask is multiplied into its weight
(``remove_parametrizations(..., leave_parametrized=True)``): the returned model has the input's
architecture and state-dict keys, and differs from it only in the masked tensors, each scaled
per output channel by a factor in ``[α e^(−β l), 1]``.

Our defaults and every deviation:

- 300 steps, not 1,000 (the budget of ``anp``): about 45 s on a 2-core CPU for ``smallcnn``
  and 600 Fashion-MNIST images at 28×28 (measured: 0.15 s a step with batches of 128, both cores
  shared with another job; less when they are free). That is 38,400 images seen, 64 passes over
  600; the authors' 1,000 steps (128,000 images, 256 passes over their 500) would take about
  2.5 minutes there. Batches of 128, drawn with replacement, as the authors do.
- The cosine schedule runs per step, from ``lr`` down to ``final_lr_ratio`` × ``lr`` (0.4: the
  authors' 0.02 / 0.05), not per block of 200 iterations. At other learning rates the floor
  scales with ``lr``; the authors' floor is a fixed 0.02.
- BatchNorm uses its running statistics (eval mode) while the masks are fitted, so the masks fit
  the network as it is deployed and no buffer moves. The authors' loop runs in train mode, and
  its running statistics drift with the mixed images; ``batch_stats=True`` restores that, and
  the returned model then keeps the running statistics the run moved, as the authors' checkpoint
  does.
- Every affine BatchNorm (1d, 2d, 3d) that the forward pass runs is masked, the first one
  included; the authors' ResNet leaves its stem BatchNorm unmasked (a plain ``BatchNorm2d``).
  The layer index ``l`` of the clipping range counts the masked layers in the order a forward
  pass first runs them (the authors: their order in ``named_parameters``, the same for their
  ResNets), so our floors sit one layer earlier than theirs on a ResNet.
- A model with no affine BatchNorm (the authors' code needs one) is masked on the output
  channels of its ``nn.Conv1d/2d/3d`` and ``nn.Linear`` layers, weight and bias together, the
  classifier excepted (``layers="conv"``; ``"auto"``, the default, picks ``"norm"`` whenever
  there is an affine BatchNorm). This is our extension, not the paper's.
- The masks are folded into the weights; the authors save them as extra ``neuron_mask`` keys of
  the state dict.
- ``N_c`` is the clean set's size over the model's number of outputs (the authors: over the
  dataset's number of classes, 10). MixUp's λ and permutation come from a generator seeded by
  ``seed`` (the authors: the global RNGs).
- The released training function updates accuracy counters it never defines (``total``,
  ``correct``), so it cannot run as stored; we follow its evident intent (the loss above).
- The strength is the mask learning rate, ``lr`` (default the authors' 0.05); the paper tunes
  no knob on data.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import Dataset

from .. import validation as check
from ..batches import iterate_batches
from ..errors import NgfkitError
from ..train import StepHooks, TrainConfig, frozen_except, train_model
from .base import DEFENCES, Defence

LAYER_CHOICES = ("auto", "norm", "conv")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NEURONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class NFTConfig:
    """Options of :class:`NFT`; the defaults are the authors' except ``steps`` (they: 1,000)."""

    lr: float = 0.05  # mask learning rate (the strength)
    steps: int = 300  # authors: 1,000 (see the module docstring)
    batch_size: int = 128
    momentum: float = 0.95
    final_lr_ratio: float = 0.4  # cosine from lr to lr * final_lr_ratio (authors: 0.05 -> 0.02)
    alpha: float = 0.8  # masks of the l-th masked layer are clipped to [alpha * exp(-beta * l), 1]
    beta: float = 0.5
    reg: float = 0.001  # η, the weight of the mask regulariser sum |1 - m| / (clean images per class)
    mixup_alpha: float = 1.0  # MixUp's λ ~ Beta(mixup_alpha, mixup_alpha); 0: no mixing
    layers: str = "auto"  # "norm": BatchNorm weights (authors); "conv": conv/linear outputs; "auto"
    augment: bool = True  # random crop (pad 4) and flip before mixing, as the authors' loader does
    batch_stats: bool = False  # True: BatchNorm in train mode while fitting (authors)
    seed: int = 0

    def __post_init__(self):
        self.lr = check.positive(self.lr, "nft lr")
        self.steps = check.whole(self.steps, "nft steps", least=1)
        self.batch_size = check.whole(self.batch_size, "nft batch_size", least=1)
        self.momentum = check.number(self.momentum, "nft momentum", low=0.0, high=1.0, high_open=True)
        self.final_lr_ratio = check.number(self.final_lr_ratio, "nft final_lr_ratio", low=0.0)
        self.alpha = check.number(self.alpha, "nft alpha", low=0.0, high=1.0,
                                  fix="it scales the masks' lower bound alpha * exp(-beta * l); masks are at most 1")
        self.beta = check.number(self.beta, "nft beta", low=0.0,
                                 fix="it is the decay of the masks' lower bound with depth")
        self.reg = check.number(self.reg, "nft reg", low=0.0,
                                fix="it weighs the mask regulariser; the authors use 0.001")
        self.mixup_alpha = check.number(self.mixup_alpha, "nft mixup_alpha", low=0.0,
                                        fix="it is MixUp's Beta parameter; 0 turns mixing off")
        if self.layers not in LAYER_CHOICES:
            raise NgfkitError(f"nft layers must be one of {', '.join(LAYER_CHOICES)}, got {self.layers!r}")
        check.like_default(self.augment, True, "nft augment")
        check.like_default(self.batch_stats, False, "nft batch_stats")
        self.seed = check.whole(self.seed, "nft seed")


def mask_floors(count: int, alpha: float, beta: float) -> list[float]:
    """The lower clipping bounds ``alpha * exp(-beta * l)`` of ``count`` masked layers, ``l = 1 .. count``."""
    return [alpha * math.exp(-beta * l) for l in range(1, count + 1)]


def _run_order(net: nn.Module, x: Tensor, kinds: tuple[type, ...]) -> tuple[list[str], int]:
    """Names of the ``kinds`` modules in the order one forward pass first runs them, and the
    width of the model's output (its number of classes)."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: order.append(name))
               for name, m in net.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            logits = net.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order)), logits.shape[-1]


def _masked_layers(net: nn.Module, x: Tensor, layers: str) -> tuple[str, list[str], int]:
    """``(mode, names of the masked modules in run order, number of classes)``."""
    modules = dict(net.named_modules())
    order, classes = _run_order(net, x, _NORMS + _NEURONS)
    norms = [n for n in order if isinstance(modules[n], _NORMS) and modules[n].weight is not None]
    mode = ("norm" if norms else "conv") if layers == "auto" else layers
    if mode == "norm":
        if not norms:
            raise NgfkitError("nft layers='norm' masks BatchNorm channels, and this model runs no affine BatchNorm "
                              "layer; use layers='conv' (its conv and linear outputs) or another defence")
        return mode, norms, classes
    neurons = [n for n in order if isinstance(modules[n], _NEURONS)]
    head = getattr(net, "classifier_name", None)
    neurons = [n for n in neurons if n != head] if head in neurons else neurons[:-1]
    if not neurons:
        raise NgfkitError("nft masks the outputs of conv and linear layers before the classifier, and this model "
                          "has none; use another defence")
    return mode, neurons, classes


class _ChannelMask(nn.Module):
    """A parametrization: the tensor scaled along its first (output) axis by ``mask``."""

    def __init__(self, mask: nn.Parameter):
        super().__init__()
        self.mask = mask

    def forward(self, tensor: Tensor) -> Tensor:
        return tensor * self.mask.view(-1, *([1] * (tensor.dim() - 1)))


def _attach(module: nn.Module, mode: str) -> nn.Parameter:
    """One mask of ones per output channel of ``module``, parametrizing its weight (and, for a
    conv or linear layer, its bias too: the whole neuron is scaled)."""
    weight = module.weight
    mask = nn.Parameter(torch.ones(weight.shape[0], device=weight.device, dtype=weight.dtype))
    parametrize.register_parametrization(module, "weight", _ChannelMask(mask))
    if mode == "conv" and module.bias is not None:
        parametrize.register_parametrization(module, "bias", _ChannelMask(mask))
    return mask


def _fold(module: nn.Module, order: list[str]) -> None:
    """Multiply the masks into the weights and drop the parametrizations: the plain module again,
    its parameters re-registered in their original ``order`` (so the state dict's keys are too)."""
    for name in list(module.parametrizations.keys()):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for name in order:
        param = getattr(module, name)
        delattr(module, name)
        module.register_parameter(name, param)


class _MixUp(StepHooks):
    """NFT's step: ``on_batch`` draws λ and a permutation of the batch, ``mix`` applies them to the
    model's input, ``extra_loss`` turns the loop's cross-entropy into MixUp's and adds the mask
    regulariser, ``after_step`` clips the masks to their ranges."""

    def __init__(self, masks: list[nn.Parameter], floors: list[float], cfg: NFTConfig, per_class: float):
        self.masks, self.floors, self.cfg, self.per_class = masks, floors, cfg, per_class
        self.rng = np.random.default_rng(cfg.seed + 1)  # the same draws on every device
        self.lam = 1.0
        self.perm: Tensor | None = None

    def on_batch(self, x, y):
        a = self.cfg.mixup_alpha
        self.lam = float(self.rng.beta(a, a)) if a > 0 else 1.0
        self.perm = torch.as_tensor(self.rng.permutation(len(x)), device=x.device) if a > 0 else None

    def mix(self, x: Tensor) -> Tensor:
        if self.perm is None:
            return x
        return self.lam * x + (1 - self.lam) * x[self.perm]

    def extra_loss(self, x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        # the loop adds CE(logits, y); MixUp's loss is λ CE(logits, y) + (1 − λ) CE(logits, y[π])
        loss = logits.new_zeros(())
        if self.perm is not None:
            loss = (1 - self.lam) * (F.cross_entropy(logits, y[self.perm]) - F.cross_entropy(logits, y))
        if self.cfg.reg:
            loss = loss + self.cfg.reg * sum((1 - m).abs().sum() for m in self.masks) / self.per_class
        return loss

    def after_step(self, lr):
        with torch.no_grad():
            for mask, floor in zip(self.masks, self.floors):
                mask.clamp_(floor, 1.0)


class _MixedInput(nn.Module):
    """Exists only while NFT trains: the masked copy, fed the batch as the hooks mixed it."""

    def __init__(self, net: nn.Module, mixup: _MixUp):
        super().__init__()
        self.net = net
        self.mixup = mixup

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.mixup.mix(x))


def _stats(mask: Tensor, floor: float) -> dict[str, float]:
    return {"floor": floor, "min": float(mask.min()), "mean": float(mask.mean()), "max": float(mask.max())}


@DEFENCES.register("nft")
class NFT(Defence):
    """NFT (Karim et al., ECCV 2024): per-neuron masks, trained on MixUp of the clean images with a
    regulariser holding them near 1 and each layer's masks clipped to ``[α e^(−β l), 1]``, then
    multiplied into the weights. See the module docstring for the authors' setting and ours."""

    name = "nft"
    Config = NFTConfig
    strength = "lr"
    strength_grid = (0.01, 0.02, 0.05, 0.1, 0.2)

    def run(self, model: nn.Module, clean_data: Dataset, *, device, progress, features=None):
        cfg = self.config
        net = copy.deepcopy(model).to(device)
        batch_size = min(cfg.batch_size, len(clean_data))
        x, _ = next(iterate_batches(clean_data, batch_size, device=device))
        mode, names, classes = _masked_layers(net, x, cfg.layers)
        modules = dict(net.named_modules())
        floors = mask_floors(len(names), cfg.alpha, cfg.beta)
        orders = {n: [p for p, _ in modules[n].named_parameters(recurse=False)] for n in names}
        masks = [_attach(modules[n], mode) for n in names]
        mixup = _MixUp(masks, floors, cfg, per_class=len(clean_data) / classes)
        mixed = _MixedInput(net, mixup)
        trace: dict[str, list[float]] = {"mask_min": [], "mask_mean": []}

        def on_step(step: int, loss: float) -> None:
            with torch.no_grad():
                every = torch.cat([m.detach().flatten() for m in masks])
            trace["mask_min"].append(float(every.min()))
            trace["mask_mean"].append(float(every.mean()))

        train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, final_lr_ratio=cfg.final_lr_ratio,
                                momentum=cfg.momentum, weight_decay=0.0, batch_size=batch_size,
                                augment=cfg.augment)
        with frozen_except(mixed, masks):
            fit = train_model(mixed, clean_data, train_cfg, seed=cfg.seed, device=device, progress=progress,
                              desc=self.name, params=masks, train_mode=cfg.batch_stats, hooks=mixup,
                              on_step=on_step, extra_loss=mixup.extra_loss, replacement=True)
        final = {n: m.detach().cpu().clone() for n, m in zip(names, masks)}
        for n in names:
            _fold(modules[n], orders[n])
        history = {"loss": fit["loss"], "layers": mode, "masked": names,
                   "mask_stats": {n: _stats(final[n], f) for n, f in zip(names, floors)},
                   "masks": {n: m.tolist() for n, m in final.items()},
                   "num_neurons": sum(len(m) for m in final.values()),
                   "clean_per_class": len(clean_data) / classes, **trace}
        return net.eval(), history
