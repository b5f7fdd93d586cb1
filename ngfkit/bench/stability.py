"""``ngfkit bench stability``: is a defence's result a function of (model, clean data), or of luck?

One backdoored model, one defence, run again and again under everything that should not matter:
the defence's seed (augmented views, fold split, batch order) and the number of CPU threads
(``torch.set_num_threads``; a different reduction order changes float rounding). Each run is a
cell, written to the JSON report as it finishes, so a killed run resumes. The summary per
defence says how often the chosen setting agrees and how far the attack success rate left
behind spreads, against the floors the project holds itself to.
"""
from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..defences import DEFENCES, FeatureCache
from ..defences.classifier_only import cache_features
from ..errors import NgfkitError
from ..metrics import evaluate_layer, predict
from ..models import classifier_layer
from ..pipeline import Experiment, load_or_train, load_splits, run_defence
from ..train import TrainConfig
from ..utils import versions, write_json
from .attacks import load_previous_report

#: the floors of a stable, effective defence on the demo model (issue "NGF that holds up")
FLOORS = {"same_setting_share": 0.9, "asr_spread": 5.0, "asr_max": 5.0, "acc_cost_max": 2.0}


def _settings_of(report: dict) -> dict:
    return {k: report.get(k) for k in ("dataset", "arch", "attack", "model_seed", "train", "clean_fraction",
                                       "defence_options")}


def bench_stability(dataset: str = "fashion-mnist", attack: str = "badnets", defences: Sequence[str] = ("ngf",), *,
                    seeds: Sequence[int] = (0, 1, 2, 3, 4), threads: Sequence[int] = (1, 2), model_seed: int = 0,
                    arch: str | None = None, train: TrainConfig | None = None, clean_fraction: float = 0.01,
                    device: torch.device | str = "cpu", progress: bool = True, json_path: str | Path | None = None,
                    data_root=None, download: bool = False,
                    defence_options: dict[str, dict] | None = None) -> dict[str, Any]:
    """Run each defence on the model of ``(dataset, attack, model_seed)`` for every defence seed x thread
    count not yet in ``json_path``; return the report ``{"cells": [{"defence", "seed", "threads",
    "setting", "acc", "asr", "ra", "acc_cost", "seconds"}], "before", "summary", ...}`` (percentages)."""
    defence_options = defence_options or {}
    for name in defences:
        DEFENCES.get(name)(**defence_options.get(name, {}))  # bad names and options fail before any work
    if not seeds or not threads:
        raise NgfkitError("give at least one defence seed and one thread count")
    if any(t < 1 for t in threads):
        raise NgfkitError(f"thread counts must be at least 1, got {list(threads)}")
    train = train or TrainConfig()
    exp = Experiment(dataset=dataset, arch=arch, attack=attack, clean_fraction=clean_fraction, seed=model_seed,
                     train=train)
    report: dict[str, Any] = {"dataset": dataset, "arch": exp.arch, "attack": attack, "model_seed": model_seed,
                              "train": train.to_dict(), "clean_fraction": clean_fraction,
                              "defence_options": defence_options}
    previous = load_previous_report(json_path, _settings_of(report))
    report.update({"floors": FLOORS, "device": str(device), "versions": versions(), "cells": [], "before": None})
    if previous:
        report["cells"] = previous.get("cells", [])
    done = {(c["defence"], c["seed"], c["threads"]) for c in report["cells"]}
    start = time.perf_counter()
    splits = load_splits(exp, data_root, download)
    trained = load_or_train(exp, splits, device=device, progress=progress)
    model, trigger = trained.model.to(device).eval(), trained.attack
    kept = predict(model, splits.test, attack=trigger, device=device, keep_inputs_of=classifier_layer(model))
    before = evaluate_layer(classifier_layer(model), kept)
    report["before"] = before
    todo = [(d, s, t) for d in defences for s in seeds for t in threads if (d, s, t) not in done]
    threads_before = torch.get_num_threads()
    # measured in this call, for the thread counts it runs, under the load its runs see; each cell keeps
    # the timing it is compared with (a later call's timing under another load must not rescale it)
    forward = forward_seconds(model, splits.clean, sorted({t for _, _, t in todo}), device=device)
    report["forward_seconds"] = {**(previous or {}).get("forward_seconds", {}), **forward}
    bar = tqdm(total=len(todo), desc="stability", disable=not progress, leave=False)
    try:
        for defence, seed, count in todo:
            torch.set_num_threads(count)
            result = run_defence(model, trigger, splits, defence, device=device, progress=False, before=before,
                                 test_predictions=kept, features=FeatureCache(),
                                 **{"seed": seed, **defence_options.get(defence, {})})
            history, after = result["history"], result["after"]
            seconds = history["seconds"]  # the defence's own time, not the scoring after it
            report["cells"].append({"defence": defence, "seed": seed, "threads": count, "setting": history["setting"],
                                    **after, "acc_cost": before["acc"] - after["acc"], "seconds": seconds,
                                    "forward_seconds": forward[str(count)],
                                    "budget_met": history.get("selection", {}).get("budget_met")})
            report["summary"] = summarise(report)
            report["wall_seconds"] = time.perf_counter() - start + (previous or {}).get("wall_seconds", 0.0)
            if json_path:
                write_json(json_path, report)
            bar.update(1)
    finally:
        torch.set_num_threads(threads_before)
        bar.close()
    report["summary"] = summarise(report)
    report["wall_seconds"] = time.perf_counter() - start + (previous or {}).get("wall_seconds", 0.0)
    if json_path:
        write_json(json_path, report)
    return report


