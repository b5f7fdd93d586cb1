"""``ngf-shift``: NGF that also moves the features, for backdoors a classifier alone cannot undo.

Why plain NGF cannot be enough here: a fresh classifier fitted on the clean images' frozen
features still sends patch-triggered images to the target class (paper notes, "What has been
measured here"): the trigger lives in the body's features, and no head that clean data determines
removes it. FST (Min et al., NeurIPS 2023) moves the features by pushing the classifier away from
its compromised weights while the body is tuned. This variant keeps NGF's machinery and cost
profile and adds that push:

- the classifier is re-initialised and trained with NGF's EKFAC natural gradient (damped,
  KL-clipped), with FST's term ``α ⟨W, W_orig⟩`` and ``‖W‖`` held at ``‖W_orig‖``
  (:class:`~ngfkit.defences.feature_shift.FeatureShift`); ``α`` is the strength knob, chosen on
  held-out clean data by the one rule;
- the body's last block (from its last ``nn.Linear`` on; ngfkit's architectures and any
  ``Classifier`` whose body is an ``nn.Sequential``) takes plain SGD steps at ``body_lr_ratio``
  of the rate, so the features can shift to fit the new head;
- the backdoored model's own predictions on the clean images are distilled into the purified one
  (``distill``, temperature ``temperature``): they carry its clean behaviour (90 % accurate here)
  without any trigger, which keeps the clean-accuracy cost of a re-initialised head small;
- the inputs of the last block are computed once (``augment`` cropped/flipped views per image), so
  every step runs on cached features, as NGF's fast path does.

``ngf-shift-auto`` chooses the distillation weight from clean data instead of fixing it: the
distilled predictions are the backdoored model's own, so the term that keeps the clean-accuracy
cost small also pulls the purified model back toward the backdoored one (an ablation on the WaNet
model, looking at its test ASR, found exactly that: 45 % ASR left with ``distill=3``, 1 % without
it, at 5.7 points instead of 0.7). The weight is therefore a strength knob like any other: the
one rule of :mod:`~ngfkit.defences.selection` keeps the weakest distillation (the strongest
defence) whose held-out clean accuracy drops at most ``acc_budget`` points (default 1.5, the
project's goal), trying ``distill`` = 3, 1, 0.3, 0.1 and 0 on 80 % of the clean images and
scoring on the other 20 %. Five runs instead of one; the returned model is the one trained on the
80 %.

``ngf-shift-all`` (``body="all"``) tunes every layer of the body instead of its last block, as FST
does, at FST's learning rate (``body_lr_ratio=1``: 0.01 on every layer), on freshly cropped and
flipped batches with BatchNorm in train mode (FST's setting). It costs full forward and backward
passes, but it reaches features a last block cannot (image-wide triggers such as WaNet's warp,
whose evidence is formed in the convolutions) and it runs on any model, not only on a
``Classifier`` with an ``nn.Sequential`` body.

This is our construction, not the paper's: the NGF paper neither re-initialises nor distils, and
its public code has no regulariser. The book and the benchmark report it beside plain ``ngf``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..curvature.fisher import FISHER_TYPES
from ..errors import NgfkitError
from ..models import find_classifier, reinitialise
from ..train import CombinedHooks, TrainConfig, frozen_except, train_model
from .base import DEFENCES, Defence
from .classifier_only import FeatureCache, features_of
from .feature_shift import FeatureShift
from .natural_gradient import NaturalGradient
from .selection import select_and_purify


@dataclass
class ShiftConfig:
    """Options of ``ngf-shift`` (defaults settled on the seed-0 BadNets demo model; see the module docstring)."""

    feature_shift: float = 0.1  # α of FST's head term; the strength knob
    steps: int = 300
    batch_size: int = 128
    lr: float = 0.01
    body_lr_ratio: float = 0.1  # the last block's learning rate, relative to the classifier's
    momentum: float = 0.9
    weight_decay: float = 5e-4
    damping: float = 0.1  # NGF's 1e-4 sends a re-initialised head far along barely constrained directions
    kl_clip: float = 1e-2
    fisher: str = "empirical"
    distill: float = 3.0  # weight of the distillation term; 0 switches it off
    temperature: float = 2.0
    reinit_head: bool = True
    natural: bool = True  # False: plain SGD on the classifier too (the ablation without NGF)
    augment: int = 8  # last-block: cached views per image; all: random crop and flip of every batch when > 0
    body: str = "last-block"  # or "all": every layer of the body (ngf-shift-all)
    seed: int = 0

    def __post_init__(self):
        if self.body not in BODIES:
            raise NgfkitError(f"ngf-shift body must be one of {', '.join(BODIES)}, got {self.body!r}")
        if not (self.feature_shift >= 0 and self.distill >= 0 and self.temperature > 0):
            raise NgfkitError("ngf-shift needs feature_shift >= 0, distill >= 0 and temperature > 0")
        if self.steps < 1 or not self.lr > 0 or not 0 <= self.body_lr_ratio:
            raise NgfkitError("ngf-shift needs steps >= 1, lr > 0 and body_lr_ratio >= 0")
        if self.fisher not in FISHER_TYPES:
            raise NgfkitError(f"ngf-shift fisher must be one of {', '.join(FISHER_TYPES)}, got {self.fisher!r}")


#: what of the body ngf-shift tunes besides the classifier
BODIES = ("last-block", "all")


@dataclass
class ShiftAllConfig(ShiftConfig):
    """``ngf-shift-all``: every layer of the body tuned, at FST's learning rate (0.01) on every layer."""

    body: str = "all"
    body_lr_ratio: float = 1.0


