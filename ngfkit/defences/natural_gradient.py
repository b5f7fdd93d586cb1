"""Natural Gradient Fine-tuning (NGF): EKFAC-preconditioned steps on chosen linear layers.

The pieces, each usable alone:

- :class:`LayerTaps` records the inputs ``a`` and outputs ``s`` of the chosen layers;
- :class:`NaturalGradient` (a :class:`~ngfkit.train.StepHooks`) keeps a running EKFAC estimate
  of each layer's Fisher and turns the loss gradient into a damped, KL-clipped natural gradient;
- :class:`FisherRegulariser` pulls weights that matter for clean data back toward the
  backdoored model's, as an exact proximal step (stable for any strength);
- :func:`cache_features` + :class:`FeatureDataset` give the fast path: with the body frozen, the
  classifier's inputs on the clean set are computed once and NGF runs on them alone
  (:func:`reuse_features` shares them between several defences run on one model).
"""
from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..batches import iterate_batches, random_crop_flip
from ..curvature.fisher import (KFACState, diagonal_fisher, eigenbasis_scales, fisher_labels, kfac_factors,
                     symmetric_eigh, with_bias_column)
from ..train import CombinedHooks, StepHooks, to_channels_last, use_channels_last  # noqa: F401


def layer_gradient(layer: nn.Linear) -> Tensor:
    """``[dW, db]`` as one ``(D_out, D_in [+1])`` matrix."""
    if layer.bias is None:
        return layer.weight.grad
    return torch.cat([layer.weight.grad, layer.bias.grad.view(-1, 1)], dim=1)


def set_layer_gradient(layer: nn.Linear, grad: Tensor) -> None:
    d_in = layer.weight.shape[1]
    layer.weight.grad.copy_(grad[:, :d_in])
    if layer.bias is not None:
        layer.bias.grad.copy_(grad[:, d_in])


def layer_matrix(layer: nn.Linear) -> Tensor:
    """``[W, b]`` as one ``(D_out, D_in [+1])`` matrix (a copy)."""
    if layer.bias is None:
        return layer.weight.detach().clone()
    return torch.cat([layer.weight.detach(), layer.bias.detach().view(-1, 1)], dim=1)


def set_layer_matrix(layer: nn.Linear, matrix: Tensor) -> None:
    d_in = layer.weight.shape[1]
    with torch.no_grad():
        layer.weight.copy_(matrix[:, :d_in])
        if layer.bias is not None:
            layer.bias.copy_(matrix[:, d_in])


