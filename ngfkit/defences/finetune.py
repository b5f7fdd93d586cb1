"""Fine-tuning defences: plain fine-tuning of every layer (``ft``), of the one layer NGF uses
(``ft-last``), sharpness-aware fine-tuning (``ft-sam``) and neural attention distillation
(``nad``, in :mod:`.distillation`). All of them train through :func:`ngfkit.train.train_model`; their strength is the
number of steps at a constant learning rate, so one run yields every shorter setting too."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .. import validation as check
from ..train import StepHooks, TrainConfig, frozen_except, train_model
from .base import DEFENCES, Defence
from .classifier_only import HeadDefence, layer_matrix


@dataclass
class FineTuneConfig:
    """Plain SGD fine-tuning on the clean set (constant learning rate, crop/flip augmentation)."""

    steps: int = 200  # about 21 epochs of 600 clean images; BackdoorBench runs 100 epochs of 2,500
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: bool = True
    seed: int = 0

    def __post_init__(self):
        self.steps = check.whole(self.steps, "steps", least=1)
        self.batch_size = check.whole(self.batch_size, "batch_size", least=1)
        self.seed = check.whole(self.seed, "seed")
        self.lr = check.positive(self.lr, "lr")
        self.momentum = check.number(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)
        self.weight_decay = check.number(self.weight_decay, "weight_decay", low=0.0)


def finetune(model: nn.Module, data: Dataset, cfg, *, device, progress: bool, desc: str,
             params: list[str] | None = None, train_mode: bool = True,
             hooks_for: Callable[[nn.Module, list[Tensor]], StepHooks] | None = None,
             extra_loss: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
             snapshot_at: tuple[int, ...] = ()) -> tuple[nn.Module, dict, dict[int, nn.Module]]:
    """Fine-tune a copy of ``model`` for ``cfg.steps`` steps; also return copies taken after each
    step count in ``snapshot_at`` (the learning rate is constant, so a snapshot after ``k`` steps
    is the model a ``k``-step run would return).

    ``params`` names the trained parameters (default: all); ``hooks_for(copy, trained)`` builds
    step hooks bound to the copy being trained."""
    net = copy.deepcopy(model).to(device)
    params = list(net.parameters()) if params is None else [dict(net.named_parameters())[n] for n in params]
    hooks = hooks_for(net, params) if hooks_for is not None else None
    snapshots: dict[int, nn.Module] = {}

    def on_step(step: int, loss: float) -> None:
        if step in snapshot_at:
            snapshots[step] = copy.deepcopy(net).eval()

    train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, final_lr_ratio=1.0, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay, batch_size=min(cfg.batch_size, len(data)),
                            augment=cfg.augment)
    with frozen_except(net, params):
        fit = train_model(net, data, train_cfg, seed=cfg.seed, device=device, progress=progress, desc=desc,
                          params=params, train_mode=train_mode, hooks=hooks, on_step=on_step,
                          extra_loss=extra_loss)
    return net.eval(), fit, snapshots


class StepsDefence(Defence):
    """A defence whose strength is its number of steps: :meth:`path` is one run with snapshots."""

    strength = "steps"
    strength_grid = (25, 50, 100, 200)

    def _train(self, model, data, *, device, progress, snapshot_at=()):
        raise NotImplementedError

    def run(self, model, clean_data, *, device, progress, features=None):
        purified, fit, _ = self._train(model, clean_data, device=device, progress=progress)
        return purified, {"loss": fit["loss"]}

    def path(self, model, clean_data, values, *, device, progress,
             features=None) -> Iterator[tuple[int, nn.Module]]:
        longest = self.with_options(steps=max(values))
        _, _, snapshots = longest._train(model, clean_data, device=device, progress=progress,
                                         snapshot_at=tuple(values))
        for value in values:
            yield value, snapshots[value]


@DEFENCES.register("ft")
class FineTune(StepsDefence):
    """Vanilla fine-tuning of all layers with SGD on the clean set (BatchNorm in train mode)."""

    name = "ft"
    Config = FineTuneConfig

    def _train(self, model, data, *, device, progress, snapshot_at=()):
        return finetune(model, data, self.config, device=device, progress=progress, desc=self.name,
                        snapshot_at=snapshot_at)


@dataclass
class LastLayerConfig:
    """SGD on the classifier alone, with NGF's data pipeline (cached features of augmented views)."""

    steps: int = 500
    lr: float = 0.01
    final_lr_ratio: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    augment: int = 8  # cropped + flipped views of each clean image, as NGF uses
    seed: int = 0

    def __post_init__(self):
        self.steps = check.whole(self.steps, "ft-last steps", least=1)
        self.batch_size = check.whole(self.batch_size, "ft-last batch_size", least=1)
        self.augment = check.whole(self.augment, "ft-last augment")
        self.seed = check.whole(self.seed, "seed")
        self.lr = check.positive(self.lr, "ft-last lr")
        self.final_lr_ratio = check.number(self.final_lr_ratio, "ft-last final_lr_ratio", low=0.0)
        self.momentum = check.number(self.momentum, "ft-last momentum", low=0.0, high=1.0, high_open=True)
        self.weight_decay = check.number(self.weight_decay, "ft-last weight_decay", low=0.0)