def last_block(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(entry, tail)`` of a classifier whose body is an ``nn.Sequential``: ``entry`` is the body's last
    ``nn.Linear`` (its input is what gets cached) and ``tail`` runs from it to the logits
    (``entry``, the modules after it, the classifier), sharing their parameters with ``model``."""
    body = getattr(model, "body", None)
    _, head = find_classifier(model)
    linear = [i for i, m in enumerate(body)] if isinstance(body, nn.Sequential) else []
    linear = [i for i in linear if isinstance(body[i], nn.Linear)]
    if not linear:
        raise NgfkitError("ngf-shift tunes the body's last block and needs a model whose body is an nn.Sequential "
                          "with an nn.Linear in it (ngfkit's smallcnn); use ngf or ft-init for other models")
    return body[linear[-1]], nn.Sequential(*body[linear[-1]:], head)


@DEFENCES.register("ngf-shift")
class NGFShift(Defence):
    """NGF on a re-initialised classifier pushed away from the compromised one (FST's term), SGD on the
    body's last block, the model's own clean predictions distilled; on cached inputs of that block."""

    name = "ngf-shift"
    Config = ShiftConfig
    strength = "feature_shift"
    strength_grid = (0.02, 0.05, 0.1, 0.2, 0.5)
    needs_classifier = True

    def run(self, model, clean_data, *, device, progress, features: FeatureCache | None = None):
        cfg = self.config
        model = copy.deepcopy(model).to(device).eval()
        if cfg.body == "all":  # the whole model trains on images; its classifier found as purify found it
            tail, data, (_, head) = model, clean_data, find_classifier(model, clean_data)
        else:
            entry, tail = last_block(model)
            data = features_of(model, entry, clean_data, features, views=cfg.augment, seed=cfg.seed, device=device)
            head = tail[-1]
        teacher = copy.deepcopy(tail).eval()
        original = head.weight.detach().clone()
        if cfg.reinit_head:
            reinitialise(head, cfg.seed)
        shift = FeatureShift(head, original, cfg.feature_shift)
        natural = NaturalGradient({"head": head}, damping=cfg.damping, kl_clip=cfg.kl_clip, fisher=cfg.fisher,
                                  seed=cfg.seed) if cfg.natural else None
        in_head = {id(p) for p in head.parameters()}
        body_params = [p for p in tail.parameters() if id(p) not in in_head]
        groups = [{"params": list(head.parameters()), "lr": cfg.lr},
                  {"params": body_params, "lr": cfg.lr * cfg.body_lr_ratio}]

        def loss_terms(x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
            extra = shift.loss(x, logits, y)
            if cfg.distill > 0:
                with torch.no_grad():
                    target = (teacher(x) / cfg.temperature).softmax(1)
                student = (logits / cfg.temperature).log_softmax(1)
                extra = extra + cfg.distill * cfg.temperature ** 2 * F.kl_div(student, target, reduction="batchmean")
            return extra

        on_images = cfg.body == "all"
        train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, final_lr_ratio=0.0, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, batch_size=min(cfg.batch_size, len(data)),
                                augment=on_images and cfg.augment > 0)
        try:
            with frozen_except(model, [p for g in groups for p in g["params"]]):
                fit = train_model(tail, data, train_cfg, seed=cfg.seed, device=device, progress=progress,
                                  desc=self.name, params=groups, train_mode=on_images,
                                  hooks=CombinedHooks(natural, shift), extra_loss=loss_terms)
        finally:
            if natural is not None:
                natural.close()
        return model.eval(), {"loss": fit["loss"]}


@DEFENCES.register("ngf-shift-all")
class NGFShiftAll(NGFShift):
    """``ngf-shift`` with every layer of the body tuned (FST's reach), not only its last block; any model."""

    name = "ngf-shift-all"
    Config = ShiftAllConfig


@dataclass
class ShiftAutoConfig(ShiftConfig):
    """``ngf-shift-auto``: ``ngf-shift`` whose distillation weight is chosen from clean data."""

    acc_budget: float = 1.5  # most held-out clean-accuracy points the chosen weight may cost
    holdout: float = 0.2  # share of the clean images held out to score each weight
    choose: bool = True  # False: one run at ``distill`` (what the selection runs for each weight)

    def __post_init__(self):
        super().__post_init__()
        if not (self.acc_budget >= 0 and 0 < self.holdout < 1):
            raise NgfkitError("ngf-shift-auto needs acc_budget >= 0 and 0 < holdout < 1")


@DEFENCES.register("ngf-shift-auto")
class NGFShiftAuto(NGFShift):
    """``ngf-shift`` with the distillation weight chosen by the one clean-data rule: the weakest
    distillation whose held-out clean accuracy drops at most ``acc_budget`` points."""

    name = "ngf-shift-auto"
    Config = ShiftAutoConfig
    strength = "distill"
    strength_grid = (3.0, 1.0, 0.3, 0.1, 0.0)  # weakest defence (most distillation) first

    def run(self, model, clean_data, *, device, progress, features: FeatureCache | None = None):
        cfg = self.config
        if not cfg.choose:
            return super().run(model, clean_data, device=device, progress=progress, features=features)
        options = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("acc_budget", "holdout", "choose")}
        options.pop(self.strength)
        seed = options.pop("seed")
        purified, history = select_and_purify(model, clean_data, self.name, acc_budget=cfg.acc_budget,
                                              holdout=cfg.holdout, values=self.strength_grid, seed=seed,
                                              device=device, progress=progress, choose=False, **options)
        return purified, {"selection": history["selection"], "setting": history["setting"]}
