"""Loss landscapes: the loss along 1-D and 2-D slices of weight space.

* random slices along filter-normalised directions (Li et al., "Visualizing the Loss Landscape
  of Neural Nets", NeurIPS 2018): :func:`filter_normalised_direction`, :func:`loss_slice_1d`,
  :func:`loss_slice_2d`;
* the straight line between two models of one architecture, e.g. the backdoored and the
  NGF-purified weights: :func:`interpolate`.

Every point reports the clean loss and accuracy, and, given an ``attack``, the loss and attack
success rate on triggered images (those the attack targets, with the attacker's labels). Points
are evaluated with ``torch.func.functional_call`` on an eval-mode copy, so the models passed in
are never modified. Loss: mean cross-entropy in nats.
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import NgfkitError
from .sharpness import ParamSpec, eval_copy, mean_loss, sample_batches, select_parameters
from ..train import to_channels_last

Direction = dict[str, Tensor]


def filter_normalised_direction(model: nn.Module, seed: int = 0, params: ParamSpec = "all", *,
                                ignore_1d: bool = True) -> Direction:
    """A random Gaussian direction with each filter rescaled to the norm of the model's filter.

    For a weight of shape ``(F, ...)`` (conv filters, rows of a linear layer) the direction's
    ``i``-th slice is ``d_i * ||θ_i|| / ||d_i||``: a step ``α`` then changes every filter by the
    same *relative* amount, which makes slices comparable across layers and models despite
    BatchNorm's scale invariance. One-dimensional parameters (biases, BatchNorm scales) get zero
    (Li et al.'s ``ignore='biasbn'``) or, with ``ignore_1d=False``, a copy of the weight.

    Returns:
        ``{name: tensor shaped like the parameter}`` for the parameters ``params`` selects (see
        :func:`ngfkit.curvature.sharpness.select_parameters`); the others do not move.
    """
    names = set(select_parameters(model, params))
    generator = torch.Generator().manual_seed(int(seed))
    direction: Direction = {}
    for name, weight in model.named_parameters():  # every parameter draws, so a subset's
        w = weight.detach().float().cpu()         # direction is the whole model's, restricted
        d = torch.randn(w.shape, generator=generator)
        if name not in names:
            continue
        if w.dim() <= 1:
            d = torch.zeros_like(w) if ignore_1d else w.clone()
        else:
            d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
            w_norm = w.flatten(1).norm(dim=1)
            d = d * (w_norm / d_norm).view(-1, *([1] * (w.dim() - 1)))
        direction[name] = d.to(weight.device, weight.dtype)
    return direction


class _Evaluator:
    """Clean and triggered batches held once; :meth:`point` evaluates one set of weights."""

    def __init__(self, model: nn.Module, data: Any, attack=None, *, num_samples: int | None,
                 batch_size: int, device: torch.device | str):
        self.model = eval_copy(model, device)
        self.clean = sample_batches(data, num_samples=num_samples, batch_size=batch_size, device=device)
        self.samples = sum(len(y) for _, y in self.clean)
        self.triggered: list[tuple[Tensor, Tensor]] = []
        if attack is not None:
            for x, y in self.clean:
                # the trigger is applied once, here, not at every grid point
                keep = attack.attacked_mask(y.cpu()).to(y.device)
                if keep.any():
                    xs = x[keep].contiguous()
                    trig = attack.apply(xs.cpu()).to(device=x.device, dtype=x.dtype)
                    self.triggered.append((to_channels_last(trig), attack.target_labels(y[keep].cpu()).to(y.device)))
            if not self.triggered:
                raise NgfkitError(f"none of the {self.samples} samples is of a class the attack targets; "
                                  "pass more (or other) samples")
        self.triggered_samples = sum(len(y) for _, y in self.triggered)

    def point(self, state: dict[str, Tensor]) -> dict[str, float]:
        clean_loss, clean_acc = mean_loss(self.model, self.clean, state)
        out = {"clean_loss": clean_loss, "clean_acc": clean_acc}
        if self.triggered:
            out["triggered_loss"], out["asr"] = mean_loss(self.model, self.triggered, state)
        return out

    def base(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.model.named_parameters()}


def _check_direction(evaluator: _Evaluator, direction: Direction, what: str) -> Direction:
    params = evaluator.base()
    if not direction:
        raise NgfkitError(f"{what} is empty; build it with filter_normalised_direction")
    for name, d in direction.items():
        if name not in params:
            raise NgfkitError(f"{what} moves {name!r}, which is not a parameter of the model")
        if tuple(d.shape) != tuple(params[name].shape):
            raise NgfkitError(f"{what} has shape {tuple(d.shape)} for {name!r}, "
                              f"the model's is {tuple(params[name].shape)}")
    return {n: d.to(params[n].device, params[n].dtype) for n, d in direction.items()}


def _grid(values: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise NgfkitError(f"{what} must be a non-empty list of finite numbers")
    return values


def _collect(points: list[dict[str, float]], shape: tuple[int, ...] | None = None) -> dict[str, list]:
    """``[{key: value}]`` -> ``{key: [values]}``, reshaped to nested lists ``shape``."""
    out = {}
    for key in points[0]:
        column = [p[key] for p in points]
        if shape is not None:
            column = [column[i * shape[1] : (i + 1) * shape[1]] for i in range(shape[0])]
        out[key] = column
    return out


def loss_slice_1d(model: nn.Module, data: Any, direction: Direction, alphas: Sequence[float], *, attack=None,
                  num_samples: int | None = None, batch_size: int = 200,
                  device: torch.device | str = "cpu") -> dict[str, Any]:
    """Loss at ``θ + α d`` for each ``α`` (``d`` from :func:`filter_normalised_direction`).

    Returns:
        ``{"kind": "direction", "alphas": [A], "clean_loss": [A], "clean_acc": [A],
        "triggered_loss": [A], "asr": [A] (with an attack), "samples", "triggered_samples",
        "seconds"}``; losses are mean cross-entropy (nats), accuracies fractions.
    """
    start = time.perf_counter()
    ev = _Evaluator(model, data, attack, num_samples=num_samples, batch_size=batch_size, device=device)
    d = _check_direction(ev, direction, "the direction")
    alphas = _grid(alphas, "alphas")
    base = ev.base()
    points = [ev.point({n: base[n] + a * d[n] for n in d}) for a in alphas]
    return {"kind": "direction", "alphas": alphas, **_collect(points), "samples": ev.samples,
            "triggered_samples": ev.triggered_samples, "seconds": time.perf_counter() - start}


def loss_slice_2d(model: nn.Module, data: Any, d1: Direction, d2: Direction, alphas: Sequence[float],
                  betas: Sequence[float], *, attack=None, num_samples: int | None = None, batch_size: int = 200,
                  device: torch.device | str = "cpu") -> dict[str, Any]:
    """Loss at ``θ + α d1 + β d2`` on the grid ``betas × alphas``.

    Returns:
        like :func:`loss_slice_1d` plus ``"betas"``; each value is a nested list of shape
        ``(len(betas), len(alphas))`` (row ``i`` is ``β = betas[i]``: the ``z`` layout of
        plotly's contour and surface traces).
    """
    start = time.perf_counter()
    ev = _Evaluator(model, data, attack, num_samples=num_samples, batch_size=batch_size, device=device)
    u, v = _check_direction(ev, d1, "direction d1"), _check_direction(ev, d2, "direction d2")
    alphas, betas = _grid(alphas, "alphas"), _grid(betas, "betas")
    base = ev.base()
    names = set(u) | set(v)
    zero = {n: torch.zeros_like(base[n]) for n in names}
    points = [ev.point({n: base[n] + a * u.get(n, zero[n]) + b * v.get(n, zero[n]) for n in names})
              for b in betas for a in alphas]
    return {"kind": "direction-2d", "alphas": alphas, "betas": betas,
            **_collect(points, (len(betas), len(alphas))), "samples": ev.samples,
            "triggered_samples": ev.triggered_samples, "seconds": time.perf_counter() - start}


def interpolate(model_a: nn.Module, model_b: nn.Module, data: Any, alphas: Sequence[float], *, attack=None,
                num_samples: int | None = None, batch_size: int = 200,
                device: torch.device | str = "cpu") -> dict[str, Any]:
    """Loss along the straight line ``θ(α) = (1 - α) θ_a + α θ_b`` (``α = 0``: model A, 1: B).

    All floating-point parameters *and* buffers are interpolated (BatchNorm running statistics
    differ between a backdoored model and its fine-tuned purification, and the endpoints must be
    exactly the two models); integer buffers come from model A. ``α`` outside [0, 1]
    extrapolates.

    Returns:
        ``{"kind": "interpolation", "alphas", "clean_loss", "clean_acc", "triggered_loss", "asr"
        (with an attack), "samples", "triggered_samples", "seconds"}``; lists of ``len(alphas)``.
    """
    start = time.perf_counter()
    ev = _Evaluator(model_a, data, attack, num_samples=num_samples, batch_size=batch_size, device=device)
    state_a = ev.model.state_dict()
    state_b = eval_copy(model_b, device).state_dict()  # same memory layout as A's copy
    if set(state_a) != set(state_b) or any(state_a[k].shape != state_b[k].shape for k in state_a):
        raise NgfkitError("the two models differ in architecture (state_dict names or shapes); "
                          "interpolation needs two models of one architecture")
    alphas = _grid(alphas, "alphas")
    moving = [k for k, t in state_a.items() if t.is_floating_point()]
    fixed = {k: t for k, t in state_a.items() if not t.is_floating_point()}

    def state(a: float) -> dict[str, Tensor]:
        # lerp keeps the endpoints exact: lerp(x, y, 0) == x and lerp(x, y, 1) == y
        return {**fixed, **{k: torch.lerp(state_a[k], state_b[k].to(state_a[k].dtype), a) for k in moving}}

    points = [ev.point(state(a)) for a in alphas]
    return {"kind": "interpolation", "alphas": alphas, **_collect(points), "samples": ev.samples,
            "triggered_samples": ev.triggered_samples, "seconds": time.perf_counter() - start}