@DEFENCES.register("ft-last")
class FineTuneLast(HeadDefence):
    """SGD on the single layer NGF trains (the classifier), the body frozen in eval mode: the
    control that isolates what the natural gradient adds. It sees exactly NGF's data (the same
    cached features of the same augmented views, steps, batch and schedule); only the update
    differs. Every other parameter and every BatchNorm buffer is left bit-identical. Its
    strength is the learning rate, over a grid reaching higher than NGF's, since plain SGD steps
    on a linear head are small."""

    name = "ft-last"
    Config = LastLayerConfig
    strength = "lr"
    strength_grid = (0.01, 0.03, 0.1, 0.3, 1.0)

    def fit_heads(self, data, head, values, *, on_step=None):
        cfg = self.config
        heads = []
        for value in values:
            layer = copy.deepcopy(head)
            train_cfg = TrainConfig(steps=cfg.steps, lr=value, final_lr_ratio=cfg.final_lr_ratio,
                                    momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    batch_size=min(cfg.batch_size, len(data)))
            train_model(layer, data, train_cfg, seed=cfg.seed, device=layer.weight.device, progress=False,
                        desc=self.name, on_step=None if on_step is None else
                        (lambda step, _, layer=layer: on_step(step, layer_matrix(layer).unsqueeze(0))))
            heads.append(layer_matrix(layer))
        return heads


@dataclass
class SAMConfig(FineTuneConfig):
    """FT-SAM: fine-tuning with (adaptive) sharpness-aware minimisation."""

    rho: float = 2.0
    adaptive: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.rho = check.positive(self.rho, "ft-sam rho")


class SharpnessAware(StepHooks):
    """Replaces each gradient by the gradient at the worst point of a ρ-ball around the weights
    (SAM, Foret et al. 2021); ``adaptive`` scales the ball by ``|w|`` (ASAM, Kwon et al. 2021):
    ``e = ρ w² g / ‖|w| g‖``, as in BackdoorBench's FT-SAM (ρ = 2, adaptive)."""

    def __init__(self, model: nn.Module, params: list[Tensor], rho: float, adaptive: bool):
        self.model, self.params, self.rho, self.adaptive = model, params, rho, adaptive
        self.batch: tuple[Tensor, Tensor] | None = None

    def on_batch(self, x, y):
        self.batch = (x, y)

    def precondition(self, lr):
        params = [p for p in self.params if p.grad is not None]
        with torch.no_grad():
            scaled = [(p.abs() if self.adaptive else 1.0) * p.grad for p in params]
            norm = torch.norm(torch.stack([s.norm() for s in scaled])).clamp_min(1e-12)
            steps = [(p.abs() if self.adaptive else 1.0) * s * (self.rho / norm) for p, s in zip(params, scaled)]
            for p, e in zip(params, steps):
                p.add_(e)
        x, y = self.batch
        # the second pass must not move BatchNorm's running statistics a second time
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0
        try:
            loss = F.cross_entropy(self.model(x), y)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, e, g in zip(params, steps, grads):
                p.sub_(e)
                if g is not None:
                    p.grad.copy_(g)


@DEFENCES.register("ft-sam")
class FineTuneSAM(StepsDefence):
    """FT-SAM (Zhu et al., ICCV 2023): fine-tuning whose every step is sharpness-aware, which
    pushes the weights further from the backdoored minimum than plain fine-tuning at the same
    clean loss. Twice the cost of ``ft`` per step."""

    name = "ft-sam"
    Config = SAMConfig

    def _train(self, model, data, *, device, progress, snapshot_at=()):
        cfg = self.config
        return finetune(model, data, cfg, device=device, progress=progress, desc=self.name,
                        hooks_for=lambda net, params: SharpnessAware(net, params, cfg.rho, cfg.adaptive),
                        snapshot_at=snapshot_at)
