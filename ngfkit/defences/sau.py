"""Shared Adversarial Unlearning (``sau``).

Wei, Zhang, Zha, Wu: "Shared Adversarial Unlearning: Backdoor Mitigation by Unlearning Shared
Adversarial Examples", NeurIPS 2023 (arXiv 2307.10562). The authors' implementation is
BackdoorBench's ``defense/sau.py`` (class ``Shared_PGD`` for the attack, ``sau.mitigation`` for the
unlearning loop), with its defaults in ``config/defense/sau/config.yaml`` and the optimiser built by
``utils/aggregate_block/train_settings_generate.py`` (``argparser_opt_scheduler``).

The idea: an adversarial example that fools the backdoored model ``h₀`` (kept frozen as a reference)
*and* the model being purified ``h`` into the *same* wrong class behaves like a poisoned input, so
the model is trained on the clean set while being pushed off the reference's adversarial class on
such examples. Each step, on each clean batch ``(x, y)``:

* **maximisation** (:func:`shared_pgd`): an L∞ PGD perturbation ``δ`` (bound ε = 0.2, 5 signed
  steps of 0.2, started at ``δ = +ε``) descends ``β₁ L_adv + β₂ L_share`` with β₁ = 0.01, β₂ = 1:
  ``L_adv = −[Σ_{i: h not fooled} CE(h(x_i+δ_i), y_i) + Σ_{i: h₀ not fooled} CE(h₀(x_i+δ_i), y_i)] / 2B``
  (fooled: the prediction on ``x + δ`` differs from the one on ``x``) and
  ``L_share = Σ_{i not yet shared} JS(softmax h(x_i+δ_i) ‖ softmax h₀(x_i+δ_i)) / B``
  (shared: both fooled, into the same class; probabilities clamped at 1e-8); the attack stops
  early once every image of the batch is shared. Both models are in eval mode.
* **minimisation**: ``λ₁ CE(h(x), y) + λ₂ CE(h(x+δ), y) + λ₃ L_sar`` with λ = (1, 0, 1), where the
  shared adversarial risk is taken over the images on which the reference is fooled
  (``h₀(x+δ) ≠ y`` and ``h₀(x+δ) ≠ h₀(x)``), with ``ŷ₀ = argmax h₀(x+δ)`` and ``p = softmax h(x+δ)``:
  ``L_sar = [−Σ log(1e-6 + min(1 − p_ŷ₀, 0.999)) − Σ log(1 + 1e-6 − max(p_ŷ₀, 0.001))] / 2B``
  (the authors write the same term twice, for numerical reasons; so does this module).

Authors' values (CIFAR-10, also GTSRB / CIFAR-100 / Tiny): 5 % clean data (2,500 CIFAR-10
images), batches of 256 without augmentation, 100 rounds (epochs over the clean set, about 1,000
steps), Adam with ``amsgrad=True``, lr 1e-4, betas (0.9, 0.999), no weight decay, a constant
learning rate (a cosine scheduler is built but never stepped), every parameter that requires a
gradient trained, the model in eval mode throughout (``train_mode`` off: BatchNorm's statistics never
move; its affine weights train), one outer step per batch; ε 0.2, PGD step 0.2, 5 PGD steps,
``init = max``, β₁ 0.01, β₂ 1, λ₁ 1, λ₂ 0, λ₃ 1. All of these are our defaults except the budget.

Deviations:

* **Budget**: 50 steps of 128 images (6,400 images seen, about 11 epochs of a 600-image clean
  set) instead of 100 epochs of 256 (``steps`` and ``batch_size``). Each step costs roughly a
  dozen plain fine-tuning steps (5 PGD steps through two models, forward and backward, then the
  unlearning pass and the reference's passes): on 600 Fashion-MNIST 28×28 images with ``smallcnn``
  a step of 128 takes about 1.2 s on one busy CPU core, so a default run about 60 s; the authors'
  100 epochs of our 600 images (about 470 steps of 128) would take about 9 to 10 minutes there,
  their CIFAR-10 run (1,000 steps of 256 on PreAct-ResNet-18) hours; on a GPU, seconds to minutes.
  ``steps`` is the strength knob; the learning rate is constant and the PGD is deterministic, so
  the model after ``k`` steps of one run is the ``k``-step run and :meth:`path` reads every step
  count off one run.
* **Optimiser through the one loop**: :func:`ngfkit.train.train_model` runs SGD; with momentum
  and weight decay 0 its step is ``θ ← θ − lr·g``, and :class:`SharedAdversarialUnlearning`'s
  ``precondition`` replaces ``g`` by AMSGrad's direction ``m̂ / (√max v / √(1 − β₂ᵗ) + 1e-8)``, so the
  update is exactly ``torch.optim.Adam(amsgrad=True)``'s.
* **Pixel range**: ``x + δ`` is kept in ``[0, 1]`` (δ is projected onto ``[−x, 1 − x]`` after the
  L∞ ball): the models here take pixel images and normalise inside. The authors add δ to
  denormalised images with that clamp commented out ("not necessary for backdoor defense").
* **Batches**: the loop drops the last incomplete batch of each (seeded, reshuffled) epoch; the
  authors keep it. The clean images' labels of the model and the reference are computed once per
  batch, not again at every PGD step (the models do not change within the attack, so the values
  are the same).
* ``train_mode=True`` (off by default, as for the authors): the authors pass clean and perturbed
  images through the model as one batch in train mode; here the loop's clean pass moves
  BatchNorm's statistics and the perturbed pass runs on its own batch statistics without moving
  them. The attack always runs in eval mode (as the authors'), so its passes never move them.
* ``pgd_init`` offers the authors' deterministic starts ``max``, ``min`` and ``zero``, not their
  ``random`` (``torch.rand`` in ``[0, 1]`` clipped to ``[−ε, ε]``).
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import validation as check
from ..errors import NgfkitError
from ..train import StepHooks, TrainConfig, frozen_except, to_channels_last, train_model, use_channels_last
from .base import DEFENCES
from .finetune import StepsDefence

#: AMSGrad's constants in the authors' run (``adam_betas`` and torch's default ``eps``)
BETAS = (0.9, 0.999)
EPS = 1e-8
PGD_INITS = ("max", "min", "zero")


@dataclass
class SAUConfig:
    """Options of :class:`SAU`; every default is the authors' except ``steps`` and ``batch_size``
    (see the module docstring)."""

    steps: int = 50  # the authors: 100 epochs of the clean set (about 1,000 steps of 256 on CIFAR-10)
    batch_size: int = 128  # the authors: 256
    lr: float = 1e-4  # AMSGrad, constant
    bound: float = 0.2  # ε, L∞ bound of δ in pixel units (trigger_norm)
    pgd_steps: int = 5  # adv_steps
    pgd_step_size: float = 0.2  # adv_lr
    pgd_init: str = "max"  # δ starts at +ε ("max"), −ε ("min") or 0 ("zero")
    adversarial_weight: float = 0.01  # β₁, weight of L_adv in the attack
    agreement_weight: float = 1.0  # β₂, weight of L_share (JS divergence) in the attack
    clean_weight: float = 1.0  # λ₁, weight of the clean cross-entropy
    robust_weight: float = 0.0  # λ₂, weight of CE(h(x + δ), y) (adversarial training; off)
    shared_weight: float = 1.0  # λ₃, weight of the shared adversarial risk L_sar
    train_mode: bool = False  # BatchNorm in train mode while unlearning (the authors: off)
    augment: bool = False  # random crop and flip of every batch (the authors: none)
    seed: int = 0

    def __post_init__(self):
        self.steps = check.whole(self.steps, "sau steps", least=1)
        self.batch_size = check.whole(self.batch_size, "sau batch_size", least=1)
        self.pgd_steps = check.whole(self.pgd_steps, "sau pgd_steps", least=0)
        self.seed = check.whole(self.seed, "sau seed")
        self.lr = check.positive(self.lr, "sau lr")
        self.bound = check.positive(self.bound, "sau bound",
                                    "it is ε, the L∞ bound in pixel units; the authors use 0.2")
        self.pgd_step_size = check.positive(self.pgd_step_size, "sau pgd_step_size")
        for name in ("adversarial_weight", "agreement_weight", "clean_weight", "robust_weight", "shared_weight"):
            setattr(self, name, check.number(getattr(self, name), f"sau {name}", low=0.0))
        if self.pgd_init not in PGD_INITS:
            raise NgfkitError(f"sau pgd_init must be one of {', '.join(PGD_INITS)}, got {self.pgd_init!r}")
        check.like_default(self.train_mode, False, "sau train_mode")
        check.like_default(self.augment, False, "sau augment")


@contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Run ``models`` in eval mode (BatchNorm uses, and never moves, its running statistics; dropout
    off), restoring each module's previous mode afterwards."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def still_statistics(model: nn.Module) -> Iterator[None]:
    """A pass in train mode that normalises with its batch's statistics but moves no BatchNorm
    buffer (running mean, variance and ``num_batches_tracked`` are left as they were)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def perturb(x: Tensor, delta: Tensor) -> Tensor:
    """``x + δ`` kept inside the valid pixel range."""
    return (x + delta).clamp(0, 1)


