"""Implicit Backdoor Adversarial Unlearning (``i-bau``).

Zeng, Chen, Park, Mao, Jin, Jia: "Adversarial Unlearning of Backdoors via Implicit
Hypergradient", ICLR 2022 (official code: github.com/YiZeng623/I-BAU, ``defense.py`` and
``hypergrad.py``). The defence solves

    min_θ  max_δ  (1/n) Σ_i CE(f_θ(x_i + δ), y_i)

over the clean set, with one *universal* perturbation δ (a tensor of the image's shape)
standing in for the unknown trigger. Each round

* **inner**: δ starts at zero and takes one pass of SGD (lr 10) over the clean batches on
  ``L_in(δ, θ) = −CE(f_θ(x + δ), ŷ) + 0.001 ‖δ‖²``, where ŷ are the model's own predictions on
  the clean images: the perturbation that best flips the model's answers;
* **outer**: for each batch, ``L_out = CE(f_θ(x + δ), y)`` and its *implicit hypergradient*,
  which also accounts for how the optimal δ moves with θ. With the fixed-point map
  ``Φ(δ, θ) = δ − 0.1 ∇_δ L_in(δ, θ)`` and ``J = ∂Φ/∂δ``, K fixed-point iterations give
  ``v = Σ_{k<K} (Jᵀ)^k ∂L_out/∂δ`` (a truncated Neumann series for ``(I − Jᵀ)⁻¹ ∂L_out/∂δ``) and
  ``dL_out/dθ = ∂L_out/∂θ + (∂Φ/∂θ)ᵀ v``, all as vector-Jacobian products (double backward);
  Adam (lr 1e-3) steps θ with it.

Authors' values, kept as defaults: Adam lr 1e-3 on every parameter (one optimiser for all
rounds), 5 rounds, K = 5, batch 100, δ-SGD lr 10, δ penalty 0.001, fixed-point step 0.1, model
in eval mode throughout (BatchNorm running statistics never move; its affine weights train).
``v`` starts at zero as in ``hypergrad.fixed_point``, so ``K = 0`` is the plain gradient of
``L_out`` and ``K = 1`` adds one ``(∂Φ/∂θ)ᵀ ∂L_out/∂δ`` term.

Deviations, each an option where it is a choice:

* δ is added to **every** image of the outer batch (``share = 1``), which is the paper's
  objective; ``defense.py`` adds it to a random 1 % of each batch (``share = 0.01``), which with
  a few hundred clean images leaves almost nothing to unlearn from. With ``share < 1`` the first
  ``round(share · B)`` images of each (shuffled) batch get δ.
* δ is projected onto the L2 ball of radius 10 after every inner step (``radius``; ``None``
  switches it off). The authors' notebook projects once after the pass, ``defense.py`` not at all.
* ``x + δ`` is clamped to ``[0, 1]``: images live in pixel space here and a trigger cannot push a
  pixel out of range. The authors leave the clamp commented out.
* The inner loss inside Φ uses the current outer batch and the model's own predictions ŷ, i.e.
  the inner objective δ was actually fitted to; ``defense.py`` evaluates Φ on the first batch
  with its true labels at every step.
* Batches are reshuffled (seeded) every round; the authors iterate in a fixed order.
* ``fixed_point_batch`` (default ``None``: the whole batch, as the authors) evaluates Φ, and so
  the K Hessian-vector products, on only the first images of each batch. The double backward
  dominates the cost: on one CPU core a default run on 600 Fashion-MNIST images with smallcnn
  takes about 130 s, about 45 s with ``fixed_point_batch=20`` and 25 s with
  ``fixed_point_steps=0`` (no implicit term); on a GPU the default takes about a second.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..batches import iterate_batches
from ..errors import NgfkitError
from .. import validation as check
from ..train import to_channels_last, use_channels_last
from .base import DEFENCES, Defence


@dataclass
class IBAUConfig:
    """Options of :class:`IBAU`; the defaults are the authors' except ``share``, ``radius`` and
    the clamp (see the module docstring)."""

    rounds: int = 5  # n_rounds: perturbation search + one unlearning pass each
    fixed_point_steps: int = 5  # K, iterations of the Neumann series for the hypergradient
    lr: float = 1e-3  # outer Adam
    batch_size: int = 100
    perturbation_lr: float = 10.0  # inner SGD on δ
    perturbation_reg: float = 1e-3  # weight of ‖δ‖² in the inner loss
    fixed_point_lr: float = 0.1  # step of the fixed-point map Φ(δ) = δ − step ∇δ L_in
    radius: float | None = 10.0  # L2 bound on δ; None: unbounded
    share: float = 1.0  # fraction of each outer batch that gets δ
    fixed_point_batch: int | None = None  # images Φ is evaluated on; None: the whole batch (authors)
    seed: int = 0

    def __post_init__(self):
        for name, least in (("rounds", 1), ("batch_size", 1), ("fixed_point_steps", 0)):
            value = getattr(self, name)
            if not _whole(value) or value < least:
                raise NgfkitError(f"i-bau {name} must be a whole number of at least {least}, got {value!r}")
            setattr(self, name, int(value))
        for name in ("lr", "perturbation_lr", "fixed_point_lr"):
            setattr(self, name, check.positive(getattr(self, name), f"i-bau {name}"))
        self.perturbation_reg = check.number(self.perturbation_reg, "i-bau perturbation_reg", low=0.0)
        if self.radius is not None:
            self.radius = check.positive(self.radius, "i-bau radius", "or None for no bound")
        if self.fixed_point_batch is not None and (not _whole(self.fixed_point_batch) or self.fixed_point_batch < 1):
            raise NgfkitError("i-bau fixed_point_batch must be a whole number of at least 1 (or None for the "
                              f"whole batch), got {self.fixed_point_batch!r}")
        if not 0 < self.share <= 1:
            raise NgfkitError(f"i-bau share must be in (0, 1], got {self.share!r}")


def _whole(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


def perturb(x: Tensor, delta: Tensor) -> Tensor:
    """``x + δ`` kept inside the valid pixel range."""
    return (x + delta).clamp(0, 1)


def inner_loss(logits: Tensor, pseudo_labels: Tensor, delta: Tensor, reg: float) -> Tensor:
    """``−CE(f(x + δ), ŷ) + reg ‖δ‖²``: minimised by the δ that best flips the model's answers."""
    return -F.cross_entropy(logits, pseudo_labels) + reg * delta.pow(2).sum()


