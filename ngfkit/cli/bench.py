"""The ``bench`` commands: ``attacks``, ``defences``, ``sharpness`` and ``merge``.

Each is a pair, as in :mod:`ngfkit.cli.commands`: ``<name>_options(parser)`` and
``cmd_<name>(args)``, which runs the benchmark of :mod:`ngfkit.bench`, prints its tables and
returns its report.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from ..errors import NgfkitError
from ..registry import comma_separated
from . import options

_ATTACKS_HELP = "'all' (the paper's 15) or comma-separated attack names (default: all)"


def _refuse_seed(args: argparse.Namespace, command: str, alternative: str = "") -> None:
    """These benchmarks run a set of seeds: their ``--seed`` is hidden and refused in one line."""
    if args.seed is not None:
        raise NgfkitError(f"bench {command} does not take --seed: it runs seeds 0..N-1 with --seeds N{alternative}")


def _shared(args: argparse.Namespace) -> dict:
    """The keyword arguments every bench command passes on the same way: the defender's clean share, the
    device, progress, the JSON report (resumed from) and where the data is."""
    from ..utils import resolve_device

    return dict(clean_fraction=args.clean_fraction, device=resolve_device(args.device), progress=not args.quiet,
                json_path=args.json, data_root=args.data_root, download=args.download)


def attacks_options(parser: argparse.ArgumentParser) -> None:
    options.model_options(parser)
    parser.add_argument("--attacks", default="all", help=_ATTACKS_HELP)
    options.training_options(parser, whose="every model")
    options.poison_rate_option(parser, whose="every backdoored model's training set")
    options.common_options(parser)


def cmd_attacks(args: argparse.Namespace) -> dict:
    from ..bench.attacks import attack_table, bench_attacks

    report = bench_attacks(args.dataset, args.arch, args.attacks, seed=args.seed, train=options.train_config(args),
                           poison_rate=args.poison_rate, **_shared(args))
    print(attack_table(report))
    return report


def defences_options(parser: argparse.ArgumentParser) -> None:
    options.model_options(parser)
    parser.add_argument("--attacks", default="all", help=_ATTACKS_HELP)
    parser.add_argument(*options.both_spellings("--defences"), dest="defences", default="all",
                        help="'all' (NGF, the paper's baselines and ablations, the NGF variants, the authors' "
                        "successors FIP and NFT, FST's family and SAU) or comma-separated defence names (default: all)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (one backdoored model each; default 1)")
    parser.add_argument("--acc-budget", type=float, default=3.0,
                        help="most held-out clean-accuracy points a defence's chosen strength may cost (default 3)")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="share of the clean set held out to choose each defence's strength (default 0.2)")
    parser.add_argument("--settings", default="selected,authors",
                        help="selected (strength chosen by the clean-data rule), authors (defaults), or both "
                        "(default: selected,authors)")
    parser.add_argument(*options.both_spellings("--defence-param"), dest="defence_param", action="append",
                        default=[], metavar="NAME.KEY=VALUE",
                        help="an option of one defence, e.g. anp.iterations=2000 (repeatable); "
                        "a list for its strength knob is the grid to choose from, e.g. ft.steps=[50,100] "
                        "(default: each defence's own options and grid)")
    options.training_options(parser, whose="the backdoored models")
    options.poison_rate_option(parser, whose="every backdoored model's training set")
    parser.add_argument("--reactivation", action="store_true",
                        help="also re-tune every purified model, the backdoored one and its clean twin on a few "
                             "poisoned images and report the ASR it climbs back to (ngfkit.studies.reactivation; "
                             "default: off)")
    parser.add_argument("--figure", metavar="PATH", default=None,
                        help="also write the ASR vs ACC-drop scatter as a self-contained HTML file (default: none)")
    options.common_options(parser, seed=False)


def _show_defence_report(report: dict, settings: Sequence[str], figure: str | None) -> None:
    """Print a bench defences report's tables, one per setting, and write its scatter if asked."""
    from ..bench.defences import defence_table, reactivation_table

    for setting in settings:
        print(defence_table(report, setting))
        print()
        if report.get("reactivation"):
            print(reactivation_table(report, setting))
            print()
    if figure:
        from ..viz.plots import defence_scatter, write_html

        write_html(defence_scatter(report), figure)
        print(f"wrote {figure}")


def cmd_defences(args: argparse.Namespace) -> dict:
    from ..bench.defences import bench_defences

    _refuse_seed(args, "defences")
    settings = comma_separated(args.settings)
    report = bench_defences(args.dataset, args.arch, args.attacks, args.defences, seeds=args.seeds,
                            acc_budget=args.acc_budget, holdout=args.holdout, settings=settings,
                            train=options.train_config(args), poison_rate=args.poison_rate, **_shared(args),
                            defence_options=options.named_key_values(args.defence_param),
                            reactivation=args.reactivation)
    _show_defence_report(report, settings, args.figure)
    return report


