"""Fisher Information guided Purification (``fip``) and its singular-value variant (``fip-fast``).

Karim, Arafat, Rakin, Guo, Rahnavard: "Fisher Information guided Purification against Backdoor
Attacks", ACM CCS 2024 (arXiv 2409.00863); official code: github.com/nazmul-karim170/
FIP-Fisher-Backdoor-Removal, ``src/Remove_Backdoor_FIP.py`` (``main``, ``FIP_Train``),
``src/Regularizer.py`` (``CDA_Regularizer``: ``forward_backward_update``, ``get_trace_loss``,
``register_ewc_params``, ``_compute_reg_loss``) and ``src/networks/svd_layers.py`` (``SVDConv2d``,
``SVDLinear``, …). The paper's premise: a backdoored model sits in a sharper minimum than a benign
one, so re-optimising it on a little clean data towards a smoother minimum removes the backdoor.

What the authors' code does (their values are our defaults unless listed below):

- SGD over **every** parameter, lr 0.005 constant, momentum 0.95, no weight decay; 2,000
  iterations (4 "epochs" of 500) of batches of 128 drawn **with replacement** from 1 % of the
  training set (500 CIFAR-10 images), random crop (pad 4) and flip, BatchNorm in train mode;
- loss ``CE + η_F · T`` with ``η_F = 0.5`` (``--reg_F``), ``T`` computed on every 5th batch
  (``iter_gap``; 0 otherwise) from the same forward pass as the cross-entropy;
- ``T`` (``get_trace_loss``, ``hi = 20`` probes), read literally: ``ℓ = mean(log_softmax(z)[:, y])``
  (indexing with the label vector gives the ``N × N`` matrix ``log p_i(y_j)``, so ``ℓ`` is the
  batch's mean log-probability of the batch's *label distribution*, not of each image's own
  label); ``g_l = ∂ℓ/∂θ_l`` for the ``P`` parameter tensors (with ``create_graph``, so ``T`` is
  differentiated a second time); for each Gaussian probe ``v``, the running sum
  ``Σ_{m≤l} ⟨g_m, v_m⟩`` is appended after **every** tensor ``l`` (the ``append`` sits inside the
  loop over tensors). Altogether ``T = Σ_l (P − l) ⟨g_l, w_l⟩`` (``l = 0 … P−1`` in
  ``model.parameters()`` order), ``w`` the mean of the 20 probes. It is linear in ``g`` and has
  mean zero: the function is named a (Hutchinson) trace of the Fisher, but no ``(vᵀg)²`` is
  formed, so in effect every 5th step adds a random Hessian-vector product of ``ℓ`` to the
  gradient, weighted towards the first layers. ``term="trace"`` (the default) computes what
  the paper and the function's name say: the trace of the batch's empirical Fisher ``g gᵀ``,
  ``‖g‖²``, with ``g`` the gradient of the mean log-likelihood of each image's own label (the
  expectation of the Hutchinson estimate, computed exactly); ``term="code"`` computes the code's
  term exactly, as ``ngf-reference`` runs NGF's code beside ``ngf``, the paper's text;
- an EWC term ``Σ F (θ − θ₀)²`` (the "clean accuracy retainer") is set up
  (``register_ewc_params``) but commented out of the loss; it is not implemented here;
- "fast FIP": ``svd_layers.py`` rewrites each conv/linear weight (reshaped ``C_out × rest``) as
  ``U diag(relu(S + δ)) Vᵀ`` with ``U, S, V`` from its SVD, ``δ`` trained from 0 and the weight
  frozen; the repository has no script that trains it (``network_cifar_svd.py`` is empty).

Our deviations:

- **The smoothness term** is the paper's (``term="trace"``), not the code's mean-zero term (above).
- **Budget.** 200 steps of 64 images (12,800 images seen, 21 epochs of 600 clean images; the
  authors: 2,000 of 128, 256,000 images, 512 epochs of 500), the same budget as ``ft``. On one
  core of a busy 2-core CPU a default ``fip`` run on 600 Fashion-MNIST images with ``smallcnn``
  takes about 40 s (a plain step ≈ 0.1 s, a step with ``T``'s double backward ≈ 0.65 s), and
  ``fip-fast`` about 45 s (rebuilding the weights from ``U, S, V`` costs more than the smaller
  backward saves on a model this small); the authors' 2,000 steps of 128 would take about
  14 minutes there (their RTX 3090: 20.8 s on CIFAR-10's PreAct-ResNet-18). The strength knob is
  ``smoothness`` (η_F), not the steps, so that its default is the authors' value, 0.5.
- ``T``'s probes: one Gaussian draw ``w ~ N(0, I/probes)`` per tensor, which has exactly the
  distribution of the mean of ``probes`` standard draws; drawn from a generator seeded by
  ``seed`` (the authors: the global RNG).
- The authors' unused EWC set-up runs 5 forward passes in train mode before purification, which
  moves BatchNorm's running statistics; we skip it.
- ``fip-fast`` trains only the ``δ`` of every ``Conv1d/2d/3d`` and ``Linear`` weight (biases and
  BatchNorm's affine weights stay fixed; BatchNorm's running statistics move, in train mode as in
  FIP), with FIP's loss and settings (the authors give none for it), ``T``'s gradient taken
  w.r.t. the ``δ``; afterwards ``U diag(relu(S + δ)) Vᵀ`` is folded back into ordinary weights,
  so the returned model has the input's architecture and state-dict keys. Normalisation and
  embedding layers, which ``svd_layers.py`` also covers, are left alone.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import validation as check
from ..errors import NgfkitError
from ..train import StepHooks, TrainConfig, frozen_except, train_model
from .base import DEFENCES, Defence

TERMS = ("code", "trace")


@dataclass
class FIPConfig:
    """FIP's options (see the module docstring for the authors' values and our deviations)."""

    smoothness: float = 0.5  # η_F (the authors' --reg_F), the weight of the smoothness term T
    term: str = "trace"  # "trace": ‖g‖², the Fisher's trace (the paper); "code": T as the authors' code has it
    every: int = 5  # T is added on every this-many-th step (the authors' iter_gap), from the first
    probes: int = 20  # Gaussian probes averaged in T (the authors' hi); "trace" needs none
    steps: int = 200  # the authors: 2,000
    lr: float = 0.005
    momentum: float = 0.95
    weight_decay: float = 0.0
    batch_size: int = 64  # the authors: 128
    augment: bool = True  # random crop (pad 4) and flip of every batch
    seed: int = 0  # batch order, augmentation and T's probes

    owner: ClassVar[str] = "fip"  # the defence named in error messages

    def __post_init__(self):
        owner = self.owner
        self.smoothness = check.number(self.smoothness, f"{owner} smoothness", low=0.0,
                                       fix="it is η_F, the weight of the smoothness term; the authors use 0.5")
        if self.term not in TERMS:
            raise NgfkitError(f"{owner} term must be one of {', '.join(TERMS)}, got {self.term!r}")
        self.every = check.whole(self.every, f"{owner} every", least=1)
        self.probes = check.whole(self.probes, f"{owner} probes", least=1)
        self.steps = check.whole(self.steps, f"{owner} steps", least=1)
        self.lr = check.positive(self.lr, f"{owner} lr")
        self.momentum = check.number(self.momentum, f"{owner} momentum", low=0.0, high=1.0, high_open=True)
        self.weight_decay = check.number(self.weight_decay, f"{owner} weight_decay", low=0.0)
        self.batch_size = check.whole(self.batch_size, f"{owner} batch_size", least=1)
        check.like_default(self.augment, True, f"{owner} augment")
        self.seed = check.whole(self.seed, f"{owner} seed")


@dataclass
class FastFIPConfig(FIPConfig):
    """``fip-fast``: FIP's options; only the singular values of conv/linear weights are trained."""

    owner: ClassVar[str] = "fip-fast"


