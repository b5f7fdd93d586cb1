"""The tuning family of FST (Min et al., NeurIPS 2023, *Towards Stable Backdoor Purification through
Feature Shift Tuning*; code ``AISafety-HKUST/stable_backdoor_purification``, ``fine_tune/ft.py``).

The paper's finding: tuning on clean data removes a backdoor only if the features move. Vanilla
fine-tuning (``ft``, in :mod:`.finetune`) and linear probing keep the compromised features, and
fail at low poison rates; re-initialising the classifier forces the body to shift them. Four of its
five modes are registered here (its ``ft`` is ngfkit's ``ft``):

- ``lp``: linear probing, the classifier alone, the body frozen; ngfkit's ``ft-last`` with the
  authors' defaults, on cached features (the classifier-only protocol);
- ``ft-init``: the classifier re-initialised, every layer tuned;
- ``fe-tuning``: the classifier re-initialised and frozen, only the body tuned;
- ``fst``: the classifier re-initialised, every layer tuned, with ``α ⟨W, W_orig⟩`` added to the
  loss and ``‖W‖`` projected back to ``‖W_orig‖`` after every step
  (:class:`~ngfkit.defences.feature_shift.FeatureShift`).

The authors' setting (paper and code): 2 % of CIFAR-10's training set (1,000 images), batches of
128, 10 epochs (about 80 steps, 10,000 images seen), SGD at lr 0.01 with momentum 0.9 and no
weight decay, a cosine schedule to 0 stepped once per epoch, random crop and flip, BatchNorm in
train mode in every mode; the classifier re-initialised as ``U(±1/√D)`` (weight and bias) for
``ft-init``, ``fe-tuning`` and ``fst``; α 0.2 on CIFAR-10 (0.1 in the README's example), 0.1 on
GTSRB, 0.001 on CIFAR-100 and Tiny-ImageNet.

Our defaults and every deviation:

- 200 steps of 64 images (12,800 images seen, about as many as the authors' 10 epochs of 1,000;
  21 epochs of a 600-image clean set), batches of 64 instead of 128; the same budget as ``ft``;
- the cosine schedule to 0 runs per step, not per epoch (``final_lr_ratio=1`` makes it constant);
- the re-initialisation is drawn from a generator seeded by ``seed`` (the authors: the global RNG);
- ``‖W‖`` is projected only in ``fst``, as the paper describes it; the authors' code projects in every
  mode, which also holds ``lp``'s and ``ft-init``'s norm and rescales ``fe-tuning``'s frozen
  re-initialised classifier to ``‖W_orig‖`` (here it keeps its re-initialised values);
- ``lp`` follows the classifier-only protocol: the body stays in eval mode, bit-identical (the
  authors' ``lp`` runs the whole model in train mode, so BatchNorm's statistics drift), and it trains
  on cached features of 8 cropped and flipped views per image (the authors: fresh views each epoch);
- the strength knobs: ``lp`` the learning rate (``ft-last``'s grid), ``ft-init`` and ``fe-tuning``
  the number of steps, ``fst`` α (default 0.2, CIFAR-10's); the paper tunes none of them on data.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import validation as check
from ..errors import NgfkitError
from ..models import find_classifier, reinitialise
from ..train import TrainConfig, frozen_except, train_model
from .base import DEFENCES, Defence
from .feature_shift import FeatureShift
from .finetune import FineTuneLast, LastLayerConfig, StepsDefence


@dataclass
class LinearProbeConfig(LastLayerConfig):
    """``lp``: SGD on the classifier alone, on cached features; the authors' lr, momentum, no weight
    decay, cosine to 0, our budget of 200 steps of 64."""

    steps: int = 200
    lr: float = 0.01
    final_lr_ratio: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    augment: int = 8
    seed: int = 0

    def __post_init__(self):
        try:
            super().__post_init__()
        except NgfkitError as err:  # the checks are ft-last's; the user typed lp's options
            raise NgfkitError(str(err).replace("ft-last ", "lp ", 1)) from None


@DEFENCES.register("lp")
class LinearProbe(FineTuneLast):
    """LP (linear probing, as in FST): the classifier alone tuned with SGD, the body frozen in eval
    mode; ``ft-last`` with FST's defaults, on the cached features of the classifier-only protocol."""

    name = "lp"
    Config = LinearProbeConfig


