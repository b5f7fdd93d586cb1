"""The model commands: ``demo``, ``attack``, ``purify``, ``evaluate``, ``sharpness``, ``list``, ``grid``.

Each is a pair: ``<name>_options(parser)`` declares its options (mostly shared groups of
:mod:`ngfkit.cli.options`) and ``cmd_<name>(args)`` runs it through :mod:`ngfkit.pipeline`,
prints a table and returns the JSON result. Library imports are inside the commands so that
``ngfkit --help`` does not load torch.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import NgfkitError
from ..registry import comma_separated
from . import options
from .output import json_safe, metrics_table, print_choice, provenance


def demo_options(parser: argparse.ArgumentParser) -> None:
    options.model_options(parser)
    parser.add_argument("--no-cache", action="store_true", help="train again even if the model is cached")
    options.attack_options(parser)
    options.training_options(parser)
    # the demo's headline is the NGF-family variant that held up over seeds and threads
    # (results/stability-fashion-mnist.json); plain ngf, the paper's text, runs beside it
    options.defence_options(parser, default="ngf-shift")
    parser.add_argument("--compare", default="ngf", metavar="NAMES",
                        help="comma-separated defences also run on the same model with their own defaults, "
                             "reported beside it ('' for none; default: ngf, the paper's text)")
    options.common_options(parser)


def cmd_demo(args: argparse.Namespace) -> dict:
    import torch

    from ..bench.stability import REFERENCE_VIEWS, forward_seconds
    from ..defences import DEFENCES
    from ..pipeline import load_or_train, load_splits, run_defence
    from ..utils import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    exp = options.experiment(args)
    defence_kwargs = options.checked_defence_kwargs(args)  # before a model is trained and cached
    compare = [name for name in DEFENCES.parse_names(args.compare, option="--compare") if name != args.defence] if args.compare else []
    splits = load_splits(exp, args.data_root, args.download)
    trained = load_or_train(exp, splits, device=device, progress=not args.quiet, use_cache=not args.no_cache)
    print(f"{'loaded cached' if trained.cached else 'trained'} {exp.arch} backdoored with {exp.attack} "
          f"on {exp.dataset} ({len(splits.train)} training images, {len(splits.clean)} held out as clean data)")
    result = run_defence(trained.model, trained.attack, splits, args.defence, device=device,
                         progress=not args.quiet, before=trained.meta.get("metrics"),
                         test_predictions=trained.test_predictions, **defence_kwargs)
    history = result["history"]
    beside = {name: run_defence(trained.model, trained.attack, splits, name, device=device, progress=not args.quiet,
                                before=result["before"], test_predictions=trained.test_predictions)
              for name in compare}
    print(metrics_table([("before", result["before"]), (f"after {args.defence}", result["after"]),
                         *((f"after {name}", other["after"]) for name, other in beside.items())]))
    print_choice(history)
    for name, other in beside.items():
        print(f"  {name}: {other['history']['setting']}; {other['history']['seconds']:.1f} s")
    threads = torch.get_num_threads()
    forward = forward_seconds(trained.model, splits.clean, [threads], device=device, repeats=2)[str(threads)]
    print(f"  one forward pass over the {len(splits.clean)} clean images and {REFERENCE_VIEWS} augmented views of "
          f"each: {forward:.1f} s on {threads} thread(s); {args.defence} took {history['seconds'] / forward:.1f}x that"
          + "".join(f", {name} {other['history']['seconds'] / forward:.1f}x" for name, other in beside.items()))
    total = time.perf_counter() - start
    return {"dataset": exp.dataset, "arch": exp.arch, "attack": exp.attack, "defense": args.defence,
            "before": result["before"], "after": result["after"], "der": result.get("der"),
            "seconds": {"train": trained.seconds, "purify": history["seconds"], "total": total,
                        "forward_pass": forward},
            "threads": threads, "seed": exp.seed, "cached_model": trained.cached, "experiment": exp.to_dict(),
            "defense_history": json_safe(history),
            "compared": [{"defense": name, "after": other["after"], "der": other.get("der"),
                          "setting": safe["setting"], "seconds": safe["seconds"], "defense_history": safe}
                         for name, other in beside.items() for safe in [json_safe(other["history"])]],
            **provenance(start)}


def attack_options(parser: argparse.ArgumentParser) -> None:
    options.model_options(parser)
    parser.add_argument("--out", required=True, help="where to write the .safetensors (a .json sidecar goes beside it)")
    options.attack_options(parser)
    options.training_options(parser)
    options.common_options(parser)


def cmd_attack(args: argparse.Namespace) -> dict:
    from ..checkpoint import save_checkpoint
    from ..pipeline import load_or_train, load_splits
    from ..utils import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    exp = options.experiment(args)
    splits = load_splits(exp, args.data_root, args.download)
    trained = load_or_train(exp, splits, device=device, progress=not args.quiet, use_cache=False)
    save_checkpoint(args.out, trained.model, trained.meta, trained.attack.trigger if trained.attack else None)
    print(f"wrote {args.out} (+ {Path(args.out).with_suffix('.json').name})")
    print(metrics_table([("backdoored", trained.meta["metrics"])]))
    return {"dataset": exp.dataset, "arch": exp.arch, "attack": exp.attack, "model": args.out,
            "metrics": trained.meta["metrics"], "seconds": {"train": trained.seconds}, "seed": exp.seed,
            "experiment": exp.to_dict(), **provenance(start)}


def _checkpoint_splits(meta: dict, dataset: str, args: argparse.Namespace):
    """The :class:`~ngfkit.pipeline.Splits` a checkpoint was trained with (its experiment's clean
    fraction and seed, else ``--clean-fraction`` and ``--seed``), and the clean fraction used."""
    from ..data import defender_split, load_dataset
    from ..pipeline import Splits

    experiment = meta.get("experiment", {})
    fraction = args.clean_fraction or experiment.get("clean_fraction", 0.01)
    seed = experiment.get("seed", args.seed)
    train = load_dataset(dataset, "train", root=args.data_root, download=args.download)
    test = load_dataset(dataset, "test", root=args.data_root, download=args.download)
    attacker_idx, clean_idx = defender_split(len(train), fraction, seed)
    return Splits(train.subset(attacker_idx), train.subset(clean_idx), test), fraction


def purify_options(parser: argparse.ArgumentParser) -> None:
    options.checkpoint_options(parser)
    options.clean_fraction_option(parser, from_checkpoint=True)
    parser.add_argument("--out", required=True, help="where to write the purified .safetensors")
    options.defence_options(parser)
    options.common_options(parser)


def cmd_purify(args: argparse.Namespace) -> dict:
    from ..checkpoint import save_checkpoint
    from ..pipeline import model_from_checkpoint, run_defence
    from ..utils import resolve_device, versions

    start = time.perf_counter()
    device = resolve_device(args.device)
    defence_kwargs = options.checked_defence_kwargs(args)
    model, attack, meta = model_from_checkpoint(args.model, args.arch, args.dataset)
    dataset = meta.get("dataset") or args.dataset
    splits, fraction = _checkpoint_splits(meta, dataset, args)
    result = run_defence(model.to(device), attack, splits, args.defence, device=device, progress=not args.quiet,
                         **defence_kwargs)
    purified, history, before, after = result["model"], result["history"], result["before"], result["after"]
    out_meta = {**meta, "arch": meta.get("arch") or args.arch, "dataset": dataset, "metrics": after,
                "purified_from": str(args.model), "defense": args.defence, "defense_config": history["config"],
                "clean_fraction": fraction, "seed": args.seed, "versions": versions()}
    save_checkpoint(args.out, purified, out_meta, attack.trigger if attack else None)
    print(metrics_table([("before", before), (f"after {args.defence}", after)]))
    print_choice(history)
    print(f"  wrote {args.out}")
    report = {"model": args.model, "out": args.out, "dataset": dataset, "arch": out_meta["arch"],
              "attack": attack.name if attack else None, "defense": args.defence, "before": before,
              "after": after, "seconds": {"purify": history["seconds"]}, "seed": args.seed,
              "defense_history": json_safe(history), **provenance(start)}
    if "der" in result:
        report["der"] = result["der"]
    return report


def evaluate_options(parser: argparse.ArgumentParser) -> None:
    options.checkpoint_options(parser)
    parser.add_argument("--attack", default=None, help="attack to test (default: the one the checkpoint records)")
    options.common_options(parser)


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from ..attacks import ATTACKS, create_attack
    from ..data import dataset_info, load_dataset
    from ..metrics import evaluate
    from ..pipeline import model_from_checkpoint
    from ..utils import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    model, attack, meta = model_from_checkpoint(args.model, args.arch, args.dataset)
    dataset = meta.get("dataset") or args.dataset
    if args.attack is not None and (attack is None or attack.name != args.attack):
        if ATTACKS.get(args.attack).learned:
            raise NgfkitError(f"attack {args.attack!r} has a learned trigger that {args.model} does not hold; "
                              f"evaluate a model trained with it (its checkpoint carries the trigger) instead")
        info = dataset_info(dataset)
        attack = create_attack(args.attack, info.image_shape, info.num_classes, seed=args.seed)
    test = load_dataset(dataset, "test", root=args.data_root, download=args.download)
    metrics = evaluate(model.to(device), test, attack, device=device)
    print(metrics_table([(Path(args.model).stem, metrics)]))
    return {"model": args.model, "dataset": dataset, "arch": meta.get("arch") or args.arch,
            "attack": attack.name if attack else None, **metrics, "seed": args.seed, **provenance(start)}


def sharpness_options(parser: argparse.ArgumentParser) -> None:
    options.checkpoint_options(parser)
    group = parser.add_argument_group("measurement")
    group.add_argument("--samples", type=int, default=200, help="clean images the loss is averaged over (default 200)")
    group.add_argument("--params", default="all",
                       help="all, last (the classifier, the layer NGF trains) or comma-separated parameter/layer names "
                       "(default: all)")
    group.add_argument("--top-k", type=int, default=1, help="how many of the largest eigenvalues (default 1)")
    group.add_argument("--probes", type=int, default=30, help="Hutch++ probes for the trace; 0 skips it (default 30)")
    group.add_argument("--tol", type=float, default=1e-2, help="relative tolerance of the eigenvalues (default 1e-2)")
    group.add_argument("--split", choices=("clean", "test"), default="clean",
                       help="the defender's clean split (default) or the test set")
    options.clean_fraction_option(group, from_checkpoint=True)
    options.common_options(parser)


def cmd_sharpness(args: argparse.Namespace) -> dict:
    from ..curvature.sharpness import measure
    from ..pipeline import model_from_checkpoint
    from ..utils import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    model, _, meta = model_from_checkpoint(args.model, args.arch, args.dataset)
    dataset = meta.get("dataset") or args.dataset
    splits, fraction = _checkpoint_splits(meta, dataset, args)
    data = splits.clean if args.split == "clean" else splits.test
    if args.samples < 1:
        raise NgfkitError(f"--samples must be at least 1, got {args.samples}")
    params = args.params if args.params in ("all", "last") else comma_separated(args.params)
    result = measure(model, data, params=params, samples=min(args.samples, len(data)), k=args.top_k,
                     probes=args.probes, tol=args.tol, seed=args.seed, device=device)
    print(f"lambda_max {result['lambda_max']:.4g}  top-{args.top_k} {[round(v, 4) for v in result['top_k']]}"
          + (f"  trace {result['trace']:.4g} ± {result['trace_std']:.2g}" if result["trace"] is not None else "")
          + f"  ({result['samples']} {args.split} images, {result['num_params']} parameters, "
            f"{result['seconds']:.1f} s)")
    return {"model": args.model, "dataset": dataset, "arch": meta.get("arch") or args.arch, "split": args.split,
            "clean_fraction": fraction, **result, **provenance(start)}


def list_options(parser: argparse.ArgumentParser) -> None:
    """``list`` takes only ``--json``."""
    group = parser.add_argument_group("output")
    group.add_argument("--json", metavar="PATH", default=None,
                       help="also write the listing as JSON ('-': to stdout; default: none)")


def cmd_list(args: argparse.Namespace) -> dict:
    from ..attacks import ATTACKS
    from ..data import DATASETS
    from ..defences import DEFENCES
    from ..models import MODELS

    # "defenses": the key of the JSON listing, which scripts read
    listing = {"datasets": DATASETS.names(), "architectures": MODELS.names(), "attacks": ATTACKS.names(),
               "defenses": DEFENCES.names()}
    for key, names in listing.items():
        print(f"{key:>13}: {', '.join(names)}")
    return listing


def grid_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the notebook to run; it needs a cell tagged 'parameters'")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                        help="a parameter and its values, e.g. attack=badnets,blend (repeatable; the grid is every "
                             "combination, the last --param varying fastest; default: the notebook's own values)")
    parser.add_argument("--out", dest="out_dir", required=True, help="folder for the output notebooks, one per grid cell")
    parser.add_argument("--collect", metavar="PATH", default=None,
                        help="then write each cell's parameters and glued values to this JSON and print a table "
                        "(default: none)")
    parser.add_argument("--print-commands", action="store_true",
                        help="print one papermill command per pending cell instead of running them")
    parser.add_argument("--only", type=int, default=None, metavar="I",
                        help="run only cell I (0-based), e.g. $SLURM_ARRAY_TASK_ID in a job array (default: every cell)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel to run the notebook with (default python3)")
    parser.add_argument("--force", action="store_true", help="run finished cells again too")
    options.output_options(parser, json_help="also write the run's report (every cell's status) as JSON",
                           quiet_help="no progress bar")


def cmd_grid(args: argparse.Namespace) -> dict:
    from ..book.grid import collect, commands, plan, results_table, run_grid
    from ..utils import write_json

    if args.print_commands:
        lines = commands(args.notebook, args.param, args.out_dir, only=args.only, kernel=args.kernel)
        for line in lines:
            print(line)
        return {"commands": lines}
    report = run_grid(args.notebook, args.param, args.out_dir, only=args.only, kernel=args.kernel,
                      force=args.force, progress=not args.quiet)
    print(f"{len(report['cells'])} cell(s): {report['ran']} ran, {report['skipped']} already done, "
          f"{report['failed']} failed; outputs in {args.out_dir}")
    for cell in report["cells"]:
        if cell["status"] == "failed":
            where = f"see {cell['output']}" if Path(cell["output"]).is_file() else "no output was written"
            print(f"  cell {cell['index']} failed ({cell['error']}); {where}")
    if args.collect:
        rows = collect(args.out_dir, plan(args.notebook, args.param, args.out_dir),  # this grid's cells only
                       notebook=args.notebook)
        write_json(args.collect, rows)
        print(results_table(rows))
        print(f"wrote {args.collect}")
    if report["failed"]:
        raise NgfkitError(f"{report['failed']} of {len(report['cells'])} cell(s) failed; run the same command "
                          f"again to retry them (finished cells are skipped)")
    return report