def implicit_hypergradient(model: nn.Module, params: list[Tensor], delta: Tensor, x: Tensor, y: Tensor,
                           pseudo_labels: Tensor, *, perturbed: int, steps: int, fixed_point_lr: float,
                           reg: float, inner_rows: int | None = None) -> tuple[list[Tensor], Tensor]:
    """The I-BAU hypergradient of ``L_out = CE(f(x'), y)`` w.r.t. ``params``, where ``x'`` is
    ``x`` with ``δ`` added to its first ``perturbed`` rows; returns ``(grads, L_out)``.

    ``v = Σ_{k<steps} (Jᵀ)^k ∂L_out/∂δ`` with ``J = ∂Φ/∂δ``, ``Φ(δ) = δ − fixed_point_lr ∇δ L_in``
    and ``L_in = inner_loss`` on the batch with δ (its first ``inner_rows`` rows if given); then
    ``∂L_out/∂θ + (∂Φ/∂θ)ᵀ v``.
    """
    d = delta.detach().requires_grad_(True)
    logits = model(to_channels_last(perturb(x, d)))
    if perturbed < len(x):
        # the clean rows need their own pass: Φ is defined on the whole batch with δ
        outer_logits = torch.cat([logits[:perturbed], model(to_channels_last(x[perturbed:]))])
    else:
        outer_logits = logits
    outer = F.cross_entropy(outer_logits, y)
    grads = torch.autograd.grad(outer, [d, *params], retain_graph=steps > 0, allow_unused=True)
    g_delta = grads[0]
    g_params = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:])]
    if steps == 0 or g_delta is None:
        return g_params, outer.detach()
    if inner_rows is not None and inner_rows < len(x):
        # a fresh, smaller pass: slicing the full one would still double-backward through every row
        inner_logits = model(to_channels_last(perturb(x[:inner_rows], d)))
        pseudo_labels = pseudo_labels[:inner_rows]
    else:
        inner_logits = logits
    (g_inner,) = torch.autograd.grad(inner_loss(inner_logits, pseudo_labels, d, reg), d, create_graph=True)
    phi = d - fixed_point_lr * g_inner
    # hypergrad.fixed_point starts from v = 0, so its first iteration just gives v = ∂L_out/∂δ
    v = g_delta
    for _ in range(steps - 1):
        (jv,) = torch.autograd.grad(phi, d, grad_outputs=v, retain_graph=True)
        v = jv + g_delta
    mixed = torch.autograd.grad(phi, params, grad_outputs=v, allow_unused=True)
    return [g if m is None else g + m for g, m in zip(g_params, mixed)], outer.detach()


