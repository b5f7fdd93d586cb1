"""The metrics of backdoor defence, defined once.

- **C-ACC** (``acc``): accuracy on the clean test set.
- **ASR** (``asr``): among triggered test images whose true class is not the target class, the
  fraction classified as the target.
- **RA** (``ra``): accuracy on those same triggered images, judged against their true labels.
- **DER** (BackdoorBench's defence effectiveness rating):
  ``(max(0, ASR_before - ASR_after) - max(0, ACC_before - ACC_after) + 1) / 2`` on fractions.

All returned values are percentages, except DER, which lies in ``[0, 1]``.
"""
from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import validation as check
from .batches import iterate_batches
from .errors import NgfkitError
from .train import to_channels_last, use_channels_last


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Percentage of ``predictions`` ``(N,)`` equal to ``labels`` ``(N,)``."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * (predictions == labels).float().mean().item()


def attack_success_rate(triggered_predictions: Tensor, labels: Tensor, target_labels: Tensor) -> float:
    """Percentage of triggered images with ``labels != target_labels`` predicted as their target."""
    attacked = labels != target_labels
    return accuracy(triggered_predictions[attacked], target_labels[attacked])


def robust_accuracy(triggered_predictions: Tensor, labels: Tensor, target_labels: Tensor) -> float:
    """Percentage of those same triggered images still given their true label."""
    attacked = labels != target_labels
    return accuracy(triggered_predictions[attacked], labels[attacked])


def defence_effectiveness_rating(before: dict, after: dict) -> float:
    """DER from two ``{"acc", "asr"}`` dicts in percent; 0.5 means no change, 1 a perfect defence."""
    asr_drop = max(0.0, before["asr"] - after["asr"]) / 100.0
    acc_drop = max(0.0, before["acc"] - after["acc"]) / 100.0
    return (asr_drop - acc_drop + 1.0) / 2.0


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, attack=None, batch_size: int = 512,
            device: torch.device | str = "cpu", keep_inputs_of: nn.Module | None = None) -> dict[str, Tensor]:
    """Predicted classes on ``dataset`` (and on its triggered copy when ``attack`` is given).

    Returns ``{"labels", "clean"}`` and, with an attack, ``"triggered"`` and ``"target"``, each ``(N,)``.
    With ``keep_inputs_of`` (a layer, usually the classifier), also that layer's inputs
    ``"clean_inputs"`` (and ``"triggered_inputs"``), ``(N, D)``, so that a model differing only in
    that layer can be measured again with :func:`evaluate_layer` without re-running the body.
    """
    was_training = model.training
    use_channels_last(model).eval()
    out: dict[str, list[Tensor]] = {k: [] for k in ("labels", "clean", "triggered", "target")}
    captured: list[Tensor] = []
    handle = None
    if keep_inputs_of is not None:
        handle = keep_inputs_of.register_forward_hook(lambda m, args, o: captured.append(args[0].detach().flatten(1)))
    try:
        for x, y in iterate_batches(dataset, batch_size, device=device):
            logits = _first_logits(model, x) if not out["labels"] else model(to_channels_last(x))
            check.labels(y, "the dataset's labels", logits.shape[1])
            out["labels"].append(y.cpu())
            out["clean"].append(logits.argmax(1).cpu())
            if attack is not None:
                out["triggered"].append(model(to_channels_last(attack.apply(x))).argmax(1).cpu())
                # images the attack does not target get their own label, so they drop out of ASR/RA
                out["target"].append(torch.where(attack.attacked_mask(y), attack.target_labels(y), y).cpu())
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    if captured:
        step = 2 if attack is not None else 1
        out["clean_inputs"] = captured[0::step]
        if attack is not None:
            out["triggered_inputs"] = captured[1::step]
    return {k: torch.cat(v) for k, v in out.items() if v}


def _first_logits(model: nn.Module, x: Tensor) -> Tensor:
    """Logits ``(B, classes)`` of the first batch, where a dataset that does not fit the model shows:
    a wrong image shape is one error naming the shape rather than a convolution's traceback."""
    check.image_batch(x, "the dataset's images")
    try:
        logits = model(to_channels_last(x))
    except RuntimeError as error:
        raise NgfkitError(f"the model cannot run on the dataset's images, shaped {tuple(x.shape[1:])} "
                          f"({str(error).splitlines()[0][:120]}); give images shaped as the model was trained "
                          f"on, (C, H, W) in [0, 1]") from None
    if logits.dim() != 2:
        raise NgfkitError(f"the model should return logits shaped (N, classes), got {tuple(logits.shape)}")
    return logits


def _metrics(p: dict[str, Tensor], with_attack: bool) -> dict[str, float]:
    result = {"acc": accuracy(p["clean"], p["labels"])}
    if with_attack:
        result["asr"] = attack_success_rate(p["triggered"], p["labels"], p["target"])
        result["ra"] = robust_accuracy(p["triggered"], p["labels"], p["target"])
    return result


@torch.no_grad()
def evaluate_layer(layer: nn.Module, predictions: dict[str, Tensor]) -> dict[str, float]:
    """Metrics of a model whose last layer is ``layer``, from the inputs of that layer that
    :func:`predict` kept (``keep_inputs_of``) for the same body."""
    device = next(layer.parameters()).device
    p = dict(predictions)
    p["clean"] = layer(p["clean_inputs"].to(device)).argmax(1).cpu()
    if "triggered_inputs" in p:
        p["triggered"] = layer(p["triggered_inputs"].to(device)).argmax(1).cpu()
    return _metrics(p, "triggered_inputs" in p)


def evaluate(model: nn.Module, dataset: Dataset, attack=None, *, batch_size: int = 512,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """``{"acc"}``, plus ``"asr"`` and ``"ra"`` when an attack is given, in percent."""
    return _metrics(predict(model, dataset, attack=attack, batch_size=batch_size, device=device), attack is not None)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of ``values`` (0 for one value, NaN for none): the
    ``mean ± std`` of every summary over seeds and attacks."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
