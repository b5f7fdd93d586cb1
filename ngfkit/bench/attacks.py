"""Benchmark commands: each cell is an independent, cached job, so a killed run resumes.

``bench_attacks`` trains one backdoored model per attack (plus the clean model they are
compared with) through :func:`ngfkit.pipeline.load_or_train`, whose model cache makes every
finished cell free on the next run; the JSON report is rewritten atomically after each cell.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..attacks import ATTACKS, paper_attacks
from ..errors import NgfkitError
from ..pipeline import Experiment, load_or_train, load_splits
from ..train import TrainConfig
from ..utils import versions, write_json

#: the attack zoo of the NGF paper, in the order of its tables (:attr:`ngfkit.attacks.Attack.paper_order`)
PAPER_ATTACKS = paper_attacks()

#: the issue's bar on the embedded data: ASR at least the attack's :attr:`~ngfkit.attacks.Attack.asr_goal`
#: (percent), clean-ACC drop at most this many points
ACC_DROP_GOAL = 2.0


def _row(exp: Experiment, trained, clean_acc: float) -> dict[str, Any]:
    meta, metrics = trained.meta, trained.meta["metrics"]
    goal = ATTACKS.get(exp.attack).asr_goal
    drop = clean_acc - metrics["acc"]
    return {"attack": exp.attack, "acc": metrics["acc"], "asr": metrics["asr"], "ra": metrics["ra"],
            "poison_rate": exp.poison_rate, "poisoned_images": meta.get("poisoned_indices"),
            "mode": exp.mode, "seconds": meta["train_seconds"] + (meta.get("trigger_seconds") or 0.0),
            "trigger_seconds": meta.get("trigger_seconds") or 0.0, "seed": exp.seed,
            "acc_drop": drop, "goal": {"asr_min": goal, "acc_drop_max": ACC_DROP_GOAL,
                                       "met": metrics["asr"] >= goal and drop <= ACC_DROP_GOAL},
            "cached": trained.cached, "experiment": exp.to_dict()}


def bench_attacks(dataset: str = "fashion-mnist", arch: str | None = None, attacks: str | Sequence[str] = "all",
                  *, seed: int = 0, train: TrainConfig | None = None, clean_fraction: float = 0.01,
                  poison_rate: float | None = None, device: torch.device | str = "cpu", progress: bool = True,
                  json_path: str | Path | None = None, data_root=None, download: bool = False) -> dict[str, Any]:
    """Train (or load from the cache) a clean model and one backdoored model per attack.

    Returns ``{"dataset", "arch", "clean_acc", "attacks": [{"attack", "acc", "asr", "ra",
    "poison_rate", "seconds", "seed", ...}]}`` with percentages; ``seconds`` is the attack's own
    cost (learning its trigger plus training the victim) as measured when it was first run.
    ``poison_rate`` overrides every attack's own share of poisoned training images (None keeps each one's).
    """
    names = ATTACKS.parse_names(attacks, default=PAPER_ATTACKS, option="--attacks")
    train = train or TrainConfig()
    start = time.perf_counter()
    base = Experiment(dataset=dataset, arch=arch, attack=None, clean_fraction=clean_fraction, seed=seed, train=train)
    # every experiment is built (and its options checked) before the first model trains
    experiments = [Experiment(dataset=dataset, arch=arch, attack=name, clean_fraction=clean_fraction, seed=seed,
                              train=train, poison_rate=poison_rate) for name in names]
    splits = load_splits(base, data_root, download)
    clean = load_or_train(base, splits, device=device, progress=progress)
    report: dict[str, Any] = {"dataset": dataset, "arch": base.arch, "clean_acc": clean.meta["metrics"]["acc"],
                              "clean_seconds": clean.meta["train_seconds"], "attacks": [],
                              "train": train.to_dict(), "seed": seed, "clean_fraction": clean_fraction,
                              "poison_rate": poison_rate,
                              "device": str(device), "versions": versions()}
    for name, exp in zip(names, experiments):
        trained = load_or_train(exp, splits, device=device, progress=progress)
        row = _row(exp, trained, report["clean_acc"])
        report["attacks"].append(row)
        report["wall_seconds"] = time.perf_counter() - start
        if json_path:
            write_json(json_path, report)
        if progress:
            mark = "ok " if row["goal"]["met"] else "MISS"
            tqdm.write(f"[{mark}] {name:12s} acc {row['acc']:6.2f} (drop {row['acc_drop']:+.2f})  asr {row['asr']:6.2f}"
                  f"  ra {row['ra']:6.2f}  {row['seconds']:6.0f} s{'  (cached)' if row['cached'] else ''}")
    report["wall_seconds"] = time.perf_counter() - start
    if json_path:
        write_json(json_path, report)
    return report


def attack_table(report: dict[str, Any]) -> str:
    """The ``bench attacks`` report as a markdown table (what the README and the book show)."""
    lines = [f"clean model: C-ACC {report['clean_acc']:.2f} % ({report['dataset']}, {report['arch']}, "
             f"seed {report['seed']}, {report['train']['epochs']} epoch(s))", "",
             "| attack | C-ACC % | ACC drop | ASR % | RA % | goal | seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["attacks"]:
        goal = row["goal"]
        verdict = "met" if goal["met"] else f"**missed** (ASR ≥ {goal['asr_min']:.0f}, drop ≤ {goal['acc_drop_max']:.0f})"
        lines.append(f"| {row['attack']} | {row['acc']:.2f} | {row['acc_drop']:+.2f} | {row['asr']:.2f} | "
                     f"{row['ra']:.2f} | {verdict} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def check_report(report: Any, path: str | Path, kind: str, rows: Mapping[str, Sequence[str]],
                 fix: str = "move it away or pick another --json") -> dict:
    """``report`` checked to be a bench ``kind`` report: a JSON object whose lists ``rows`` (key ->
    the fields each entry needs) hold objects with those fields; else one error naming the first
    problem. A report is read back to resume or merge, and may have been edited or truncated."""
    if not isinstance(report, dict) or not all(key in report for key in rows):
        holding = f" with {' and '.join(repr(k) for k in rows)}" if rows else ""
        raise NgfkitError(f"{path} is not a bench {kind + ' ' if kind else ''}report (a JSON object{holding}); {fix}")
    for key, fields in rows.items():
        entries = report[key]
        if not isinstance(entries, list):
            raise NgfkitError(f"{path}: {key!r} should be a list, got {type(entries).__name__}; {fix}")
        for i, entry in enumerate(entries):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise NgfkitError(f"{path}: {key}[{i}] lacks {missing[0]!r}; the report was edited or is not "
                                  f"from this version of ngfkit: {fix}")
    return report


def _read_json(path: str | Path, fix: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NgfkitError(f"cannot read bench report {path} ({error.__class__.__name__}); {fix}") from None


def read_reports(paths: Sequence[str | Path], settings_of, kind: str, rows: Mapping[str, Sequence[str]]) -> list[dict]:
    """The bench reports at ``paths``, checked to be ``kind`` reports (:func:`check_report` with
    ``rows``) made with the same settings (``settings_of(report)``), so that they can be merged."""
    if not paths:
        raise NgfkitError("give at least one report to merge")
    fix = "leave it out of the merge or check the path"
    reports = [check_report(_read_json(path, fix), path, kind, rows, fix) for path in paths]
    settings = settings_of(reports[0])
    for path, report in zip(paths[1:], reports[1:]):
        changed = [k for k in settings if settings_of(report)[k] != settings[k]]
        if changed:
            raise NgfkitError(f"{path} was made with other settings than {paths[0]} ({', '.join(changed)}); "
                              f"only reports of one benchmark can be merged")
    return reports


def load_previous_report(json_path: str | Path | None, settings: dict, kind: str = "",
                         rows: Mapping[str, Sequence[str]] | None = None) -> dict | None:
    """The report already at ``json_path`` (to resume from), checked to be a ``kind`` report
    (:func:`check_report`) made with ``settings`` (every one of them: a resume with other options
    would mix two benchmarks under one header); ``None`` if there is none yet."""
    if not json_path or not Path(json_path).is_file():
        return None
    previous = check_report(_read_json(json_path, "move it away or pick another --json"), json_path, kind, {})
    changed = [k for k in settings if previous.get(k, {} if k == "defence_options" else None) != settings[k]]
    if changed:  # checked before the rows: it says more about a report of another benchmark
        raise NgfkitError(f"{json_path} holds results made with other settings ({', '.join(changed)}); "
                          f"resume with the same options, or pick another --json to start a new benchmark")
    return check_report(previous, json_path, kind, rows or {})
