"""The one training loop of ngfkit (seeded SGD, cosine learning rate, tqdm progress)."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .batches import iterate_batches, num_batches, random_crop_flip
from . import validation as check


@dataclass
class TrainConfig:
    """Hyper-parameters of (backdoor) training; the defaults suit the embedded Fashion-MNIST."""

    epochs: int = 1
    steps: int | None = None  # if set, overrides epochs: this many optimiser steps in all
    lr: float = 0.05
    final_lr_ratio: float = 0.0  # cosine schedule from lr down to lr * final_lr_ratio
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    augment: bool = False  # random crop (pad 4) + horizontal flip, for 32x32 RGB presets

    def __post_init__(self):
        # the CLI's --epochs and --train-lr land here, so these names are the user's too
        self.epochs = check.whole(self.epochs, "training epochs (--epochs)", least=1)
        if self.steps is not None:
            self.steps = check.whole(self.steps, "training steps", least=1)
        self.lr = check.positive(self.lr, "training lr (--train-lr)")
        self.final_lr_ratio = check.number(self.final_lr_ratio, "training final_lr_ratio", low=0.0)
        self.momentum = check.number(self.momentum, "training momentum", low=0.0, high=1.0, high_open=True)
        self.weight_decay = check.number(self.weight_decay, "training weight_decay", low=0.0)
        self.batch_size = check.whole(self.batch_size, "training batch_size", least=1)

    def to_dict(self) -> dict:
        return asdict(self)


def to_channels_last(x: Tensor) -> Tensor:
    """Image batches in channels-last layout, which convolutions run faster on (CPU and GPU)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def use_channels_last(model: nn.Module) -> nn.Module:
    """Put the model's weights in channels-last layout too. Every pass (training, evaluation,
    feature caching) does this, so a model fresh from training and the same model loaded from a
    checkpoint compute bit-identical outputs: NGF's small damping amplifies even float-rounding
    differences between memory layouts."""
    return model.to(memory_format=torch.channels_last)


class StepHooks:
    """What a defence may add to the shared loop; every method is optional.

    ``on_batch(x, y)`` sees each (augmented) batch before the forward pass (sharpness-aware
    steps re-evaluate the loss on it), ``observe(logits, labels, step)`` runs after the forward
    pass (curvature statistics),
    ``precondition(lr)`` after the backward pass and before the optimiser step (it may rewrite
    ``.grad``), ``after_step(lr)`` after the optimiser step (proximal terms).
    """

    def on_batch(self, x: Tensor, y: Tensor) -> None: ...

    def observe(self, logits: Tensor, labels: Tensor, step: int) -> None: ...

    def precondition(self, lr: float) -> None: ...

    def after_step(self, lr: float) -> None: ...


class CombinedHooks(StepHooks):
    """Runs several :class:`StepHooks` in order (``None`` entries are skipped)."""

    def __init__(self, *hooks: StepHooks | None):
        self.hooks = [h for h in hooks if h is not None]

    def on_batch(self, x, y):
        for h in self.hooks:
            h.on_batch(x, y)

    def observe(self, logits, labels, step):
        for h in self.hooks:
            h.observe(logits, labels, step)

    def precondition(self, lr):
        for h in self.hooks:
            h.precondition(lr)

    def after_step(self, lr):
        for h in self.hooks:
            h.after_step(lr)


def cosine_factor(step: int, total: int, floor: float) -> float:
    """The schedule of every fine-tuning run: the learning rate's multiplier at ``step`` of ``total``,
    a half cosine from 1 down to ``floor`` (constant after ``total``)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


@contextmanager
def frozen_except(model: nn.Module, trainable: list[Tensor]) -> Iterator[None]:
    """Temporarily set ``requires_grad`` only on ``trainable``."""
    previous = {p: p.requires_grad for p in model.parameters()}
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for p, flag in previous.items():
            p.requires_grad_(flag)


def train_model(model: nn.Module, dataset: Dataset, config: TrainConfig, *, seed: int = 0,
                device: torch.device | str = "cpu", progress: bool = True,
                desc: str = "train", params: list[Tensor] | None = None, train_mode: bool = True,
                hooks: StepHooks | None = None,
                on_step: Callable[[int, float], None] | None = None,
                extra_loss: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
                lr_factor: Callable[[int], float] | None = None, weight_decay_from: int = 0,
                replacement: bool = False) -> dict:
    """Train ``model`` in place with SGD + momentum and a per-step cosine schedule.

    ``params`` restricts the optimised tensors (default: all); ``train_mode=False`` keeps
    BatchNorm and dropout in eval mode (a frozen body); ``hooks`` let a defence precondition or
    regularise the steps; ``extra_loss(x, logits, y)`` is added to the cross-entropy (a
    distillation term, say). ``lr_factor(step)`` replaces the cosine schedule's multiplier,
    ``weight_decay_from`` holds weight decay off before that step, ``replacement`` draws batches with
    replacement (the three let NGF's reference code run in this loop). Returns
    ``{"loss": [...per step], "seconds": float}``.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    use_channels_last(model.to(device)).train(train_mode)
    params = list(model.parameters()) if params is None else params
    # params may also be SGD parameter groups with their own "lr" (a body trained slower than its head)
    optimiser = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps_per_epoch = num_batches(dataset, config.batch_size, drop_last=True)
    total = max(1, config.steps if config.steps is not None else config.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lr_factor or (lambda s: cosine_factor(s, total, config.final_lr_ratio)))
    hooks = hooks or StepHooks()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="step", leave=False)
    while len(losses) < total:
        for x, y in iterate_batches(dataset, config.batch_size, shuffle=True, generator=generator,
                                    device=device, drop_last=True, replacement=replacement):
            for group in optimiser.param_groups:
                group["weight_decay"] = config.weight_decay if len(losses) >= weight_decay_from else 0.0
            if config.augment:
                x = random_crop_flip(x, generator)
            x = to_channels_last(x)
            hooks.on_batch(x, y)
            logits = model(x)
            hooks.observe(logits, y, len(losses))
            loss = F.cross_entropy(logits, y)
            if extra_loss is not None:
                loss = loss + extra_loss(x, logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            lr = optimiser.param_groups[0]["lr"]
            hooks.precondition(lr)
            optimiser.step()
            hooks.after_step(lr)
            schedule.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(len(losses), losses[-1])
            bar.update(1)
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if len(losses) >= total:
                break
    bar.close()
    model.eval()
    return {"loss": losses, "seconds": time.perf_counter() - start}
