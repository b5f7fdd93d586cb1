"""``ngfkit bench defences``: every defence on every backdoored model, at an equal clean-data cost.

Each cell (attack, defence, seed, setting) is independent: the backdoored model comes from the
model cache, the defence runs, the test set scores it, and the JSON report is rewritten
atomically, so a killed run resumes from its finished cells. Two settings per defence:

- ``selected``: the strength chosen by :func:`~ngfkit.defences.selection.select_and_purify`
  (strongest value whose held-out clean accuracy drops at most ``acc_budget`` points);
- ``authors``: the defence's own defaults (for NGF: its cross-fitted learning-rate rule).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..attacks import ATTACKS
from .attacks import PAPER_ATTACKS, load_previous_report, read_reports
from ..defences import DEFENCES, purify
from ..defences.selection import select_and_purify
from ..errors import NgfkitError
from ..metrics import defence_effectiveness_rating, evaluate, evaluate_layer, mean_std, predict
from ..models import classifier_layer
from ..pipeline import PURIFIED_NOT_FINITE, Experiment, clean_reference, load_or_train, load_splits
from ..studies.reactivation import DEFAULTS as REACTIVATION_DEFAULTS, reactivate
from ..studies.trajectory import fixed_subset
from .. import validation as check
from ..train import TrainConfig
from ..utils import PeakMemory, versions, write_json

#: NGF, the paper's baselines, then the NGF ablations
PAPER_DEFENCES = ("ngf", "ft", "ft-last", "ft-sam", "anp", "nad", "fp", "i-bau",
                  "ngf-sgd-body", "ngf-noreg", "ngf-sampled", "ngf-kfac")
#: the NGF family beyond the paper's text: the authors' code (two scripts) and ngfkit's feature-shifting variants
NGF_VARIANTS = ("ngf-reference", "ngf-reference-reinit", "ngf-shift", "ngf-shift-auto", "ngf-shift-all")
#: the NGF authors' successors: FIP (CCS 2024, and its singular-value variant) and NFT (ECCV 2024)
SUCCESSORS = ("fip", "fip-fast", "nft")
#: the defences of today's benchmarks: FST's tuning family (NeurIPS 2023) and SAU (NeurIPS 2023)
CURRENT_DEFENCES = ("lp", "ft-init", "fe-tuning", "fst", "sau")
#: what ``--defences all`` runs, in the order of the tables
ALL_DEFENCES = PAPER_DEFENCES + NGF_VARIANTS + SUCCESSORS + CURRENT_DEFENCES
SETTINGS = ("selected", "authors")


#: what every cell and before-row of a report holds (checked when a report is resumed or merged)
CELL_FIELDS = ("attack", "defense", "seed", "setting", "acc", "asr", "ra", "der", "acc_drop", "seconds")
BEFORE_FIELDS = ("attack", "seed", "acc", "asr", "ra")
ROWS = {"cells": CELL_FIELDS, "before": BEFORE_FIELDS}


def _settings_of(report: dict) -> dict:
    """Everything that decides a cell's numbers besides its (attack, defence, seed, setting): a
    resume or a merge with other values would mix two benchmarks under one set of options."""
    settings = {k: report.get(k) for k in ("dataset", "arch", "acc_budget", "holdout", "clean_fraction",
                                           "poison_rate", "train", "reactivation")}
    settings["defence_options"] = json.loads(json.dumps(report.get("defence_options") or {}))
    return settings


def bench_defences(dataset: str = "fashion-mnist", arch: str | None = None, attacks: str | Sequence[str] = "all",
                   defenses: str | Sequence[str] = "all", *, seeds: int | Sequence[int] = 1, acc_budget: float = 3.0,
                   holdout: float = 0.2, settings: Sequence[str] = SETTINGS, train: TrainConfig | None = None,
                   clean_fraction: float = 0.01, poison_rate: float | None = None,
                   device: torch.device | str = "cpu", progress: bool = True,
                   json_path: str | Path | None = None, data_root=None, download: bool = False,
                   defence_options: dict[str, dict] | None = None,
                   reactivation: bool | dict = False) -> dict[str, Any]:
    """Run every (attack, defence, seed, setting) cell not yet in ``json_path``; return the report.

    The report is ``{"dataset", "arch", "cells": [{"attack", "defense", "seed", "setting", "acc",
    "asr", "ra", "der", "seconds", "peak_mb", ...}], "before": [{"attack", "seed", "acc", "asr",
    "ra"}], "summary": [...]}`` with percentages. ``seconds`` is the defender's whole cost:
    for ``selected`` it includes trying every strength value. ``clean_fraction`` is the defender's
    share of the training set (0.01 as in NGF, 0.05 as BackdoorBench's default) and ``poison_rate``
    overrides every attack's own share of poisoned training images (None keeps each one's; FST's
    low-rate setting is 0.01); both are recorded, and a resume or merge with other values is refused.
    """
    attack_names = ATTACKS.parse_names(attacks, default=PAPER_ATTACKS, option="--attacks")
    defence_names = DEFENCES.parse_names(defenses, default=ALL_DEFENCES, option="--defences")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise NgfkitError("--seeds must be at least 1")
    seed_list = [check.whole(s, "every seed (--seeds, seeds=)") for s in seed_list]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise NgfkitError(f"unknown setting {unknown[0]!r}; choose from {', '.join(SETTINGS)}")
    acc_budget = check.number(acc_budget, "acc_budget (--acc-budget)", low=0.0,
                              fix="it is a number of clean-accuracy points, e.g. 3")
    holdout = check.fraction(holdout, "holdout (--holdout)", "it is the share of the clean set held out, e.g. 0.2")
    defence_options = defence_options or {}
    for name, options in defence_options.items():
        _split_grid(name, options)  # bad options fail now, not after an hour of cells
    train = train or TrainConfig()
    retune = None
    if reactivation:
        retune = {**REACTIVATION_DEFAULTS, **(reactivation if isinstance(reactivation, dict) else {})}
        unknown = sorted(set(retune) - set(REACTIVATION_DEFAULTS))
        if unknown:
            raise NgfkitError(f"reactivation has no option {unknown[0]!r}; its options are "
                              f"{', '.join(REACTIVATION_DEFAULTS)}")
        retune["test_images"] = REACTIVATION_TEST
    start = time.perf_counter()
    report: dict[str, Any] = {"dataset": dataset, "arch": None, "acc_budget": acc_budget, "holdout": holdout,
                              "clean_fraction": clean_fraction, "poison_rate": poison_rate, "train": train.to_dict(),
                              "defence_options": defence_options, "reactivation": retune}
    first = Experiment(dataset=dataset, arch=arch, attack=attack_names[0], clean_fraction=clean_fraction,
                       poison_rate=poison_rate, seed=seed_list[0], train=train)
    report["arch"] = first.arch
    previous = load_previous_report(json_path, _settings_of(report), "defences", ROWS)
    report.update({"cells": [], "before": [], "seeds": seed_list, "device": str(device), "versions": versions()})
    if previous:
        report["cells"], report["before"] = previous.get("cells", []), previous.get("before", [])
    if retune:
        report["reactivation_reference"] = (previous or {}).get("reactivation_reference", [])
    done = {(c["attack"], c["defense"], c["seed"], c["setting"]) for c in report["cells"]}

    def save() -> None:
        report["summary"] = summarise(report)
        report["wall_seconds"] = time.perf_counter() - start + (previous or {}).get("wall_seconds", 0.0)
        if json_path:
            write_json(json_path, report)

    for seed in seed_list:
        splits = None
        for attack_name in attack_names:
            todo = [(d, s) for d in defence_names for s in settings if (attack_name, d, seed, s) not in done]
            if not todo:
                continue
            exp = Experiment(dataset=dataset, arch=arch, attack=attack_name, clean_fraction=clean_fraction,
                             poison_rate=poison_rate, seed=seed, train=train)
            splits = splits or load_splits(exp, data_root, download)
            trained = load_or_train(exp, splits, device=device, progress=progress)
            model, attack = trained.model.to(device).eval(), trained.attack
            test_inputs = predict(model, splits.test, attack=attack, device=device,
                                  keep_inputs_of=classifier_layer(model))
            before = evaluate_layer(classifier_layer(model), test_inputs)
            if retune:
                retune_test = fixed_subset(splits.test, retune["test_images"], seed)
                if not any(r["seed"] == seed for r in report["reactivation_reference"]):
                    benign = load_or_train(clean_reference(exp), splits, device=device, progress=progress).model
                    report["reactivation_reference"].append(
                        {"seed": seed, **_retuned(benign, attack, splits, retune_test, retune, seed, device)})
            if not any(b["attack"] == attack_name and b["seed"] == seed for b in report["before"]):
                row = {"attack": attack_name, "seed": seed, **before}
                if retune:
                    row["reactivation"] = _retuned(model, attack, splits, retune_test, retune, seed, device)
                report["before"].append(row)
            for defence_name, setting in todo:
                options, grid = _split_grid(defence_name, defence_options.get(defence_name, {}))
                with PeakMemory(device) as memory:
                    tic = time.perf_counter()
                    if setting == "selected":
                        purified, history = select_and_purify(
                            model, splits.clean, defence_name, acc_budget=acc_budget, holdout=holdout, seed=seed,
                            values=grid, device=device, progress=False, **options)
                    else:
                        purified, history = purify(model, splits.clean, defence_name, device=device, progress=False,
                                                   **{"seed": seed, **options})
                    seconds = time.perf_counter() - tic
                check.finite_model(purified, f"{attack_name} seed {seed}: the model purified by {defence_name!r}",
                                   PURIFIED_NOT_FINITE)
                if history["changed"] == "head":
                    after = evaluate_layer(classifier_layer(purified), test_inputs)
                else:
                    after = evaluate(purified, splits.test, attack, device=device)
                cell = {"attack": attack_name, "defense": defence_name, "seed": seed, "setting": setting,
                        **after, "der": 100.0 * defence_effectiveness_rating(before, after),
                        "acc_drop": before["acc"] - after["acc"], "seconds": seconds, "peak_mb": memory.peak_mb,
                        "choice": _choice(history)}
                if retune:
                    cell["reactivation"] = _retuned(purified, attack, splits, retune_test, retune, seed, device)
                report["cells"].append(cell)
                save()
                if progress:
                    tqdm.write(f"{attack_name:12s} {defence_name:13s} {setting:8s} seed {seed}: acc {after['acc']:6.2f} "
                               f"(drop {cell['acc_drop']:+5.2f})  asr {after['asr']:6.2f}  ra {after['ra']:6.2f}  "
                               f"{seconds:6.1f} s  {memory.peak_mb:6.0f} MiB")
    save()
    return report


#: test images the reactivation is measured on (a fixed random subset per seed: two evaluations per model)
REACTIVATION_TEST = 2000


def _retuned(model, attack, splits, test, options: dict, seed: int, device) -> dict:
    """The reactivation row of one model: its ASR before and after the re-tuning, the climb, the
    clean accuracy after it."""
    kwargs = {k: v for k, v in options.items() if k != "test_images"}
    result = reactivate(model, attack, splits.clean, test, seed=seed, device=device, **kwargs)
    return {"asr_before": result["before"]["asr"], "asr_after": result["after"]["asr"],
            "climb": result["asr_climb"], "acc_after": result["after"]["acc"], "seconds": result["seconds"]}


def _split_grid(name: str, options: dict) -> tuple[dict, tuple | None]:
    """Options of one defence, checked; a list given for its strength knob is the grid to try
    (e.g. ``ft.steps=[50,100]``) rather than a fixed value."""
    defence_class = DEFENCES.get(name)
    options = dict(options)
    grid = options.pop(defence_class.strength, None) if isinstance(options.get(defence_class.strength), list) else None
    defence_class(**options)
    if grid is not None and not grid:
        raise NgfkitError(f"the grid for {name}.{defence_class.strength} is empty")
    return options, tuple(grid) if grid is not None else None


def _choice(history: dict) -> dict:
    """The part of a defence's history worth keeping in the report: the setting it ran at and, when
    that was chosen from clean data, the selection (every value tried and what it cost)."""
    choice = {"setting": history["setting"]}
    if "selection" in history:
        selection = history["selection"]
        choice["selection"] = {"knob": selection["knob"], "chosen": selection["chosen"], "estimate": selection["estimate"],
                               "budget_met": selection["budget_met"],
                               "tried": [{k: v for k, v in t.items() if k != "val_curve"} for t in selection["tried"]]}
    return choice


def summarise(report: dict) -> list[dict]:
    """Mean ± std over attacks and seeds per (defence, setting), plus per-attack means."""
    rows = []
    keys = sorted({(c["defense"], c["setting"]) for c in report["cells"]},
                  key=lambda k: (ALL_DEFENCES.index(k[0]) if k[0] in ALL_DEFENCES else 99, SETTINGS.index(k[1])))
    for defence, setting in keys:
        cells = [c for c in report["cells"] if c["defense"] == defence and c["setting"] == setting]
        row: dict[str, Any] = {"defense": defence, "setting": setting, "cells": len(cells),
                               "attacks": sorted({c["attack"] for c in cells})}
        for field in ("acc", "acc_drop", "asr", "ra", "der", "seconds", "peak_mb"):
            # a missing value (peak memory that could not be measured) is left out, not counted as 0
            row[field], row[f"{field}_std"] = mean_std([c[field] for c in cells if c.get(field) is not None])
        retuned = [c["reactivation"]["asr_after"] for c in cells if c.get("reactivation")]
        if retuned:
            row["reactivated_asr"], row["reactivated_asr_std"] = mean_std(retuned)
        rows.append(row)
    return rows


def reactivation_table(report: dict, setting: str = "selected") -> str:
    """Markdown: per attack, the ASR right after each defence and after the re-tuning on a few
    poisoned images (``before → after``), beside the backdoored model's and the clean model's."""
    if not report.get("reactivation"):
        raise NgfkitError("the report has no reactivation measurement; run bench defences with --reactivation")
    protocol = report["reactivation"]
    cells = [c for c in report["cells"] if c["setting"] == setting and c.get("reactivation")]
    defences = list(dict.fromkeys(c["defense"] for c in cells))
    attacks = [a for a in PAPER_ATTACKS if any(c["attack"] == a for c in cells)]

    def pair(rows: list[dict]) -> str:
        if not rows:
            return "–"
        return (f"{statistics.fmean(r['asr_before'] for r in rows):.1f} → "
                f"{statistics.fmean(r['asr_after'] for r in rows):.1f}")

    reference = pair(report.get("reactivation_reference", []))
    lines = [f"ASR % right after → after re-tuning on {protocol['poisoned']} poisoned + {protocol['clean']} clean "
             f"images ({protocol['steps']} SGD steps, lr {protocol['lr']:g}), mean over seeds; clean model: "
             f"{reference}", "",
             "| attack | backdoored | " + " | ".join(defences) + " |", "| --- " * (len(defences) + 2) + "|"]
    for attack in attacks:
        backdoored = [b["reactivation"] for b in report["before"] if b["attack"] == attack and b.get("reactivation")]
        row = [pair([c["reactivation"] for c in cells if c["attack"] == attack and c["defense"] == d])
               for d in defences]
        lines.append(f"| {attack} | {pair(backdoored)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def cell_mean(report: dict, attack: str, defense: str, metric: str, setting: str = "selected") -> float | None:
    """Mean over seeds of ``metric`` for one (attack, defence) at ``setting``; None if never run."""
    values = [c[metric] for c in report["cells"]
              if c["attack"] == attack and c["defense"] == defense and c["setting"] == setting]
    return statistics.fmean(values) if values else None


def _asr_cell(report: dict, attack: str, defence: str, setting: str) -> str:
    """``"ASR (C-ACC drop)"`` of one (attack, defence), mean over seeds; ``–`` if never run."""
    asr = cell_mean(report, attack, defence, "asr", setting)
    return "–" if asr is None else f"{asr:.1f} ({cell_mean(report, attack, defence, 'acc_drop', setting):+.1f})"


def defence_table(report: dict, setting: str = "selected") -> str:
    """Markdown: one row per defence (mean ± std over attacks and seeds), then ASR per attack."""
    summary = [r for r in report.get("summary") or summarise(report) if r["setting"] == setting]
    rate = report.get("poison_rate")
    rate_text = "each attack's own" if rate is None else f"{100 * rate:g} %"
    lines = [f"{report['dataset']}, {report['arch']}, setting '{setting}', clean-accuracy budget "
             f"{report['acc_budget']} points, seeds {report['seeds']}, clean data "
             f"{100 * report.get('clean_fraction', 0.01):g} % of the training set, poison rate {rate_text}", "",
             "| defence | attacks | C-ACC drop | ASR % | RA % | DER % | seconds | peak MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary:
        lines.append(f"| {r['defense']} | {len(r['attacks'])} | {r['acc_drop']:.2f} ± {r['acc_drop_std']:.2f} | "
                     f"{r['asr']:.2f} ± {r['asr_std']:.2f} | {r['ra']:.2f} ± {r['ra_std']:.2f} | "
                     f"{r['der']:.1f} | {r['seconds']:.1f} | "
                     f"{'–' if math.isnan(r['peak_mb']) else format(r['peak_mb'], '.0f')} |")
    attacks = [a for a in PAPER_ATTACKS if any(c["attack"] == a for c in report["cells"])]
    defences = [r["defense"] for r in summary]
    lines += ["", "ASR % after each defence (C-ACC drop in points), mean over seeds:", "",
              "| attack | before | " + " | ".join(defences) + " |", "| --- " * (len(defences) + 2) + "|"]
    for attack in attacks:
        before = [b["asr"] for b in report["before"] if b["attack"] == attack]
        cells = [_asr_cell(report, attack, defence, setting) for defence in defences]
        lines.append(f"| {attack} | {statistics.fmean(before):.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_length_table(reports: Sequence[dict], attack: str = "badnets", setting: str = "selected",
                          defences: Sequence[str] | None = None) -> str:
    """Markdown: one row per report (a training length of the backdoored models), ASR % left by
    each defence on ``attack`` (C-ACC drop in points), mean over seeds; ``–`` where not run."""
    reports = sorted((r for r in reports if any(c["attack"] == attack for c in r["cells"])),
                     key=lambda r: r["train"]["epochs"])
    if not reports:
        raise NgfkitError(f"none of the reports holds the attack {attack!r}")
    if defences is None:
        defences = list(dict.fromkeys(c["defense"] for r in reports for c in r["cells"]
                                      if c["attack"] == attack and c["setting"] == setting))
    lines = ["| epochs | train lr | seeds | ASR before | " + " | ".join(defences) + " |",
             "| --- " * (len(defences) + 4) + "|"]
    for report in reports:
        before = [b["asr"] for b in report["before"] if b["attack"] == attack]
        seeds = sorted({c["seed"] for c in report["cells"] if c["attack"] == attack})
        cells = [_asr_cell(report, attack, defence, setting) for defence in defences]
        lines.append(f"| {report['train']['epochs']} | {report['train']['lr']} | {len(seeds)} | "
                     f"{statistics.fmean(before):.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_reports(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One report from several ``bench defences`` reports made with the same settings (say, one
    per SLURM job, each running some attacks or defences); a cell present twice is kept once."""
    reports = read_reports(paths, _settings_of, "defences", ROWS)
    merged = {**reports[0], "cells": [], "before": [], "merged_from": [str(p) for p in paths]}
    seen_cells, seen_before = set(), set()
    for report in reports:
        for cell in report.get("cells", []):
            key = (cell["attack"], cell["defense"], cell["seed"], cell["setting"])
            if key not in seen_cells:
                seen_cells.add(key)
                merged["cells"].append(cell)
        for row in report.get("before", []):
            if (row["attack"], row["seed"]) not in seen_before:
                seen_before.add((row["attack"], row["seed"]))
                merged["before"].append(row)
    merged["seeds"] = sorted({c["seed"] for c in merged["cells"]})
    merged["wall_seconds"] = sum(r.get("wall_seconds", 0.0) for r in reports)
    merged["summary"] = summarise(merged)
    return merged