class FisherSmoothness(StepHooks):
    """FIP's smoothness term ``T`` as an ``extra_loss`` (:meth:`loss`) of the shared loop, with
    respect to the trained tensors ``params``; ``observe`` tells it the step, so that ``T`` is
    computed on steps ``0, every, 2·every, …`` (0-based) and is 0 on the others.

    ``values`` collects ``T`` on each step where it was computed."""

    def __init__(self, params: list[Tensor], *, weight: float, term: str, every: int, probes: int,
                 seed: int, device: torch.device):
        self.params, self.weight, self.term, self.every, self.probes = params, weight, term, every, probes
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.step = 0
        self.values: list[float] = []

    def observe(self, logits, labels, step):
        self.step = step

    def probe(self) -> list[Tensor]:
        """One ``N(0, I/probes)`` tensor per trained tensor: the mean of ``probes`` standard probes."""
        scale = 1.0 / math.sqrt(self.probes)
        return [torch.randn(p.shape, generator=self.generator, device=self.generator.device,
                            dtype=p.dtype).to(p.device) * scale for p in self.params]

    def value(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``T`` on this batch (differentiable, for the second backward pass)."""
        log_probs = F.log_softmax(logits, dim=1)
        if self.term == "code":
            likelihood = log_probs[:, labels].mean()  # the authors' N × N indexing, kept
        else:
            likelihood = log_probs.gather(1, labels.view(-1, 1)).mean()
        grads = torch.autograd.grad(likelihood, self.params, create_graph=True, allow_unused=True)
        if self.term == "trace":
            return sum((g * g).sum() for g in grads if g is not None)
        count = len(self.params)
        return sum((count - i) * (g * w).sum()
                   for i, (g, w) in enumerate(zip(grads, self.probe())) if g is not None)

    def loss(self, x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        if self.weight == 0.0 or self.step % self.every:
            return logits.new_zeros(())
        value = self.value(logits, y)
        self.values.append(float(value.detach()))
        return self.weight * value


@DEFENCES.register("fip")
class FIP(Defence):
    """FIP: SGD (momentum 0.95) on every parameter with the clean cross-entropy plus
    ``η_F · T`` every 5th step, ``T`` the authors' Fisher-smoothness term. The strength is η_F
    (``smoothness``, the authors' 0.5); the history adds ``term`` (``T`` where it was computed)."""

    name = "fip"
    Config = FIPConfig
    strength = "smoothness"
    strength_grid = (0.1, 0.25, 0.5, 1.0, 2.0)

    def trained(self, net: nn.Module) -> list[Tensor]:
        """The tensors of ``net`` (the copy being purified) that this defence trains."""
        return list(net.parameters())

    def finish(self, net: nn.Module) -> None:
        """Turn the trained copy back into the input's architecture (nothing to do for FIP)."""

    def run(self, model, clean_data, *, device, progress, features=None):
        cfg = self.config
        net = copy.deepcopy(model).to(device)
        params = self.trained(net)
        smooth = FisherSmoothness(params, weight=cfg.smoothness, term=cfg.term, every=cfg.every,
                                  probes=cfg.probes, seed=cfg.seed, device=torch.device(device))
        train_cfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, final_lr_ratio=1.0, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, batch_size=min(cfg.batch_size, len(clean_data)),
                                augment=cfg.augment)
        with frozen_except(net, params):
            fit = train_model(net, clean_data, train_cfg, seed=cfg.seed, device=device, progress=progress,
                              desc=self.name, params=params, hooks=smooth, extra_loss=smooth.loss,
                              replacement=True)
        self.finish(net)
        return net.eval(), {"loss": fit["loss"], "term": smooth.values}


class SingularValueShift(nn.Module):
    """A weight parametrisation ``U diag(relu(S + δ)) Vᵀ`` (``U, S, V`` fixed, from the SVD of the
    weight reshaped to ``C_out × rest``; ``δ`` trained, starting at 0), as in the authors'
    ``svd_layers.py``."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.shape = tuple(weight.shape)
        u, s, vh = torch.linalg.svd(weight.detach().reshape(weight.shape[0], -1), full_matrices=False)
        self.register_buffer("u", u)
        self.register_buffer("s", s)
        self.register_buffer("vh", vh)
        self.delta = nn.Parameter(torch.zeros_like(s))

    def forward(self, original: Tensor) -> Tensor:
        return ((self.u * F.relu(self.s + self.delta)) @ self.vh).reshape(self.shape)


SVD_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@DEFENCES.register("fip-fast")
class FastFIP(FIP):
    """Fast FIP: FIP's loss and settings, but only the singular values of every conv/linear
    weight move (their singular vectors, the biases and BatchNorm's affine weights stay); the
    shifted weights are folded back into ordinary ones. The strength is η_F (``smoothness``)."""

    name = "fip-fast"
    Config = FastFIPConfig

    def trained(self, net):
        layers = [m for m in net.modules() if isinstance(m, SVD_LAYERS)]
        if not layers:
            raise NgfkitError("fip-fast shifts the singular values of conv and linear layers, and this model has none")
        deltas = []
        for layer in layers:
            parametrize.register_parametrization(layer, "weight", SingularValueShift(layer.weight))
            deltas.append(layer.parametrizations.weight[0].delta)
        return deltas

    def finish(self, net):
        for layer in [m for m in net.modules() if parametrize.is_parametrized(m, "weight")]:
            flag = layer.parametrizations.weight.original.requires_grad
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            layer.weight.requires_grad_(flag)
            # the folded weight was registered last; restore the input's order (weight, bias)
            own = {name: p for name, p in layer.named_parameters(recurse=False)}
            for name in own:
                delattr(layer, name)
            for name in ("weight", *(n for n in own if n != "weight")):
                setattr(layer, name, own[name])
