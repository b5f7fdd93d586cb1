"""``ngfkit bench sharpness``: is a backdoored model in a sharper minimum than a benign one?

For each training length, seed and model kind (``clean`` or an attack), the model comes from the
model cache (or is trained now), its top Hessian eigenvalue and Hessian trace are measured on
clean images of the defender's split, and backdoored models are measured again after NGF. Each
row is written to the JSON report as soon as it is done, so a killed run resumes.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..attacks import ATTACKS
from .attacks import load_previous_report, read_reports
from ..defences import purify
from ..errors import NgfkitError
from .. import validation as check
from ..metrics import evaluate, mean_std
from ..pipeline import Experiment, load_or_train, load_splits
from ..curvature.sharpness import measure
from ..train import TrainConfig
from ..utils import versions, write_json

#: the paper's backdoor-training recipe (SGD lr 0.1, momentum 0.9, weight decay 5e-4), cosine schedule
PAPER_LR = 0.1


#: what every row of a report holds (checked when a report is resumed or merged)
ROWS = {"rows": ("kind", "epochs", "seed", "acc", "lambda_max", "trace")}


def _settings(report: dict) -> dict:
    return {k: report.get(k) for k in ("dataset", "arch", "train_lr", "samples", "probes", "clean_fraction")}


def bench_sharpness(dataset: str = "fashion-mnist", arch: str | None = None, kinds: Sequence[str] = ("clean", "badnets"),
                    *, epochs: Sequence[int] = (3, 10, 30), seeds: int | Sequence[int] = 3, train_lr: float = PAPER_LR,
                    samples: int = 200, probes: int = 30, purify_with: str | None = "ngf",
                    clean_fraction: float = 0.01, device: torch.device | str = "cpu", progress: bool = True,
                    json_path: str | Path | None = None, data_root=None, download: bool = False) -> dict[str, Any]:
    """Rows ``{"kind", "epochs", "seed", "acc", "asr", "lambda_max", "trace", "trace_std", ...}``
    (plus ``"purified"`` with the same measurements after ``purify_with``), and a summary with
    mean ± std per (kind, epochs) and the backdoor / benign ratio of λmax and trace.

    ``seeds`` is a count (seeds ``0..N-1``) or the seeds themselves, so that one job of a job
    array can run one seed (or one kind) and ``merge_reports`` joins the jobs' reports."""
    unknown = [k for k in kinds if k != "clean" and k not in ATTACKS.names()]
    if unknown:
        raise NgfkitError(f"unknown model kind {unknown[0]!r}; use 'clean' or an attack from: {', '.join(ATTACKS.names())}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not epochs or not seed_list:
        raise NgfkitError("--epochs and --seeds must name at least one training length and one seed")
    epochs = [check.whole(e, "every training length (--epochs, epochs=)", least=1) for e in epochs]
    seed_list = [check.whole(s, "every seed (--seeds, --seed-list, seeds=)") for s in seed_list]
    samples = check.whole(samples, "samples (--samples)", least=1)
    probes = check.whole(probes, "probes (--probes)", fix="0 skips the trace")
    train_lr = check.positive(train_lr, "train_lr (--train-lr)")
    report: dict[str, Any] = {"dataset": dataset, "arch": None, "train_lr": train_lr, "samples": samples,
                              "probes": probes, "clean_fraction": clean_fraction}
    report["arch"] = Experiment(dataset=dataset, arch=arch).arch
    previous = load_previous_report(json_path, _settings(report), "sharpness", ROWS)
    report.update({"rows": (previous or {}).get("rows", []), "purify_with": purify_with, "device": str(device),
                   "versions": versions()})
    done = {(r["kind"], r["epochs"], r["seed"]) for r in report["rows"]}
    start = time.perf_counter()
    for seed in seed_list:
        splits = None
        for n_epochs in epochs:
            for kind in kinds:
                if (kind, n_epochs, seed) in done:
                    continue
                exp = Experiment(dataset=dataset, arch=arch, attack=None if kind == "clean" else kind,
                                 clean_fraction=clean_fraction, seed=seed,
                                 train=TrainConfig(epochs=n_epochs, lr=train_lr))
                splits = splits or load_splits(exp, data_root, download)
                trained = load_or_train(exp, splits, device=device, progress=progress)
                row = {"kind": kind, "epochs": n_epochs, "seed": seed, "device": str(device),
                       **evaluate(trained.model, splits.test, trained.attack, device=device),
                       **_sharpness(trained.model, splits.clean, samples, probes, seed, device)}
                if trained.attack is not None and purify_with:
                    purified, history = purify(trained.model, splits.clean, purify_with, device=device,
                                               progress=False, seed=seed)
                    row["purified"] = {"defense": purify_with, "setting": history["setting"],
                                       **evaluate(purified, splits.test, trained.attack, device=device),
                                       **_sharpness(purified, splits.clean, samples, probes, seed, device)}
                report["rows"].append(row)
                report["summary"] = summarise(report)
                report["wall_seconds"] = time.perf_counter() - start + (previous or {}).get("wall_seconds", 0.0)
                if json_path:
                    write_json(json_path, report)
                if progress:
                    tqdm.write(f"{kind:10s} {n_epochs:3d} epochs seed {seed}: acc {row['acc']:6.2f}  "
                               f"lambda_max {row['lambda_max']:8.3f}  trace {row['trace']:9.2f}"
                               + (f"  -> after {purify_with}: lambda_max {row['purified']['lambda_max']:8.3f}"
                                  if "purified" in row else ""))
    report["summary"] = summarise(report)
    if json_path:
        write_json(json_path, report)
    return report


def merge_reports(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One report from several ``bench sharpness`` reports made with the same settings (one per
    job of a job array, say); a (kind, epochs, seed) row present twice is kept once, the first."""
    reports = read_reports(paths, _settings, "sharpness", ROWS)
    merged = {**reports[0], "rows": [], "merged_from": [str(p) for p in paths]}
    seen = set()
    for report in reports:
        for row in report["rows"]:
            key = (row["kind"], row["epochs"], row["seed"])
            if key not in seen:
                seen.add(key)
                merged["rows"].append(row)
    merged["rows"].sort(key=lambda r: (r["seed"], r["epochs"], r["kind"] != "clean", r["kind"]))
    merged["devices"] = sorted({r.get("device", report.get("device", "?")) for report in reports for r in report["rows"]})
    merged["wall_seconds"] = sum(r.get("wall_seconds", 0.0) for r in reports)
    merged["summary"] = summarise(merged)
    return merged


def _sharpness(model, clean, samples: int, probes: int, seed: int, device) -> dict[str, Any]:
    result = measure(model, clean, samples=min(samples, len(clean)), probes=probes, seed=seed, device=device)
    return {k: result[k] for k in ("lambda_max", "trace", "trace_std", "loss", "samples", "seconds")}


def summarise(report: dict) -> list[dict]:
    """Mean ± std of λmax and trace per (kind, epochs), with the ratio of the means to the benign
    models' and the ratio seed by seed (a benign and a backdoored model of one seed share their
    initialisation and batch order, so their ratio is the paired comparison)."""
    rows = report["rows"]
    out = []
    for n_epochs in sorted({r["epochs"] for r in rows}):
        benign = [r for r in rows if r["kind"] == "clean" and r["epochs"] == n_epochs]
        benign_by_seed = {r["seed"]: r for r in benign}
        for kind in sorted({r["kind"] for r in rows if r["epochs"] == n_epochs}, key=lambda k: (k != "clean", k)):
            group = [r for r in rows if r["kind"] == kind and r["epochs"] == n_epochs]
            entry: dict[str, Any] = {"kind": kind, "epochs": n_epochs, "seeds": len(group)}
            for field in ("lambda_max", "trace", "acc"):
                entry[field] = list(mean_std([r[field] for r in group]))
            if benign and kind != "clean":
                for field in ("lambda_max", "trace"):
                    entry[f"{field}_ratio"] = entry[field][0] / statistics.fmean(r[field] for r in benign)
                    entry[f"{field}_seed_ratios"] = [r[field] / benign_by_seed[r["seed"]][field]
                                                     for r in sorted(group, key=lambda r: r["seed"])
                                                     if r["seed"] in benign_by_seed]
            purified = [r["purified"] for r in group if "purified" in r]
            if purified:
                entry["purified"] = {f: list(mean_std([p[f] for p in purified])) for f in ("lambda_max", "trace", "acc", "asr")}
            out.append(entry)
    return out


def ratio_text(entry: dict, field: str) -> str:
    """``"1.27 (1.13–1.38)"``: the backdoored / benign ratio of ``field`` ("lambda_max" or "trace")
    in one :func:`summarise` entry, with the range of the per-seed ratios; ``–`` for benign rows."""
    ratio = entry.get(f"{field}_ratio")
    if ratio is None:
        return "–"
    per_seed = entry.get(f"{field}_seed_ratios") or []
    return f"{ratio:.2f}" + (f" ({min(per_seed):.2f}–{max(per_seed):.2f})" if len(per_seed) > 1 else "")


def sharpness_table(report: dict) -> str:
    """A Markdown table of :func:`summarise`: one row per (kind, epochs); ratios are backdoored /
    benign (ratio of the means, and in brackets the range of the per-seed ratios)."""
    lines = [f"{report['dataset']}, {report['arch']}, train lr {report['train_lr']}, {report['samples']} clean images",
             "", "| model | epochs | seeds | C-ACC % | λmax | trace | λmax ratio to benign | trace ratio to benign "
             "| after NGF: ASR % | after NGF: λmax |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in summarise(report):  # not the stored summary: a report written by an older version lacks fields
        after = e.get("purified", {})
        lines.append(f"| {e['kind']} | {e['epochs']} | {e['seeds']} | {e['acc'][0]:.2f} | "
                     f"{e['lambda_max'][0]:.2f} ± {e['lambda_max'][1]:.2f} | {e['trace'][0]:.1f} ± {e['trace'][1]:.1f} | "
                     f"{ratio_text(e, 'lambda_max')} | {ratio_text(e, 'trace')} | "
                     + (f"{after['asr'][0]:.1f} ± {after['asr'][1]:.1f} | {after['lambda_max'][0]:.1f} ± "
                        f"{after['lambda_max'][1]:.1f} |" if after else "– | – |"))
    return "\n".join(lines)
