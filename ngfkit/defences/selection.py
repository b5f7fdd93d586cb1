"""One clean-data rule that sets every defence's strength, so defences compare at equal cost.

The defender splits its clean images: ``1 - holdout`` of them run the defence at each value of
its strength knob, the rest measure what each value costs in clean accuracy. The chosen value is
the strongest whose held-out accuracy falls by at most ``acc_budget`` points, and the defended
model is the one that value produced. If no value stays within the budget, the one that costs
least is kept: cost need not grow with strength (fine-tuning every layer on a few hundred images
first loses accuracy, then partly recovers it), so "the weakest" would not be the cheapest. No
triggered image is ever looked at.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import NgfkitError
from ..metrics import evaluate
from .base import DEFENCES


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
                      device: str | torch.device = "cpu", progress: bool = True,
                      **options: Any) -> tuple[nn.Module, dict]:
    """Run ``method`` along its strength knob on part of ``clean_data`` and keep the strongest
    setting whose held-out clean accuracy drops at most ``acc_budget`` points.

    Returns ``(purified_model, history)``; the history holds the knob, every value tried with
    its held-out accuracy, the chosen value and the wall time of the whole procedure.
    """
    defence_class = DEFENCES.get(method)
    if "seed" in {f.name for f in dataclasses.fields(defence_class.Config)}:
        options = {"seed": seed, **options}
    defence = defence_class(**options)
    knob = defence.strength
    if not knob:
        raise NgfkitError(f"defence {method!r} has no strength knob to select")
    values = tuple(values or defence.strength_grid)
    if not values:
        raise NgfkitError(f"defence {method!r} has no values to try for {knob}")
    device = torch.device(device)
    start = time.perf_counter()
    fit_idx, held_idx = holdout_split(len(clean_data), holdout, seed)
    fit, held = clean_data.subset(fit_idx), clean_data.subset(held_idx)
    before = evaluate(model, held, device=device)["acc"]
    tried, models = [], {}
    bar = tqdm(total=len(values), desc=f"{method}: {knob} on held-out clean data", disable=not progress,
               leave=False)
    for value, tuned in defence.path(model, fit, values, device=device, progress=progress):
        acc = evaluate(tuned, held, device=device)["acc"]
        tried.append({"value": value, "val_acc": acc, "val_acc_drop": before - acc})
        models[value] = tuned
        bar.update(1)
    bar.close()
    within = [t for t in tried if t["val_acc_drop"] <= acc_budget]
    chosen = (within[-1] if within else min(tried, key=lambda t: t["val_acc_drop"]))["value"]
    history = {
        "method": method, "knob": knob, "chosen": chosen, "budget_met": bool(within),
        "rule": f"strongest {knob} whose held-out clean accuracy drops <= {acc_budget} points "
                f"(else the one that drops least)",
        "val_acc_before": before, "tried": tried, "fit_images": len(fit_idx), "held_out_images": len(held_idx),
        "config": dataclasses.asdict(defence.with_options(**{knob: chosen}).config),
        "seconds": time.perf_counter() - start,
    }
    return models[chosen].eval(), history
