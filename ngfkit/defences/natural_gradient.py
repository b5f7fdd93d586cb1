"""Natural Gradient Fine-tuning (NGF): EKFAC-preconditioned steps on chosen linear layers.

The maths, written once and used both by the hook-based optimiser here (any layers, inside the
shared training loop :func:`~ngfkit.train.train_model`) and by the batched heads of the fast path
(:func:`~ngfkit.defences.batched_heads.fit_heads`):

- :class:`~ngfkit.curvature.fisher.KFACState` holds the running EKFAC estimate and solves with it;
- :func:`kl_clip_scale` is the KL clip of one step;
- :func:`proximal_pull` is the exact proximal step of the Fisher regulariser in that geometry.

The hooks: :class:`LayerTaps` records the inputs ``a`` and outputs ``s`` of the chosen layers;
:class:`NaturalGradient` (a :class:`~ngfkit.train.StepHooks`) turns the loss gradient into a
damped, KL-clipped natural gradient; :class:`FisherRegulariser` pulls weights that matter for
clean data back toward the backdoored model's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..batches import iterate_batches
from ..curvature.fisher import (KFACState, diagonal_fisher, eigenbasis_scales, fisher_labels, kfac_factors,
                                softmax_output_gradients, symmetric_eigh, with_bias_column)
from ..train import StepHooks
from .classifier_only import layer_gradient, layer_matrix, set_layer_gradient, set_layer_matrix


def kl_clip_scale(inner: Tensor, lr: Tensor | float, kl_clip: float) -> Tensor:
    """``ν = min(1, sqrt(kl_clip / (lr² ⟨V, ∇⟩)))`` (1 where ``⟨V, ∇⟩ <= 0``), elementwise over a
    batch of steps: ``inner`` ``(M,)`` (or a scalar) is ``Σ V ⊙ ∇`` of each step, ``lr`` its learning rate."""
    lr = torch.as_tensor(lr, dtype=inner.dtype, device=inner.device)
    clip = torch.sqrt(kl_clip / (lr.reshape(inner.shape) ** 2 * inner.clamp_min(1e-30)))
    return torch.where(inner > 0, clip.clamp(max=1.0), torch.ones_like(inner))


def proximal_pull(delta: Tensor, state: KFACState, anchor_scales: Tensor, lr: Tensor | float,
                  strength: float) -> Tensor:
    """The displacement from the anchor after the regulariser's exact proximal step.

    Minimises ``‖θ − θ_step‖²_M / (2 lr) + (η/2) ‖θ − θ⁰‖²_F`` with ``M`` the damped EKFAC metric
    of ``state`` and ``F`` the anchor's Fisher diagonalised in the same eigenbasis
    (``anchor_scales`` ``(..., D_out, D_in)``); ``delta = θ_step − θ⁰`` ``(..., D_out, D_in)``.
    In that basis each coordinate shrinks by ``M / (M + lr η F)``, so the step never diverges.
    """
    metric = state.scales + state.damping
    return state.unrotate(state.rotate(delta) * metric / (metric + lr * strength * anchor_scales))


def head_statistics(a: Tensor, weight: Tensor, labels: Tensor, fisher: str,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample inputs ``a`` ``(N, D+1)`` and output gradients ``g`` ``(N, C)`` of the head
    ``weight`` ``(C, D+1)`` on cached features with the bias column: the statistics its Fisher is built from."""
    logits = a @ weight.T
    return a, softmax_output_gradients(logits, fisher_labels(logits, labels, fisher, generator))


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
            inner = inner + (directions[name] * grad).sum()
        scale = kl_clip_scale(torch.as_tensor(inner), lr, self.kl_clip)
        self.last_scale = float(scale)
        for name, layer in self.layers.items():
            set_layer_gradient(layer, scale * directions[name])

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

    - Without a metric (plain SGD), ``M = I`` and ``F`` is the diagonal Fisher (``structure="diag"``,
      normalised to mean 1 so that ``η`` means the same on every model) or its K-FAC form
      ``A ⊗ G`` (``structure="kfac"``, exact in the eigenbases of ``A`` and ``G``).
    - Attached to a :class:`NaturalGradient` (:meth:`use_metric`), ``M`` is that optimiser's
      damped EKFAC Fisher and ``F`` the backdoored model's Fisher diagonalised in the same
      eigenbasis, so both terms are measured in one geometry. A Euclidean pull-back after a
      natural-gradient step is not stable: it re-injects movement into directions the
      preconditioner amplifies by ``1 / damping``.
    """

    def __init__(self, layers: dict[str, nn.Linear], statistics: dict[str, tuple[Tensor, Tensor]],
                 strength: float, structure: str = "diag"):
        if structure not in ("diag", "kfac"):
            raise ValueError(f"the regulariser's structure must be 'diag' or 'kfac', got {structure!r}")
        self.layers = layers
        self.statistics = statistics
        self.strength = float(strength)
        self.structure = structure
        self.metric: NaturalGradient | None = None
        self._basis_scales: dict[str, tuple[Tensor, Tensor]] = {}
        self.anchor = {n: layer_matrix(l) for n, l in layers.items()}
        self.curvature: dict[str, Tensor | tuple[Tensor, Tensor, Tensor]] = {}
        for name, (a, g) in statistics.items():
            if structure == "diag":
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
            if self.structure == "diag":
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
                delta = proximal_pull(delta, state, self.anchor_scales(name, state), lr, self.strength)
            elif self.structure == "diag":
                delta = delta / (1 + lr * self.strength * self.curvature[name])
            else:
                q_a, q_g, scales = self.curvature[name]
                delta = q_g @ ((q_g.T @ delta @ q_a) / (1 + lr * self.strength * scales)) @ q_a.T
            set_layer_matrix(layer, self.anchor[name] + delta)
