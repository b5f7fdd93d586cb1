"""How strong should NGF's Fisher regulariser be? A sweep of its strength η, and what it holds.

NGF's regulariser (:class:`ngfkit.defences.natural_gradient.FisherRegulariser`) adds ``(η/2) Σ_j F_jj (θ_j − θ⁰_j)²``
to the fine-tuning loss, ``F`` the backdoored model's Fisher on the clean set and ``θ⁰`` its
weights. This module measures what η does, on NGF's fast path (body frozen, classifier only):

- :func:`regulariser_sweep` caches the classifier's clean inputs once, fixes one learning rate
  (given, or chosen once from clean data at the default η), then fine-tunes the head once per η
  and measures C-ACC / ASR / RA from cached test inputs;
- :func:`classifier_fisher` is the Fisher of the classifier on clean data, per weight and in its
  eigenbasis, and :func:`movement_by_fisher` bins how far each weight (or eigen-direction) moved
  by its Fisher value.

:mod:`ngfkit.viz.sweep` draws them.

Shapes: the classifier ``s = W a + b`` with ``C`` classes and ``D`` input features is handled as
one matrix ``[W, b]`` ``(C, D+1)``; cached clean features are ``(V, N, D)`` (``V`` views of ``N``
images, view 0 unaugmented); per-weight Fisher values and weight changes are ``(C, D+1)``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NgfkitError
from ..curvature.fisher import diagonal_fisher, eigenbasis_scales, kfac_factors, symmetric_eigh, with_bias_column
from ..metrics import evaluate, evaluate_layer, predict
from ..models import classifier_layer
from ..defences.classifier_only import cache_features, head_predictions, layer_matrix, set_layer_matrix
from ..defences.natural_gradient import head_statistics


def check_etas(etas: Sequence[float]) -> list[float]:
    """``etas`` as floats, sorted; an empty list, a negative, NaN or infinite value is an error."""
    try:
        values = [float(e) for e in etas]
    except (TypeError, ValueError):
        raise NgfkitError(f"regulariser strengths must be numbers, got {etas!r}") from None
    if not values:
        raise NgfkitError("give at least one regulariser strength η (e.g. etas=[0, 1, 10, 100])")
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise NgfkitError(f"regulariser strength η must be a finite number >= 0 (0 switches it off), "
                              f"got {value}")
    return sorted(values)


def _head_gradients(features: Tensor, labels: Tensor, weight: Tensor, fisher: str, seed: int) -> tuple[Tensor, Tensor]:
    """Per-image inputs ``a`` ``(N, D+1)`` and output gradients ``g`` ``(N, C)`` of the head ``weight``
    ``(C, D+1)`` on ``features`` ``(N, D)``, at the true labels (``"empirical"``) or sampled ones."""
    return head_statistics(with_bias_column(features), weight, labels.to(features.device), fisher,
                           torch.Generator().manual_seed(seed))


@dataclass
class ClassifierFisher:
    """The Fisher of the classifier ``[W, b]`` on clean data, two ways.

    ``diagonal`` ``(C, D+1)``: per-weight ``F_jj`` (mean squared per-image gradient), what a
    diagonal penalty uses. ``scales`` ``(C, D+1)``: the same Fisher's diagonal in its K-FAC
    eigenbasis ``q_g`` ``(C, C)``, ``q_a`` ``(D+1, D+1)`` (EKFAC scales): the coordinates in which
    NGF's optimiser, and so its regulariser, work. Neither is normalised.
    """

    diagonal: Tensor
    scales: Tensor
    q_g: Tensor
    q_a: Tensor

    def rotate(self, matrix: Tensor) -> Tensor:
        """A ``(C, D+1)`` weight change in eigen-coordinates: ``q_gᵀ M q_a``."""
        return self.q_g.T @ matrix.to(self.q_g.dtype) @ self.q_a


def classifier_fisher(model: nn.Module, clean_data, *, device: torch.device | str = "cpu", fisher: str = "empirical",
                      seed: int = 0) -> ClassifierFisher:
    """The Fisher of the model's classifier on the clean images (eval mode, no augmentation), per
    weight and in its eigenbasis (see :class:`ClassifierFisher`); CPU tensors."""
    model = copy.deepcopy(model).to(device).eval()
    head = classifier_layer(model)
    data = cache_features(model, head, clean_data, views=0, seed=seed, device=device)
    a, g = _head_gradients(data.features[0], data.labels, layer_matrix(head), fisher, seed)
    a_factor, g_factor = kfac_factors(a, g)
    q_a, q_g = symmetric_eigh(a_factor)[1], symmetric_eigh(g_factor)[1]
    return ClassifierFisher(diagonal_fisher(a, g).cpu(), eigenbasis_scales(a, g, q_a, q_g).cpu(), q_g.cpu(), q_a.cpu())


def fisher_distance(fisher: Tensor, shift: Tensor) -> float:
    """``Σ_j F̂_jj Δθ_j²`` with ``F̂`` the diagonal Fisher normalised to mean 1 (``(C, D+1)`` each):
    the diagonal penalty divided by ``η/2``."""
    return float((fisher / fisher.mean().clamp_min(1e-12) * shift.pow(2)).sum())


def regulariser_sweep(model: nn.Module, attack, splits, etas: Sequence[float], *,
                      device: torch.device | str = "cpu", seed: int = 0, lr: float | None = None,
                      test_predictions: dict | None = None, progress: bool = False,
                      **ngf_options: Any) -> list[dict]:
    """NGF once per regulariser strength η in ``etas``, at one fixed learning rate.

    ``lr=None`` chooses the learning rate once, with NGF's clean-data rule (cross-fitted clean
    accuracy on ``lr_grid``) at the default η, and keeps it for every η, so the sweep changes
    nothing but η; no test data is used to choose anything. ``ngf_options`` are further
    :class:`~ngfkit.defences.ngf.NGFConfig` options (``steps``, ``damping``, ``augment``, ...).
    ``test_predictions`` (from :func:`ngfkit.metrics.predict` with ``keep_inputs_of`` the
    classifier, e.g. on a subset of the test set) saves the pass over ``splits.test``.

    Returns one row per η, weakest first: ``eta``, ``lr``, ``lr_chosen`` (True when chosen from
    clean data), ``acc``, ``asr``, ``ra`` (in %; ASR and RA are NaN without an attack),
    ``clean_set_acc`` (accuracy on the defender's clean images, the one metric a defender sees),
    ``seconds`` (fine-tuning time), ``shift`` (``‖Δθ‖ / ‖θ⁰‖`` of the classifier),
    ``fisher_distance`` (:func:`fisher_distance`) and ``weight`` (the purified ``[W, b]``, CPU).

    On NGF's fast path (frozen body, biased classifier) the clean features are cached once for
    all η; otherwise each η is a full :func:`~ngfkit.defences.purify` run.
    """
    from ..defences import purify
    from ..defences.ngf import NGF

    etas = check_etas(etas)
    if "reg_strength" in ngf_options:
        raise NgfkitError("regulariser_sweep sets reg_strength itself; give the strengths as etas")
    defence = NGF(**{**ngf_options, "seed": seed, "lr": lr})  # unknown or invalid options fail here
    cfg = defence.config
    model = copy.deepcopy(model).to(device).eval()
    head = classifier_layer(model)
    weight = layer_matrix(head)
    rows: list[dict] = []

    if not defence.on_cached_features(model):
        lr_chosen = lr is None
        if lr is None:
            _, history = purify(model, splits.clean, "ngf", device=device, progress=progress,
                                **{**dataclasses.asdict(cfg), "lr": None})
            lr = history["setting"]["lr"]
        clean_fisher = classifier_fisher(model, splits.clean, device=device, fisher=cfg.fisher, seed=seed).diagonal
        for eta in etas:
            purified, history = purify(model, splits.clean, "ngf", device=device, progress=progress,
                                       **{**dataclasses.asdict(cfg), "lr": lr, "reg_strength": eta})
            metrics = evaluate(purified, splits.test, attack, device=device)
            clean_acc = evaluate(purified, splits.clean, device=device)["acc"]
            rows.append(_row(eta, lr, lr_chosen, metrics, clean_acc, history["seconds"], weight,
                             layer_matrix(classifier_layer(purified)), clean_fisher))
        return rows

    data = defence.head_features(model, splits.clean, device=device)
    lr_chosen = lr is None
    if lr is None:
        lr = defence.cross_fit_selection(data, head, progress=progress)["chosen"]
    if test_predictions is None:
        test_predictions = predict(model, splits.test, attack=attack, device=device, keep_inputs_of=head)
    clean_fisher = diagonal_fisher(*_head_gradients(data.features[0], data.labels, weight, cfg.fisher, seed)).cpu()
    for eta in etas:
        start = time.perf_counter()
        [tuned] = defence.with_options(lr=lr, reg_strength=eta).fit_heads(data, head, [lr])
        seconds = time.perf_counter() - start
        set_layer_matrix(head, tuned)
        metrics = evaluate_layer(head, test_predictions)
        set_layer_matrix(head, weight)
        clean_acc = 100.0 * (head_predictions(tuned, data.features[0]) == data.labels.to(tuned.device)).float().mean()
        rows.append(_row(eta, lr, lr_chosen, metrics, float(clean_acc), seconds, weight, tuned, clean_fisher))
    return rows


def _row(eta, lr, lr_chosen, metrics, clean_acc, seconds, before: Tensor, after: Tensor, fisher: Tensor) -> dict:
    before, after = before.detach().cpu(), after.detach().cpu()
    shift = after - before
    return {"eta": eta, "lr": float(lr), "lr_chosen": lr_chosen, "acc": metrics["acc"],
            "asr": metrics.get("asr", float("nan")), "ra": metrics.get("ra", float("nan")),
            "clean_set_acc": clean_acc, "seconds": seconds,
            "shift": float(shift.norm() / before.norm().clamp_min(1e-12)),
            "fisher_distance": fisher_distance(fisher, shift), "weight": after}


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank), for Spearman's correlation."""
    from scipy.stats import rankdata

    return torch.as_tensor(rankdata(x.double().numpy()))


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two equally shaped tensors (flattened)."""
    rx, ry = _ranks(x.flatten().cpu()), _ranks(y.flatten().cpu())
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def movement_by_fisher(fisher: Tensor, shifts: Mapping[str, Tensor], bins: int = 10, floor: float = 1e-6) -> dict:
    """How far the weights moved, grouped by their clean-data Fisher value.

    ``fisher`` ``(C, D+1)`` is normalised to mean 1 (``F̂``, as the regulariser uses it);
    ``shifts`` maps a label (e.g. ``"η = 0"``) to ``θ − θ⁰`` ``(C, D+1)``. Weights with
    ``F̂ < floor`` are ones the clean data practically never exercise (inputs that are zero or
    nearly so on every clean image, e.g. dead ReLUs) and form their own group; the others are cut
    into ``bins`` groups of equal size by Fisher value.

    Returns ``zero_fraction`` (``F = 0`` exactly), ``unseen_fraction`` (``F̂ < floor``),
    ``unseen_shift`` (mean ``|Δθ|`` of those, per label), ``centres`` (median ``F̂`` per bin),
    ``edges`` (``bins + 1``), ``mean_shift`` (per label, mean ``|Δθ|`` per bin) and ``spearman``
    (per label, rank correlation of ``F̂`` and ``|Δθ|`` over the weights with ``F̂ >= floor``).
    """
    flat = fisher.flatten().cpu().double()
    flat = flat / flat.mean().clamp_min(1e-300)
    seen = flat >= floor
    if int(seen.sum()) < bins:
        raise NgfkitError(f"only {int(seen.sum())} weights have a normalised Fisher value >= {floor:g}; "
                          f"need at least {bins}")
    values = flat[seen]
    edges = torch.quantile(values, torch.linspace(0, 1, bins + 1, dtype=torch.float64))
    which = torch.bucketize(values, edges[1:-1], right=True)  # 0 .. bins-1
    out = {"zero_fraction": float((flat == 0).double().mean()), "unseen_fraction": float(1 - seen.double().mean()),
           "floor": floor, "edges": edges.tolist(), "centres": [float(values[which == b].median()) for b in range(bins)],
           "mean_shift": {}, "unseen_shift": {}, "spearman": {}}
    for label, shift in shifts.items():
        moved = shift.flatten().cpu().double().abs()
        if moved.shape != flat.shape:
            raise NgfkitError(f"shift {label!r} has {moved.numel()} entries, the Fisher {flat.numel()}")
        kept = moved[seen]
        out["mean_shift"][label] = [float(kept[which == b].mean()) for b in range(bins)]
        out["unseen_shift"][label] = float(moved[~seen].mean()) if (~seen).any() else float("nan")
        out["spearman"][label] = spearman(values, kept)
    return out