def project(x: Tensor, delta: Tensor, bound: float) -> Tensor:
    """``δ`` clipped to the L∞ ball of radius ``bound`` and to ``[−x, 1 − x]`` (so ``x + δ`` is an image)."""
    return perturb(x, delta.clamp(-bound, bound)) - x


def js_divergence(logits: Tensor, other: Tensor) -> Tensor:
    """Per-row Jensen-Shannon divergence of the two softmax distributions (probabilities clamped at
    1e-8, as the authors)."""
    p = F.softmax(logits, dim=1).clamp(min=1e-8)
    q = F.softmax(other, dim=1).clamp(min=1e-8)
    mix = 0.5 * (p + q)
    return (0.5 * (p * p.log() + q * q.log()) - 0.5 * (p * mix.log() + q * mix.log())).sum(dim=1)


def shared_pgd(model: nn.Module, reference: nn.Module, x: Tensor, y: Tensor, *, bound: float = 0.2,
               step_size: float = 0.2, steps: int = 5, adversarial_weight: float = 0.01,
               agreement_weight: float = 1.0, init: str = "max",
               clean_reference: Tensor | None = None) -> tuple[Tensor, dict]:
    """The authors' ``Shared_PGD.attack``: a perturbation ``δ`` (one per image, ``|δ| ≤ bound`` and
    ``x + δ`` in ``[0, 1]``) that fools ``model`` and ``reference`` into the same wrong class.

    Both models run in eval mode (their BatchNorm statistics do not move) and only ``δ`` gets a
    gradient. ``clean_reference`` are the reference's predictions on ``x``, if already known. Returns
    ``(δ, stats)``: the share of the batch fooling the model, the reference, and both into one class
    at the last iterate measured, and the number of PGD steps taken.
    """
    x = x.detach()
    delta = torch.zeros_like(x) + {"max": bound, "min": -bound, "zero": 0.0}[init]
    delta = project(x, delta, bound)
    stats = {"fooled_model": 0.0, "fooled_reference": 0.0, "shared": 0.0, "pgd_steps": 0}
    with evaluating(model, reference):
        with torch.no_grad():
            clean = model(x).argmax(1)
            clean_ref = reference(x).argmax(1) if clean_reference is None else clean_reference
        for step in range(steps):
            delta.requires_grad_(True)
            images = to_channels_last(perturb(x, delta))
            logits, logits_ref = model(images), reference(images)
            label, label_ref = logits.argmax(1), logits_ref.argmax(1)
            fooled, fooled_ref = label != clean, label_ref != clean_ref
            shared = fooled & fooled_ref & (label == label_ref)
            adversarial = -((F.cross_entropy(logits, y, reduction="none") * ~fooled).sum()
                            + (F.cross_entropy(logits_ref, y, reduction="none") * ~fooled_ref).sum()) / 2 / len(x)
            agreement = (js_divergence(logits, logits_ref) * ~shared).sum() / len(x)
            loss = adversarial_weight * adversarial + agreement_weight * agreement
            (grad,) = torch.autograd.grad(loss, delta) if loss.requires_grad else (torch.zeros_like(delta),)
            with torch.no_grad():
                delta = project(x, delta.detach() - step_size * grad.sign(), bound)
            stats = {"fooled_model": fooled.float().mean().item(), "fooled_reference": fooled_ref.float().mean().item(),
                     "shared": shared.float().mean().item(), "pgd_steps": step + 1}
            if bool(shared.all()):  # the authors stop once every image is a shared adversarial example
                break
    return delta.detach(), stats


