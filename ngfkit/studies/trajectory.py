"""Per-step ASR / ACC trajectories of fine-tuning defences, for the natural-gradient chapter.

Each function re-runs one defence exactly as :func:`ngfkit.defences.purify` would (same
config, same seed; a test checks the final weights agree) while measuring the model along the
way:

- :func:`head_trajectory` for the one-layer defences (``ngf`` and its cached-feature variants,
  ``ft-last``): the body never changes, so every measurement is the classifier applied to
  cached test inputs (:func:`ngfkit.metrics.evaluate_layer`, given the ``test_predictions``
  that :func:`ngfkit.metrics.predict` returns with ``keep_inputs_of``), cheap enough for every
  few steps;
- :func:`full_trajectory` for defences that change the whole network (``ft``, ``ft-sam``): one
  run with snapshots every ``eval_every`` steps (their learning rate is constant, so the
  snapshot after ``k`` steps is the ``k``-step model), each measured on a fixed test subset.

A trajectory is ``{"method", "steps": [0, ...], "acc", "asr", "ra": [...] (percent, one per
step in "steps"), "lr", "train_seconds", "model"}``; step 0 is the input model.
:func:`ngfkit.viz.trajectory.trajectory_figure` draws them.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..defences import DEFENCES, FeatureCache, HeadDefence, purify
from ..defences.finetune import StepsDefence
from ..errors import NgfkitError
from ..metrics import evaluate, evaluate_layer
from ..models import classifier_layer
from ..defences.classifier_only import layer_matrix, set_layer_matrix


def fixed_subset(dataset: Dataset, samples: int | None, seed: int = 0) -> Dataset:
    """``samples`` images of ``dataset`` drawn once at random (sorted indices), or all of it."""
    if samples is None or samples >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[:samples].sort().values)


def _record(trajectory: dict, step: int, metrics: dict) -> None:
    trajectory["steps"].append(step)
    for key in ("acc", "asr", "ra"):
        trajectory[key].append(metrics.get(key, float("nan")))


def _new(method: str, lr) -> dict:
    return {"method": method, "steps": [], "acc": [], "asr": [], "ra": [], "lr": lr}


def head_trajectory(model: nn.Module, clean_data: Dataset, test_predictions: dict, method: str = "ngf", *,
                    eval_every: int = 5, device: torch.device | str = "cpu", features: FeatureCache | None = None,
                    **options) -> dict:
    """Trajectory of a classifier-only defence (:class:`~ngfkit.defences.HeadDefence`: ``ngf`` and its
    cached-feature variants, ``ft-last``).

    ``test_predictions`` must come from :func:`ngfkit.metrics.predict` on the test images with
    ``keep_inputs_of=classifier_layer(model)`` (and the attack). A defence whose strength is not
    fixed (NGF's ``lr=None``) first runs as :func:`~ngfkit.defences.purify` would and chooses it from
    clean data (``history["selection"]`` is returned as ``"selection"``); then the kept run is
    replayed through the protocol's ``fit_heads`` with measurements. ``features`` shares the
    clean set's classifier inputs with other runs on the same model.
    """
    if eval_every < 1:
        raise NgfkitError(f"eval_every must be at least 1, got {eval_every}")
    defence = DEFENCES.get(method)(**options)
    device = torch.device(device)
    base = copy.deepcopy(model).to(device).eval()
    head = classifier_layer(base)
    if not isinstance(defence, HeadDefence) or not defence.on_cached_features(base):
        raise NgfkitError(f"{method} does not train the classifier alone on cached features; use full_trajectory")
    selection = None
    if getattr(defence.config, defence.strength) is None:
        _, history = purify(base, clean_data, method, device=device, progress=False, features=features, **options)
        selection = history.get("selection")
        defence = defence.with_options(**{defence.strength: history["setting"][defence.strength]})
    value = getattr(defence.config, defence.strength)
    steps = defence.config.steps
    trajectory = _new(method, value)
    trajectory["selection"] = selection
    probe = copy.deepcopy(head)

    def measure(step: int, weight: torch.Tensor) -> None:
        if step % eval_every == 0 or step == steps:
            set_layer_matrix(probe, weight)
            _record(trajectory, step, evaluate_layer(probe, test_predictions))

    data = defence.head_features(base, clean_data, device=device, features=features)
    measure(0, layer_matrix(head))
    start = time.perf_counter()
    [weight] = defence.fit_heads(data, head, [value], on_step=lambda step, heads: measure(step, heads[0]))
    set_layer_matrix(head, weight)
    trajectory["train_seconds"] = time.perf_counter() - start  # includes the cheap measurements
    trajectory["model"] = base.eval()
    return trajectory


def full_trajectory(model: nn.Module, clean_data: Dataset, test_data: Dataset, attack, method: str = "ft", *,
                    eval_every: int = 20, device: torch.device | str = "cpu", **options) -> dict:
    """Trajectory of a whole-network fine-tuning defence (``ft``, ``ft-sam``): one run of the
    defence's ``steps`` with a snapshot every ``eval_every`` steps, each measured on ``test_data``
    (keep it small: every snapshot costs two passes over it)."""
    defence = DEFENCES.get(method)(**options)
    if not isinstance(defence, StepsDefence):
        raise NgfkitError(f"{method} has no per-step snapshots; full_trajectory takes ft or ft-sam")
    if eval_every < 1:
        raise NgfkitError(f"eval_every must be at least 1, got {eval_every}")
    steps = defence.config.steps
    marks: Sequence[int] = sorted({*range(eval_every, steps + 1, eval_every), steps})
    trajectory = _new(method, defence.config.lr)
    _record(trajectory, 0, evaluate(model, test_data, attack, device=device))
    start = time.perf_counter()
    snapshots = dict(defence.path(model, clean_data, tuple(marks), device=torch.device(device), progress=False))
    trajectory["train_seconds"] = time.perf_counter() - start
    for step in marks:
        _record(trajectory, step, evaluate(snapshots[step], test_data, attack, device=device))
    trajectory["model"] = snapshots[steps]
    return trajectory