def stability_options(parser: argparse.ArgumentParser) -> None:
    options.model_options(parser)
    parser.add_argument("--attack", default="badnets", help="the attack of the one backdoored model (default badnets)")
    parser.add_argument("--model-seed", type=int, default=0, help="seed of that model (default 0, the demo's)")
    parser.add_argument(*options.both_spellings("--defences"), dest="defences", default="ngf",
                        help="comma-separated defences to re-run (default: ngf)")
    parser.add_argument("--seeds", type=int, default=5, help="defence seeds 0..N-1 (default 5)")
    parser.add_argument("--threads", default="1,2", help="CPU thread counts to run each seed with (default 1,2)")
    parser.add_argument(*options.both_spellings("--defence-param"), dest="defence_param", action="append",
                        default=[], metavar="NAME.KEY=VALUE",
                        help="an option of one defence, e.g. ngf.damping=0.01 (repeatable; default: none)")
    options.training_options(parser, whose="the backdoored model")
    options.common_options(parser, seed=False)


def cmd_stability(args: argparse.Namespace) -> dict:
    from ..bench.stability import bench_stability, stability_table
    from ..defences import DEFENCES

    report = bench_stability(args.dataset, args.attack, DEFENCES.parse_names(args.defences, option="--defences"),
                             seeds=list(range(args.seeds)), threads=options.int_list(args.threads, "--threads"),
                             model_seed=args.model_seed, arch=args.arch, train=options.train_config(args),
                             **_shared(args), defence_options=options.named_key_values(args.defence_param))
    print(stability_table(report))
    return report


def sharpness_options(parser: argparse.ArgumentParser) -> None:
    options.model_options(parser)
    parser.add_argument("--kinds", default="clean,badnets", help="'clean' and/or attack names (default clean,badnets)")
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", default="3,10,30", help="training lengths, comma-separated (default 3,10,30)")
    group.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    group.add_argument("--seed-list", default=None, metavar="S,S,...",
                       help="run these seeds instead of 0..N-1 (one job of a job array, say; "
                       "join the jobs' reports with `ngfkit bench merge`; default: 0..N-1 of --seeds)")
    group.add_argument("--train-lr", type=float, default=0.1, help="training learning rate (default 0.1, the paper's)")
    options.clean_fraction_option(group)
    measurement = parser.add_argument_group("measurement")
    measurement.add_argument("--samples", type=int, default=200, help="clean images per measurement (default 200)")
    measurement.add_argument("--probes", type=int, default=30, help="Hutch++ probes for the trace (default 30)")
    measurement.add_argument("--no-purify", action="store_true", help="skip the measurement after NGF")
    options.common_options(parser, seed=False)


def cmd_sharpness(args: argparse.Namespace) -> dict:
    from ..bench.sharpness import bench_sharpness, sharpness_table

    _refuse_seed(args, "sharpness", " or the seeds of --seed-list S,...")
    epochs = options.int_list(args.epochs, "--epochs")
    seeds = options.int_list(args.seed_list, "--seed-list") if args.seed_list else args.seeds
    report = bench_sharpness(args.dataset, args.arch, comma_separated(args.kinds),
                             epochs=epochs, seeds=seeds, train_lr=args.train_lr, samples=args.samples,
                             probes=args.probes, purify_with=None if args.no_purify else "ngf",
                             **_shared(args))
    print(sharpness_table(report))
    return report


def merge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports", nargs="+", help="bench defences JSON files, or bench sharpness JSON files")
    parser.add_argument("--figure", metavar="PATH", default=None,
                        help="also write a figure as HTML: the ASR vs ACC-drop scatter (defences) or "
                        "λmax and trace against training length (sharpness) (default: none)")
    options.output_options(parser, json_help="write the merged report here",
                           quiet_help="do not print the table of merged sharpness reports")


def _is_sharpness_report(path: str) -> bool:
    """Whether ``path`` looks like a ``bench sharpness`` report (rows) rather than a defences one;
    unreadable files are left to the merge, which names the problem."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "rows" in report and "cells" not in report


def cmd_merge(args: argparse.Namespace) -> dict:
    if _is_sharpness_report(args.reports[0]):
        from ..bench.sharpness import merge_reports, sharpness_table
        from ..viz.plots import sharpness_vs_training_figure, write_html

        report = merge_reports(args.reports)
        if not args.quiet:
            print(sharpness_table(report))
        if args.figure:
            write_html(sharpness_vs_training_figure(report), args.figure)
            print(f"wrote {args.figure}")
        return report
    from ..bench.defences import SETTINGS, merge_reports

    report = merge_reports(args.reports)
    _show_defence_report(report, [s for s in SETTINGS if any(c["setting"] == s for c in report["cells"])],
                         args.figure)
    return report