def shared_adversarial_risk(adv_logits: Tensor, adv_reference: Tensor, clean_reference: Tensor,
                            y: Tensor) -> Tensor:
    """``L_sar``: on the images whose perturbation fools the reference (``ŷ₀ ≠ y`` and ``ŷ₀`` differs
    from its clean prediction), the model's probability of the reference's adversarial class ``ŷ₀``
    pushed down, written as the authors write it (two equal terms, each clamped)."""
    target = adv_reference.argmax(1)
    poisoned = (target != y) & (target != clean_reference)
    if not bool(poisoned.any()):
        return adv_logits.new_zeros(())
    probs = F.softmax(adv_logits, dim=1)
    one_hot = F.one_hot(target, num_classes=adv_logits.shape[1]).to(probs.dtype)
    pos = (probs * one_hot).sum(1)
    neg = (probs * (1 - one_hot)).sum(1)
    terms = -torch.log(1e-6 + neg.clamp(max=0.999)) - torch.log(1 + 1e-6 - pos.clamp(min=0.001))
    return torch.where(poisoned, terms, torch.zeros_like(terms)).sum() / 2 / len(y)


class SharedAdversarialUnlearning(StepHooks):
    """SAU's additions to the shared loop, bound to the model being trained and the frozen reference:
    :meth:`on_batch` runs the shared PGD on each batch, :meth:`loss` is the ``extra_loss`` (the
    unlearning terms on the perturbed batch), :meth:`precondition` turns the SGD step into AMSGrad's."""

    def __init__(self, model: nn.Module, reference: nn.Module, params: list[Tensor], cfg: SAUConfig):
        self.model, self.reference, self.params, self.cfg = model, reference, params, cfg
        self.adam: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.t = 0
        self.batch: tuple[Tensor, Tensor] | None = None
        self.history: dict[str, list[float]] = {"shared_loss": [], "fooled_reference": [], "shared": [],
                                                "pgd_steps": []}

    def on_batch(self, x, y):
        cfg = self.cfg
        with torch.no_grad(), evaluating(self.reference):
            clean_ref = self.reference(x).argmax(1)
        delta, stats = shared_pgd(self.model, self.reference, x, y, bound=cfg.bound, step_size=cfg.pgd_step_size,
                                  steps=cfg.pgd_steps, adversarial_weight=cfg.adversarial_weight,
                                  agreement_weight=cfg.agreement_weight, init=cfg.pgd_init,
                                  clean_reference=clean_ref)
        self.batch = (to_channels_last(perturb(x, delta)), clean_ref)
        self.history["shared"].append(stats["shared"])
        self.history["pgd_steps"].append(stats["pgd_steps"])

    def loss(self, x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        """``(λ₁ − 1) CE(h(x), y) + λ₂ CE(h(x + δ), y) + λ₃ L_sar`` (the loop adds ``CE(h(x), y)``)."""
        cfg = self.cfg
        adv_x, clean_ref = self.batch
        if self.model.training:
            with still_statistics(self.model):
                adv_logits = self.model(adv_x)
        else:
            adv_logits = self.model(adv_x)
        with torch.no_grad():
            adv_ref = self.reference(adv_x)
        sar = shared_adversarial_risk(adv_logits, adv_ref, clean_ref, y)
        self.history["shared_loss"].append(sar.item())
        target = adv_ref.argmax(1)
        self.history["fooled_reference"].append(((target != y) & (target != clean_ref)).float().mean().item())
        extra = cfg.shared_weight * sar
        if cfg.robust_weight:
            extra = extra + cfg.robust_weight * F.cross_entropy(adv_logits, y)
        if cfg.clean_weight != 1.0:
            extra = extra + (cfg.clean_weight - 1.0) * F.cross_entropy(logits, y)
        return extra

    def precondition(self, lr):
        """Replace each gradient by AMSGrad's step direction (``torch.optim.Adam(amsgrad=True)``)."""
        self.t += 1
        beta1, beta2 = BETAS
        first, second = 1 - beta1 ** self.t, math.sqrt(1 - beta2 ** self.t)
        with torch.no_grad():
            for p in self.params:
                if p.grad is None:
                    continue
                g = p.grad
                if id(p) not in self.adam:
                    self.adam[id(p)] = (torch.zeros_like(g), torch.zeros_like(g), torch.zeros_like(g))
                m, v, v_max = self.adam[id(p)]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                torch.maximum(v_max, v, out=v_max)
                p.grad = (m / first) / (v_max.sqrt() / second + EPS)


@DEFENCES.register("sau")
class SAU(StepsDefence):
    """SAU (Wei et al., NeurIPS 2023): unlearn the adversarial examples that the model and the frozen
    backdoored original share (both fooled into one class), while fitting the clean set. The strength
    is the number of steps; one run gives every shorter setting too (constant learning rate)."""

    name = "sau"
    Config = SAUConfig
    strength = "steps"
    strength_grid = (10, 25, 50, 100)

    def _train(self, model, data, *, device, progress, snapshot_at=()):
        cfg = self.config
        net = copy.deepcopy(model).to(device)
        reference = use_channels_last(copy.deepcopy(model).to(device)).eval()
        reference.requires_grad_(False)
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise NgfkitError("sau found no trainable parameters in the model")
        hooks = SharedAdversarialUnlearning(net, reference, params, cfg)
        snapshots: dict[int, nn.Module] = {}

        def on_step(step: int, loss: float) -> None:
            if step in snapshot_at:
                snapshots[step] = copy.deepcopy(net).eval()

        # momentum and weight decay 0: the SGD step is θ − lr·d with d AMSGrad's direction (precondition)
        train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, final_lr_ratio=1.0, momentum=0.0, weight_decay=0.0,
                                batch_size=min(cfg.batch_size, len(data)), augment=cfg.augment)
        with frozen_except(net, params):
            fit = train_model(net, data, train_cfg, seed=cfg.seed, device=device, progress=progress, desc=self.name,
                              params=params, train_mode=cfg.train_mode, hooks=hooks, on_step=on_step,
                              extra_loss=hooks.loss)
        return net.eval(), {**fit, **hooks.history}, snapshots

    def run(self, model, clean_data, *, device, progress, features=None):
        purified, fit, _ = self._train(model, clean_data, device=device, progress=progress)
        return purified, {k: v for k, v in fit.items() if k != "seconds"}