class LayerTaps:
    """Forward hooks that keep each layer's last input ``(N, D_in [+1])`` and output ``(N, D_out)``."""

    def __init__(self, layers: dict[str, nn.Linear]):
        self.layers = layers
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.handles = [layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str):
        def hook(layer: nn.Linear, args, output: Tensor) -> None:
            a = args[0].detach().flatten(0, -2)
            self.inputs[name] = with_bias_column(a) if layer.bias is not None else a
            self.outputs[name] = output
        return hook

    def output_gradients(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Per-sample ``dl_i/ds_i`` ``(N, D_out)`` for each layer, of cross-entropy at ``labels``."""
        loss = F.cross_entropy(logits, labels, reduction="sum")
        names = list(self.outputs)
        grads = torch.autograd.grad(loss, [self.outputs[n] for n in names], retain_graph=True)
        return {n: g.detach().flatten(0, -2) for n, g in zip(names, grads)}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class NaturalGradient(StepHooks):
    """EKFAC natural-gradient preconditioning of ``layers`` inside the shared training loop.

    Every ``factor_every`` steps the Fisher factors are refreshed from the current batch (running
    averages with ``decay``), every ``eigen_every`` steps their eigenbases; the gradient
    ``∇`` of each layer becomes ``V = (F + damping)⁻¹ ∇`` and all are scaled by
    ``ν = min(1, sqrt(kl_clip / (lr² Σ V ⊙ ∇)))`` so one step never changes the model's output
    distribution by more than about ``kl_clip`` in KL divergence.
    """

    def __init__(self, layers: dict[str, nn.Linear], *, damping: float = 1e-3, kl_clip: float = 1e-2,
                 decay: float = 0.95, factor_every: int = 10, eigen_every: int = 100,
                 fisher: str = "empirical", ekfac: bool = True, seed: int = 0):
        self.layers = layers
        self.taps = LayerTaps(layers)
        self.states = {name: KFACState(damping, decay, ekfac) for name in layers}
        self.kl_clip = kl_clip
        self.factor_every = factor_every
        self.eigen_every = eigen_every
        self.fisher = fisher
        self.generator = torch.Generator().manual_seed(seed)
        self.last_scale = 1.0

    def observe(self, logits: Tensor, labels: Tensor, step: int) -> None:
        if step % self.factor_every and step % self.eigen_every:
            return
        targets = fisher_labels(logits, labels, self.fisher, self.generator)
        grads = self.taps.output_gradients(logits, targets)
        for name, state in self.states.items():
            state.update(self.taps.inputs[name], grads[name])
            if step % self.eigen_every == 0:
                state.refresh_eigenbasis()

    def precondition(self, lr: float) -> None:
        directions = {}
        inner = 0.0
        for name, layer in self.layers.items():
            grad = layer_gradient(layer)
            directions[name] = self.states[name].solve(grad)
            inner += (directions[name] * grad).sum().item()
        self.last_scale = 1.0 if inner <= 0 else min(1.0, math.sqrt(self.kl_clip / (lr * lr * inner)))
        for name, layer in self.layers.items():
            set_layer_gradient(layer, self.last_scale * directions[name])

    def close(self) -> None:
        self.taps.remove()


def layer_statistics(model: nn.Module, layers: dict[str, nn.Linear], dataset: Dataset, *,
                     fisher: str = "empirical", seed: int = 0, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> dict[str, tuple[Tensor, Tensor]]:
    """Per-sample inputs ``a`` ``(N, D_in+1)`` and output gradients ``g`` ``(N, D_out)`` of each layer
    over the whole ``dataset``, with ``model`` in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    taps = LayerTaps(layers)
    collected: dict[str, tuple[list[Tensor], list[Tensor]]] = {n: ([], []) for n in layers}
    was_training = model.training
    model.eval()
    try:
        for x, y in iterate_batches(dataset, batch_size, device=device):
            logits = model(x)
            grads = taps.output_gradients(logits, fisher_labels(logits, y, fisher, generator))
            for name in layers:
                collected[name][0].append(taps.inputs[name])
                collected[name][1].append(grads[name])
    finally:
        taps.remove()
        model.train(was_training)
    return {n: (torch.cat(a), torch.cat(g)) for n, (a, g) in collected.items()}


class FisherRegulariser(StepHooks):
    """Clean-distribution-aware penalty ``(η/2) Σ_j F_jj (θ_j − θ⁰_j)²`` applied as a proximal step.

    ``F`` is the backdoored model's Fisher on the clean set (from ``statistics``, per-sample
    ``a`` and ``g`` of each layer) and ``θ⁰`` its weights. After each optimiser step with
    learning rate ``lr`` the weights move to the exact minimiser of
    ``‖θ − θ_step‖²_M / (2 lr) + (η/2) ‖θ − θ⁰‖²_F``, coordinate by coordinate a convex
    combination of ``θ_step`` and ``θ⁰``: the regulariser can slow the optimisation but never
    make it diverge.

    - Without a metric (plain SGD), ``M = I`` and ``F`` is the diagonal Fisher (``kind="diag"``,
      normalised to mean 1 so that ``η`` means the same on every model) or its K-FAC form
      ``A ⊗ G`` (``kind="kfac"``, exact in the eigenbases of ``A`` and ``G``).
    - Attached to a :class:`NaturalGradient` (:meth:`use_metric`), ``M`` is that optimiser's
      damped EKFAC Fisher and ``F`` the backdoored model's Fisher diagonalised in the same
      eigenbasis, so both terms are measured in one geometry. A Euclidean pull-back after a
      natural-gradient step is not stable: it re-injects movement into directions the
      preconditioner amplifies by ``1 / damping``.
    """

    def __init__(self, layers: dict[str, nn.Linear], statistics: dict[str, tuple[Tensor, Tensor]],
                 strength: float, kind: str = "diag"):
        if kind not in ("diag", "kfac"):
            raise ValueError(f"regulariser kind must be 'diag' or 'kfac', got {kind!r}")
        self.layers = layers
        self.statistics = statistics
        self.strength = float(strength)
        self.kind = kind
        self.metric: NaturalGradient | None = None
        self._basis_scales: dict[str, tuple[Tensor, Tensor]] = {}
        self.anchor = {n: layer_matrix(l) for n, l in layers.items()}
        self.curvature: dict[str, Tensor | tuple[Tensor, Tensor, Tensor]] = {}
        for name, (a, g) in statistics.items():
            if kind == "diag":
                diag = diagonal_fisher(a, g)
                self.curvature[name] = diag / diag.mean().clamp_min(1e-12)
            else:
                a_factor, g_factor = kfac_factors(a, g)
                eig_a, q_a = symmetric_eigh(a_factor)
                eig_g, q_g = symmetric_eigh(g_factor)
                scales = eig_g.clamp_min(0).view(-1, 1) * eig_a.clamp_min(0).view(1, -1)
                self.curvature[name] = (q_a, q_g, scales / scales.mean().clamp_min(1e-12))

    def use_metric(self, natural: "NaturalGradient") -> "FisherRegulariser":
        """Take proximal steps in ``natural``'s Fisher geometry (see the class docstring)."""
        self.metric = natural
        return self

    def penalty(self) -> Tensor:
        """The Euclidean-form penalty's current value (differentiable in the layers' parameters)."""
        total = 0.0
        for name, layer in self.layers.items():
            theta = layer.weight if layer.bias is None else torch.cat([layer.weight, layer.bias.view(-1, 1)], 1)
            delta = theta - self.anchor[name]
            if self.kind == "diag":
                total = total + (self.curvature[name] * delta.pow(2)).sum()
            else:
                q_a, q_g, scales = self.curvature[name]
                total = total + (scales * (q_g.T @ delta @ q_a).pow(2)).sum()
        return 0.5 * self.strength * total

    def anchor_scales(self, name: str, state: KFACState) -> Tensor:
        """The backdoored model's Fisher diagonal in ``state``'s current eigenbasis ``(D_out, D_in)``."""
        cached = self._basis_scales.get(name)
        if cached is None or cached[0] is not state.q_a:
            a, g = self.statistics[name]
            cached = (state.q_a, eigenbasis_scales(a, g, state.q_a, state.q_g))
            self._basis_scales[name] = cached
        return cached[1]

    @torch.no_grad()
    def after_step(self, lr: float) -> None:
        if self.strength <= 0:
            return
        for name, layer in self.layers.items():
            delta = layer_matrix(layer) - self.anchor[name]
            state = self.metric.states[name] if self.metric is not None else None
            if state is not None and state.ready:
                metric = state.scales + state.damping
                rotated = state.q_g.T @ delta @ state.q_a
                rotated = rotated * metric / (metric + lr * self.strength * self.anchor_scales(name, state))
                delta = state.q_g @ rotated @ state.q_a.T
            elif self.kind == "diag":
                delta = delta / (1 + lr * self.strength * self.curvature[name])
            else:
                q_a, q_g, scales = self.curvature[name]
                delta = q_g @ ((q_g.T @ delta @ q_a) / (1 + lr * self.strength * scales)) @ q_a.T
            set_layer_matrix(layer, self.anchor[name] + delta)


class FeatureDataset(Dataset):
    """Cached classifier inputs of ``V`` views of ``N`` images, ``features`` ``(V, N, D)``, with labels ``(N,)``.

    View 0 is the unaugmented image; items run over all views (``len = V * N``). ``subset``
    selects images (with all their views), ``original`` keeps view 0 only.
    """

    def __init__(self, features: Tensor, labels: Tensor):
        if features.dim() == 2:
            features = features.unsqueeze(0)
        self.features = features
        self.labels = labels
        self.targets = labels.repeat(features.shape[0])

    def __len__(self) -> int:
        return self.features.shape[0] * self.features.shape[1]

    def __getitem__(self, i: int):
        return self.features.flatten(0, 1)[i], int(self.targets[i])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.features.flatten(0, 1)[indices], self.targets[indices]

    def subset(self, indices: Tensor) -> "FeatureDataset":
        return FeatureDataset(self.features[:, indices], self.labels[indices])

    def original(self) -> "FeatureDataset":
        return FeatureDataset(self.features[:1], self.labels)


_feature_memo: dict | None = None


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def reuse_features(store: dict | None = None) -> Iterator[dict]:
    """Inside this block :func:`cache_features` computes each result once: a call with a model of
    identical weights (compared by content), the same layer, the same dataset object, views, seed
    and device returns the stored features. For running several one-layer defences on one model
    (the book's chapters); pass the same ``store`` to several blocks to share it between them.
    Outside any block nothing is stored."""
    global _feature_memo
    outer = _feature_memo
    _feature_memo = store if store is not None else ({} if outer is None else outer)
    try:
        yield _feature_memo
    finally:
        _feature_memo = outer


@torch.no_grad()
def cache_features(model: nn.Module, layer: nn.Linear, dataset: Dataset, *, views: int = 0, seed: int = 0,
                   batch_size: int = 256, device: torch.device | str = "cpu") -> FeatureDataset:
    """Run the frozen model (eval mode) once over ``dataset`` and keep ``layer``'s inputs, for the
    images themselves and for ``views`` randomly cropped and flipped copies of each (stored and
    reused inside :func:`reuse_features`)."""
    if _feature_memo is None:
        return _compute_features(model, layer, dataset, views, seed, batch_size, device)
    layer_name = next((n for n, m in model.named_modules() if m is layer), None)
    key = (_weights_digest(model), layer_name, id(dataset), views, seed, batch_size, str(device))
    if key not in _feature_memo:  # the dataset is stored too, so its id stays unique
        _feature_memo[key] = (dataset, _compute_features(model, layer, dataset, views, seed, batch_size, device))
    return _feature_memo[key][1]


def _compute_features(model, layer, dataset, views, seed, batch_size, device) -> FeatureDataset:
    captured: list[Tensor] = []
    labels: list[Tensor] = []
    generator = torch.Generator().manual_seed(seed)
    handle = layer.register_forward_hook(lambda m, args, out: captured.append(args[0].detach().flatten(1)))
    was_training = model.training
    use_channels_last(model).eval()
    try:
        for x, y in iterate_batches(dataset, batch_size, device=device):
            model(to_channels_last(x))
            for _ in range(views):
                model(to_channels_last(random_crop_flip(x, generator, pad=max(1, x.shape[-1] // 14))))
            labels.append(y)
    finally:
        handle.remove()
        model.train(was_training)
    per_batch = [torch.stack(captured[i : i + views + 1]) for i in range(0, len(captured), views + 1)]
    return FeatureDataset(torch.cat(per_batch, dim=1), torch.cat(labels))


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