@dataclass
class TuningConfig:
    """Options of the FST family's whole-model modes (see the module docstring for the defaults)."""

    steps: int = 200
    lr: float = 0.01
    final_lr_ratio: float = 0.0  # cosine from lr to lr * final_lr_ratio; 1 keeps it constant
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    augment: bool = True  # random crop and flip of every batch
    seed: int = 0  # the training order and the classifier's re-initialisation

    owner: ClassVar[str] = "ft-init"  # the defence named in error messages

    def __post_init__(self):
        owner = self.owner
        self.steps = check.whole(self.steps, f"{owner} steps", least=1)
        self.batch_size = check.whole(self.batch_size, f"{owner} batch_size", least=1)
        self.seed = check.whole(self.seed, f"{owner} seed")
        self.lr = check.positive(self.lr, f"{owner} lr")
        self.final_lr_ratio = check.number(self.final_lr_ratio, f"{owner} final_lr_ratio", low=0.0)
        self.momentum = check.number(self.momentum, f"{owner} momentum", low=0.0, high=1.0, high_open=True)
        self.weight_decay = check.number(self.weight_decay, f"{owner} weight_decay", low=0.0)
        check.like_default(self.augment, True, f"{owner} augment")


@dataclass
class FETuningConfig(TuningConfig):
    owner: ClassVar[str] = "fe-tuning"


@dataclass
class FSTConfig(TuningConfig):
    """``fst``: :class:`TuningConfig` and α, the weight of ``⟨W, W_orig⟩`` (0 leaves only the projection)."""

    feature_shift: float = 0.2  # α: the authors' CIFAR-10 value (GTSRB 0.1, CIFAR-100 0.001)

    owner: ClassVar[str] = "fst"

    def __post_init__(self):
        super().__post_init__()
        self.feature_shift = check.number(self.feature_shift, "fst feature_shift", low=0.0,
                                          fix="it is α, the weight of FST's term; the authors use 0.001 to 0.2")


class ReinitTuning(StepsDefence):
    """Tuning with the classifier re-initialised first (FST's ``ft-init``, ``fe-tuning``, ``fst``).

    Subclasses say whether the classifier is trained (``tune_classifier``) and may add FST's term
    (:meth:`shift_hooks`). With a constant learning rate, :meth:`path` reads every step count off
    one run (as ``ft`` does); under the cosine schedule a shorter run is not a prefix of a longer
    one, so each value gets its own run.
    """

    needs_classifier = True
    tune_classifier: ClassVar[bool] = True

    def shift_hooks(self, head: nn.Linear, original: torch.Tensor) -> FeatureShift | None:
        """The step hooks of FST's term for the classifier ``head``, or None."""
        return None

    def _train(self, model, data, *, device, progress, snapshot_at=()):
        cfg = self.config
        net = copy.deepcopy(model).to(device)
        _, head = find_classifier(net, data)
        original = head.weight.detach().clone()
        reinitialise(head, cfg.seed)
        in_head = {id(p) for p in head.parameters()}
        params = [p for p in net.parameters() if self.tune_classifier or id(p) not in in_head]
        shift = self.shift_hooks(head, original)
        snapshots: dict[int, nn.Module] = {}

        def on_step(step: int, loss: float) -> None:
            if step in snapshot_at:
                snapshots[step] = copy.deepcopy(net).eval()

        train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, final_lr_ratio=cfg.final_lr_ratio,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                batch_size=min(cfg.batch_size, len(data)), augment=cfg.augment)
        with frozen_except(net, params):
            fit = train_model(net, data, train_cfg, seed=cfg.seed, device=device, progress=progress,
                              desc=self.name, params=params, hooks=shift, on_step=on_step,
                              extra_loss=shift.loss if shift is not None else None)
        return net.eval(), fit, snapshots

    def path(self, model, clean_data, values, *, device, progress, features=None):
        if self.strength == "steps" and self.config.final_lr_ratio == 1.0:
            yield from super().path(model, clean_data, values, device=device, progress=progress)
        else:
            yield from Defence.path(self, model, clean_data, values, device=device, progress=progress)


@DEFENCES.register("ft-init")
class FTInit(ReinitTuning):
    """FT-init (FST): the classifier re-initialised, then every layer tuned with SGD on the clean set
    (BatchNorm in train mode). The strength is the number of steps."""

    name = "ft-init"
    Config = TuningConfig


@DEFENCES.register("fe-tuning")
class FETuning(ReinitTuning):
    """FE-tuning (FST): the classifier re-initialised and frozen, only the body (the feature extractor)
    tuned, so the features must move to fit a random head. The strength is the number of steps."""

    name = "fe-tuning"
    Config = FETuningConfig
    tune_classifier = False


@DEFENCES.register("fst")
class FST(ReinitTuning):
    """FST, feature shift tuning: the classifier re-initialised, every layer tuned, with
    ``α ⟨W, W_orig⟩`` pushing the classifier away from the compromised one and ``‖W‖`` held at
    ``‖W_orig‖``. The strength is α (``feature_shift``)."""

    name = "fst"
    Config = FSTConfig
    strength = "feature_shift"
    strength_grid = (0.01, 0.05, 0.1, 0.2, 0.5)

    def shift_hooks(self, head, original):
        return FeatureShift(head, original, self.config.feature_shift)