#: the clean views NGF caches (the image and 8 cropped / flipped copies), the unit of the speed ratio
REFERENCE_VIEWS = 8


def forward_seconds(model, clean, threads: Sequence[int], *, device, views: int = REFERENCE_VIEWS,
                    repeats: int = 3) -> dict[str, float]:
    """Per thread count, the best of ``repeats`` timings of one forward pass of ``model`` over the clean
    images and their ``views`` augmented copies (what NGF's feature cache costs): the unit in
    which a defence's time is reported (``ratio_to_forward`` in the summary)."""
    timings = {}
    threads_before = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(count)
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                cache_features(model, classifier_layer(model), clean, views=views, device=device)
                best = min(best, time.perf_counter() - t0)
            timings[str(count)] = best
    finally:
        torch.set_num_threads(threads_before)
    return timings


def summarise(report: dict) -> list[dict]:
    """Per defence: runs, the most common setting and its share, ASR and accuracy cost (mean, min,
    max, spread), and which floors hold."""
    rows = []
    for defence in dict.fromkeys(c["defence"] for c in report["cells"]):
        cells = [c for c in report["cells"] if c["defence"] == defence]
        settings = Counter(repr(sorted(c["setting"].items())) for c in cells)
        modal, count = settings.most_common(1)[0]
        asr = [c["asr"] for c in cells]
        cost = [c["acc_cost"] for c in cells]
        row = {"defence": defence, "runs": len(cells), "modal_setting": next(
                   c["setting"] for c in cells if repr(sorted(c["setting"].items())) == modal),
               "same_setting_share": count / len(cells),
               # a defence that chooses nothing (a fixed setting) agrees with itself trivially
               "chosen_from_data": any(c.get("budget_met") is not None for c in cells),
               "asr_mean": statistics.fmean(asr), "asr_min": min(asr), "asr_max": max(asr),
               "asr_spread": max(asr) - min(asr), "acc_cost_mean": statistics.fmean(cost),
               "acc_cost_max": max(cost), "seconds_mean": statistics.fmean(c["seconds"] for c in cells)}
        row["asr_std"] = statistics.stdev(asr) if len(asr) > 1 else 0.0
        forward = report.get("forward_seconds") or {}
        references = [c.get("forward_seconds") or forward.get(str(c["threads"])) for c in cells]
        ratios = [c["seconds"] / ref for c, ref in zip(cells, references) if ref]
        row["ratio_to_forward"] = statistics.fmean(ratios) if ratios else None
        row["floors"] = {"reproducible": row["same_setting_share"] >= FLOORS["same_setting_share"]
                         and row["asr_spread"] <= FLOORS["asr_spread"],
                         "effective": row["asr_max"] <= FLOORS["asr_max"] and row["acc_cost_max"] <= FLOORS["acc_cost_max"]}
        rows.append(row)
    return rows


def stability_table(report: dict) -> str:
    """A Markdown table of :func:`summarise` (percentages; the setting as ``key=value``)."""
    from ..viz.tables import markdown_table

    def fmt(value: float) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"

    rows = [{"defence": f"`{r['defence']}`", "runs": r["runs"],
             "most common setting (share)": ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in r["modal_setting"].items())
             + (f" ({r['same_setting_share']:.0%})" if r.get("chosen_from_data", True) else " (fixed)"),
             "ASR % mean ± std": f"{fmt(r['asr_mean'])} ± {fmt(r['asr_std'])}",
             "ASR % min–max": f"{fmt(r['asr_min'])}–{fmt(r['asr_max'])}",
             "C-ACC cost max": fmt(r["acc_cost_max"]),
             "seconds per run": fmt(r["seconds_mean"]),
             "× one forward pass": fmt(r.get("ratio_to_forward")),
             "reproducible": "yes" if r["floors"]["reproducible"] else "**no**",
             "effective": "yes" if r["floors"]["effective"] else "**no**"} for r in report["summary"]]
    return markdown_table(rows)
