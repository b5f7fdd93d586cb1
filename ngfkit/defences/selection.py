"""One clean-data rule that sets every defence's strength, so defences compare at equal cost.

Each value of a defence's strength knob is given an estimated cost in clean accuracy, measured
on clean images the run at that value did not train on; the rule keeps **the strongest value
whose estimated drop is at most** ``acc_budget`` **points**, and if no value stays within the
budget, the one that costs least (cost need not grow with strength: fine-tuning every layer on a
few hundred images first loses accuracy, then partly recovers it, so "the weakest" would not be
the cheapest). No triggered image is ever looked at.

Two estimates feed the one rule:

- ``"cross-fit"`` (cheap defences, e.g. NGF on cached features): the clean set is cut into
  folds, each image is predicted by a run that did not see it, and every image counts;
- ``"holdout"`` (any defence, :func:`select_and_purify`): ``1 - holdout`` of the clean images run
  the defence at each value, the rest measure it.

Every selection is recorded in the same layout (:func:`selection_record`), which the benchmark,
the CLI and the book read without knowing which defence made it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..batches import subset_of
from ..errors import NgfkitError
from ..metrics import predict
from ..utils import resolve_device
from .base import DEFENCES, named_classifier
from .classifier_only import FeatureCache


def accuracy_drop(labels: Tensor, before: Tensor, after: Tensor) -> dict[str, float]:
    """Clean accuracy before and after, and its drop with a standard error, in percentage points.

    ``labels``, ``before`` and ``after`` are ``(N,)`` class indices of the same images; the drop's
    standard error is that of the mean of the per-image differences (paired, so images that both
    models get right or wrong add no noise).
    """
    labels, before, after = labels.cpu(), before.cpu(), after.cpu()
    right_before = (before == labels).double()
    right_after = (after == labels).double()
    difference = right_before - right_after
    n = len(labels)
    stderr = float(difference.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return {"val_acc": 100.0 * float(right_after.mean()), "val_acc_drop": 100.0 * float(difference.mean()),
            "stderr": 100.0 * stderr}


def strongest_within_budget(tried: Sequence[dict], budget: float) -> tuple[int, bool]:
    """The rule: index into ``tried`` (weakest first, each with ``val_acc_drop``) of the strongest value
    whose drop is at most ``budget`` points, else of the one that drops least; and whether the budget was met."""
    within = [i for i, t in enumerate(tried) if t["val_acc_drop"] <= budget]
    if within:
        return within[-1], True
    return min(range(len(tried)), key=lambda i: tried[i]["val_acc_drop"]), False


def rule_text(knob: str, budget: float) -> str:
    return (f"strongest {knob} whose clean-accuracy drop (on clean images its run did not train on) is at most "
            f"{budget:g} points, else the {knob} that drops least")


def selection_record(knob: str, tried: list[dict], budget: float, estimate: str, val_acc_before: float,
                     **details: Any) -> dict:
    """Apply the rule to ``tried`` and record it: ``{"knob", "rule", "budget", "estimate",
    "val_acc_before", "tried": [{"value", "val_acc", "val_acc_drop", "stderr", ...}], "chosen",
    "budget_met", **details}``."""
    index, met = strongest_within_budget(tried, budget)
    return {"knob": knob, "rule": rule_text(knob, budget), "budget": budget, "estimate": estimate,
            "val_acc_before": val_acc_before, "tried": tried, "chosen": tried[index]["value"],
            "budget_met": met, **details}


def holdout_split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(fit, held_out)`` index split of ``n`` clean images."""
    if not 0 < holdout < 1:
        raise NgfkitError(f"holdout must be between 0 and 1 (a share of the clean set), got {holdout}")
    held = max(1, round(n * holdout))
    if n - held < 2:
        raise NgfkitError(f"the clean set has {n} images, too few to hold {holdout:.0%} out; give more clean data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:], order[:held]


def select_and_purify(model: nn.Module, clean_data: Dataset, method: str, *, acc_budget: float = 3.0,
                      holdout: float = 0.2, values: tuple | None = None, seed: int = 0,
                      device: str | torch.device = "auto", progress: bool = True,
                      features: FeatureCache | None = None, layer: str | None = None,
                      **options: Any) -> tuple[nn.Module, dict]:
    """Run ``method`` along its strength knob on part of ``clean_data`` and keep the strongest
    setting whose held-out clean accuracy drops at most ``acc_budget`` points (the one rule).

    Returns ``(purified_model, history)`` with the same keys as :func:`~ngfkit.defences.purify`'s
    history: ``method``, ``config``, ``changed``, ``setting``, ``selection`` (``estimate="holdout"``)
    and ``seconds`` for the whole procedure.
    """
    defence_class = DEFENCES.get(method)
    if "seed" in {f.name for f in dataclasses.fields(defence_class.Config)}:
        options = {"seed": seed, **options}
    defence = defence_class(**options)
    model = named_classifier(model, clean_data, layer=layer, required=defence.needs_classifier)
    knob = defence.strength
    if not knob:
        raise NgfkitError(f"defence {method!r} has no strength knob to select")
    values = tuple(values or defence.strength_grid)
    if not values:
        raise NgfkitError(f"defence {method!r} has no values to try for {knob}")
    device = resolve_device(device)
    start = time.perf_counter()
    fit_idx, held_idx = holdout_split(len(clean_data), holdout, seed)
    fit, held = subset_of(clean_data, fit_idx), subset_of(clean_data, held_idx)
    features = features if features is not None else FeatureCache()  # every value trains on the same fit split
    reference = predict(model, held, device=device)
    tried, models = [], {}
    bar = tqdm(total=len(values), desc=f"{method}: {knob} on held-out clean data", disable=not progress,
               leave=False)
    for value, tuned in defence.path(model, fit, values, device=device, progress=progress, features=features):
        after = predict(tuned, held, device=device)["clean"]
        tried.append({"value": value, **accuracy_drop(reference["labels"], reference["clean"], after)})
        models[value] = tuned
        bar.update(1)
    bar.close()
    val_acc_before = 100.0 * float((reference["clean"].cpu() == reference["labels"].cpu()).double().mean())
    selection = selection_record(knob, tried, acc_budget, "holdout", val_acc_before,
                                 fit_images=len(fit_idx), held_out_images=len(held_idx))
    chosen = selection["chosen"]
    history = {
        "method": method, "config": dataclasses.asdict(defence.with_options(**{knob: chosen}).config),
        "changed": "head" if defence.head_only(model) else "model", "setting": {knob: chosen},
        "selection": selection, "seconds": time.perf_counter() - start,
    }
    return models[chosen].eval(), history
