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
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..defences import DEFENCES, purify
from ..defences.finetune import FineTuneLast, StepsDefence
from ..defences.ngf import NGF
from ..errors import NgfkitError
from ..metrics import evaluate, evaluate_layer
from ..models import classifier_layer
from ..defences.natural_gradient import cache_features, layer_matrix, set_layer_matrix
from ..defences.heads import fit_heads


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
                    eval_every: int = 5, device: torch.device | str = "cpu", **options) -> dict:
    """Trajectory of a one-layer defence (``ngf``, its cached-feature variants, or ``ft-last``).

    ``test_predictions`` must come from :func:`ngfkit.metrics.predict` on the test images with
    ``keep_inputs_of=classifier_layer(model)`` (and the attack). For NGF without a fixed ``lr``
    the defence first chooses it from clean data (``history["selection"]`` is returned as
    ``"selection"``), then the chosen run is replayed with measurements.
    """
    if eval_every < 1:
        raise NgfkitError(f"eval_every must be at least 1, got {eval_every}")
    defence = DEFENCES.get(method)(**options)
    device = torch.device(device)
    base = copy.deepcopy(model).to(device).eval()
    head = classifier_layer(base)
    probe = copy.deepcopy(head)

    def measure(step: int, weight: torch.Tensor) -> None:
        if step % eval_every == 0 or step == steps:
            set_layer_matrix(probe, weight)
            _record(trajectory, step, evaluate_layer(probe, test_predictions))

    if isinstance(defence, NGF):
        if not defence._fast(base):
            raise NgfkitError(f"{method} does not train the classifier alone on cached features "
                              f"(body {defence.config.body!r}); use full_trajectory")
        selection = None
        if defence.config.lr is None:
            _, history = purify(base, clean_data, method, device=device, progress=False, **options)
            selection = history.get("selection")
            defence = defence.with_options(lr=history["chosen"]["lr"])
        cfg = defence.config
        steps = cfg.steps
        trajectory = _new(method, cfg.lr)
        trajectory["selection"] = selection
        data = cache_features(base, head, clean_data, views=cfg.augment, seed=cfg.seed, device=device)
        weight = layer_matrix(head)
        measure(0, weight)
        start = time.perf_counter()
        fit = fit_heads(data.features, data.labels, weight, [torch.arange(len(data.labels))], [cfg.lr], cfg,
                        on_step=lambda step, heads: measure(step, heads[0]))
        set_layer_matrix(head, fit["weight"][0])
    elif isinstance(defence, FineTuneLast):
        steps = defence.config.steps
        trajectory = _new(method, defence.config.lr)
        base, data = defence._features(base, clean_data, device)
        measure(0, layer_matrix(classifier_layer(base)))
        start = time.perf_counter()
        base, _ = defence._fit(base, data, defence.config.lr, False,
                               on_step=lambda step, layer: measure(step, layer_matrix(layer)))
    else:
        raise NgfkitError(f"{method} is not a one-layer defence; use full_trajectory")
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


def trajectory_figure(trajectories: Sequence[dict], names: Sequence[str] | None = None, *, title: str | None = None):
    """Two panels, attack success rate and clean accuracy against the fine-tuning step, one line
    per trajectory."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(names) if names is not None else [t["method"] for t in trajectories]
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                           subplot_titles=("attack success rate (backdoor)", "clean accuracy"))
    for i, (trajectory, name) in enumerate(zip(trajectories, names)):
        colour = f"hsl({(i * 137 + 210) % 360}, 65%, 45%)"
        mode = "lines+markers" if len(trajectory["steps"]) <= 40 else "lines"
        for col, key, label in ((1, "asr", "ASR"), (2, "acc", "ACC")):
            figure.add_trace(go.Scatter(
                x=trajectory["steps"], y=trajectory[key], mode=mode, name=name, legendgroup=name,
                showlegend=col == 1, line={"color": colour},
                hovertemplate=f"{name}<br>step %{{x}}<br>{label} %{{y:.1f}} %<extra></extra>"), row=1, col=col)
    figure.update_xaxes(title_text="fine-tuning step")
    figure.update_yaxes(title_text="attack success rate (%)", range=[-2, 102], row=1, col=1)
    figure.update_yaxes(title_text="clean accuracy (%)", row=1, col=2)
    figure.update_layout(template="plotly_white", height=430, title=title,
                         legend={"orientation": "h", "y": -0.22})
    return figure