def _search_perturbation(model: nn.Module, batches: list[tuple[Tensor, Tensor]], cfg: IBAUConfig,
                         device: torch.device) -> tuple[Tensor, list[Tensor], dict]:
    """One pass of SGD on a zero-initialised universal δ; returns δ, the model's clean
    predictions per batch (ŷ) and statistics of the pass."""
    delta = torch.zeros((1, *batches[0][0].shape[1:]), device=device, requires_grad=True)
    pseudo, losses, flipped, seen = [], [], 0, 0
    for x, _ in batches:
        with torch.no_grad():
            labels = model(to_channels_last(x)).argmax(1)
        pseudo.append(labels)
        logits = model(to_channels_last(perturb(x, delta)))
        loss = inner_loss(logits, labels, delta, cfg.perturbation_reg)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= cfg.perturbation_lr * grad
            if cfg.radius is not None:
                delta *= (cfg.radius / delta.norm().clamp_min(1e-12)).clamp(max=1.0)
        losses.append(-loss.item())
        flipped += (logits.argmax(1) != labels).sum().item()
        seen += len(labels)
    stats = {"perturbation_ce": sum(losses) / len(losses), "flip_rate": flipped / seen,
             "perturbation_norm": delta.detach().norm().item()}
    return delta.detach(), pseudo, stats


@DEFENCES.register("i-bau")
class IBAU(Defence):
    """I-BAU: alternate a universal adversarial perturbation of the clean set with unlearning it
    via the implicit hypergradient (see the module docstring for the paper and every deviation).
    The strength is the number of rounds; :meth:`path` reads every round count off one run."""

    name = "i-bau"
    Config = IBAUConfig
    strength = "rounds"
    strength_grid = (1, 2, 3, 5, 8)

    def _unlearn(self, model: nn.Module, data: Dataset, *, device: torch.device, progress: bool,
                 snapshot_at: tuple[int, ...] = ()) -> tuple[nn.Module, dict, dict[int, nn.Module]]:
        cfg = self.config
        net = use_channels_last(copy.deepcopy(model).to(device)).eval()
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise NgfkitError("i-bau found no trainable parameters in the model")
        optimiser = torch.optim.Adam(params, lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        batch_size = min(cfg.batch_size, len(data))
        history: dict = {"loss": [], "round_loss": [], "perturbation_ce": [], "flip_rate": [],
                         "perturbation_norm": []}
        snapshots: dict[int, nn.Module] = {}
        total = cfg.rounds * -(-len(data) // batch_size)
        bar = tqdm(total=total, desc=self.name, disable=not progress, unit="step", leave=False)
        for round_ in range(1, cfg.rounds + 1):
            batches = list(iterate_batches(data, batch_size, shuffle=True, generator=generator, device=device))
            delta, pseudo, stats = _search_perturbation(net, batches, cfg, device)
            for key, value in stats.items():
                history[key].append(value)
            round_losses = []
            for (x, y), labels in zip(batches, pseudo):
                perturbed = max(1, round(cfg.share * len(x)))
                grads, loss = implicit_hypergradient(
                    net, params, delta, x, y, labels, perturbed=perturbed, steps=cfg.fixed_point_steps,
                    fixed_point_lr=cfg.fixed_point_lr, reg=cfg.perturbation_reg, inner_rows=cfg.fixed_point_batch)
                for p, g in zip(params, grads):
                    p.grad = g
                optimiser.step()
                round_losses.append(loss.item())
                bar.update(1)
            optimiser.zero_grad(set_to_none=True)
            history["loss"] += round_losses
            history["round_loss"].append(sum(round_losses) / len(round_losses))
            bar.set_postfix(loss=f"{history['round_loss'][-1]:.3f}", flip=f"{stats['flip_rate']:.2f}")
            if round_ in snapshot_at:
                snapshots[round_] = copy.deepcopy(net).eval()
        bar.close()
        return net.eval(), history, snapshots

    def run(self, model, clean_data, *, device, progress, features=None):
        purified, history, _ = self._unlearn(model, clean_data, device=device, progress=progress)
        return purified, history

    def path(self, model, clean_data, values, *, device, progress, features=None) -> Iterator[tuple[int, nn.Module]]:
        """One run of ``max(values)`` rounds, snapshotted after each requested round count (the
        rounds are sequential and seeded, so the snapshot after ``r`` rounds is the ``r``-round run)."""
        longest = self.with_options(rounds=max(values))
        _, _, snapshots = longest._unlearn(model, clean_data, device=device, progress=progress,
                                           snapshot_at=tuple(values))
        for value in values:
            yield value, snapshots[value]
