"""Command-line interface: ``ngfkit demo | attack | purify | evaluate``.

Thin by design: each command parses its options, calls :mod:`ngfkit.pipeline`, prints a table
and (with ``--json PATH``) writes the full result. Problems the user can fix end with one
``ngfkit: error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import NgfkitError

DEFAULT_TRAIN = {"epochs": 1, "lr": 0.05, "batch_size": 128}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--data-root", default=None, help="folder holding the dataset (default: $NGFKIT_DATA, "
                        "then the system location, e.g. Debian's /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--download", action="store_true", help="allow torchvision to download the dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the full result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _attack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attack", default="badnets", help="attack name (see `ngfkit list`)")
    parser.add_argument("--attack-param", action="append", default=[], metavar="KEY=VALUE",
                        help="a trigger parameter of the attack, e.g. alpha=0.3 (repeatable; see the attack's docs)")
    parser.add_argument("--poison-rate", type=float, default=None,
                        help="share of the training set poisoned (default: the attack's, 0.1; 0.05 for sig and clb)")
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--all-to-all", action="store_true", help="label y -> y+1 instead of all -> target")
    parser.add_argument("--epochs", type=int, default=None, help="backdoor training epochs (default: 1)")
    parser.add_argument("--train-lr", type=float, default=None, help="backdoor training learning rate (default 0.05)")
    parser.add_argument("--clean-fraction", type=float, default=0.01,
                        help="share of the training set held out as the defender's clean data (default 0.01)")


def _defence_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--defense", "--defence", dest="defense", default="ngf", help="defence name (see `ngfkit list`)")
    parser.add_argument("--acc-budget", type=float, default=None,
                        help="NGF: most clean-accuracy points (cross-fitted on the clean set) the chosen strength may cost")
    parser.add_argument("--lr", type=float, default=None, help="NGF: fixed learning rate instead of choosing one")
    parser.add_argument("--steps", type=int, default=None, help="NGF: optimiser steps")
    parser.add_argument("--body", choices=("frozen", "sgd"), default=None,
                        help="NGF: frozen (strictly one layer, fast) or sgd (the reference code's variant)")
    parser.add_argument("--fisher", choices=("empirical", "sampled"), default=None)
    parser.add_argument("--reg-strength", type=float, default=None, help="NGF: Fisher regulariser strength η")
    parser.add_argument("--layers", default=None, help="NGF: comma-separated Linear layer names (default: the classifier)")
    parser.add_argument("--defense-param", "--defence-param", dest="defense_param", action="append", default=[],
                        metavar="KEY=VALUE", help="any option of the defence, e.g. iterations=2000 for anp "
                        "(repeatable; see the defence's docs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ngfkit", description="Backdoor removal by Natural Gradient Fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="backdoor a model on the embedded data, purify it with NGF, show before/after")
    demo.add_argument("--dataset", default="fashion-mnist")
    demo.add_argument("--arch", default=None)
    demo.add_argument("--no-cache", action="store_true", help="train again even if the model is cached")
    _attack_options(demo)
    _defence_options(demo)
    _common(demo)

    attack = sub.add_parser("attack", help="train a backdoored model and save it as safetensors")
    attack.add_argument("--dataset", default="fashion-mnist")
    attack.add_argument("--arch", default=None)
    attack.add_argument("--out", required=True, help="where to write the .safetensors (a .json sidecar goes beside it)")
    _attack_options(attack)
    _common(attack)

    purify = sub.add_parser("purify", help="purify a saved model with a defence")
    purify.add_argument("--model", required=True, help="a .safetensors checkpoint")
    purify.add_argument("--arch", default=None, help="needed only for checkpoints without an ngfkit sidecar")
    purify.add_argument("--dataset", default=None, help="needed only for checkpoints without an ngfkit sidecar")
    purify.add_argument("--clean-fraction", type=float, default=None,
                        help="share of the training set used as clean data (default: the checkpoint's, else 0.01)")
    purify.add_argument("--out", required=True, help="where to write the purified .safetensors")
    _defence_options(purify)
    _common(purify)

    evaluate = sub.add_parser("evaluate", help="clean accuracy, ASR and RA of a saved model")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--attack", default=None, help="attack to test (default: the one the checkpoint records)")
    evaluate.add_argument("--arch", default=None)
    evaluate.add_argument("--dataset", default=None)
    _common(evaluate)

    sub.add_parser("list", help="registered datasets, architectures, attacks and defences")

    sharp = sub.add_parser("sharpness", help="top Hessian eigenvalue(s) and trace of a saved model on clean data")
    sharp.add_argument("--model", required=True, help="a .safetensors checkpoint")
    sharp.add_argument("--arch", default=None, help="needed only for checkpoints without an ngfkit sidecar")
    sharp.add_argument("--dataset", default=None, help="needed only for checkpoints without an ngfkit sidecar")
    sharp.add_argument("--samples", type=int, default=200, help="clean images the loss is averaged over (default 200)")
    sharp.add_argument("--params", default="all",
                       help="all, last (the classifier, the layer NGF trains) or comma-separated parameter/layer names")
    sharp.add_argument("--top-k", type=int, default=1, help="how many of the largest eigenvalues (default 1)")
    sharp.add_argument("--probes", type=int, default=30, help="Hutch++ probes for the trace; 0 skips it (default 30)")
    sharp.add_argument("--tol", type=float, default=1e-2, help="relative tolerance of the eigenvalues (default 1e-2)")
    sharp.add_argument("--split", choices=("clean", "test"), default="clean",
                       help="the defender's clean split (default) or the test set")
    sharp.add_argument("--clean-fraction", type=float, default=None,
                       help="share of the training set used as clean data (default: the checkpoint's, else 0.01)")
    _common(sharp)

    bench = sub.add_parser("bench", help="benchmarks (cached and resumable; JSON out)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    attacks = bench_sub.add_parser("attacks", help="one backdoored model per attack vs a clean model: ACC, ASR, RA, time")
    attacks.add_argument("--dataset", default="fashion-mnist")
    attacks.add_argument("--arch", default=None)
    attacks.add_argument("--attacks", default="all", help="'all' (the paper's 15) or comma-separated attack names")
    attacks.add_argument("--epochs", type=int, default=None, help="training epochs of every model (default: 1)")
    attacks.add_argument("--train-lr", type=float, default=None, help="training learning rate (default 0.05)")
    attacks.add_argument("--clean-fraction", type=float, default=0.01,
                         help="share of the training set held out as the defender's clean data (default 0.01)")
    _common(attacks)

    defences = bench_sub.add_parser(
        "defences", aliases=["defenses"],
        help="every defence on every backdoored model at an equal clean-accuracy budget: ACC, ASR, RA, DER, time, memory")
    defences.add_argument("--dataset", default="fashion-mnist")
    defences.add_argument("--arch", default=None)
    defences.add_argument("--attacks", default="all", help="'all' (the paper's 15) or comma-separated attack names")
    defences.add_argument("--defenses", "--defences", dest="defenses", default="all",
                          help="'all' (NGF, the baselines, the NGF ablations) or comma-separated defence names")
    defences.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (one backdoored model each; default 1)")
    defences.add_argument("--acc-budget", type=float, default=3.0,
                          help="most held-out clean-accuracy points a defence's chosen strength may cost (default 3)")
    defences.add_argument("--holdout", type=float, default=0.2,
                          help="share of the clean set held out to choose each defence's strength (default 0.2)")
    defences.add_argument("--settings", default="selected,authors",
                          help="selected (strength chosen by the clean-data rule), authors (defaults), or both")
    defences.add_argument("--defense-param", "--defence-param", dest="defense_param", action="append", default=[],
                          metavar="NAME.KEY=VALUE", help="an option of one defence, e.g. anp.iterations=2000 (repeatable); "
                          "a list for its strength knob is the grid to choose from, e.g. ft.steps=[50,100]")
    defences.add_argument("--epochs", type=int, default=None, help="training epochs of the backdoored models (default: 1)")
    defences.add_argument("--train-lr", type=float, default=None, help="their training learning rate (default 0.05)")
    defences.add_argument("--clean-fraction", type=float, default=0.01,
                          help="share of the training set held out as the defender's clean data (default 0.01)")
    defences.add_argument("--figure", metavar="PATH", default=None,
                          help="also write the ASR vs ACC-drop scatter as a self-contained HTML file")
    _common(defences)

    sharp_bench = bench_sub.add_parser(
        "sharpness", help="λmax and trace of benign vs backdoored models over training lengths and seeds, and after NGF")
    sharp_bench.add_argument("--dataset", default="fashion-mnist")
    sharp_bench.add_argument("--arch", default=None)
    sharp_bench.add_argument("--kinds", default="clean,badnets", help="'clean' and/or attack names (default clean,badnets)")
    sharp_bench.add_argument("--epochs", default="3,10,30", help="training lengths, comma-separated (default 3,10,30)")
    sharp_bench.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    sharp_bench.add_argument("--seed-list", default=None, metavar="S,S,...",
                             help="run these seeds instead of 0..N-1 (one job of a job array, say; "
                             "join the jobs' reports with `ngfkit bench merge`)")
    sharp_bench.add_argument("--train-lr", type=float, default=0.1, help="training learning rate (default 0.1, the paper's)")
    sharp_bench.add_argument("--samples", type=int, default=200, help="clean images per measurement (default 200)")
    sharp_bench.add_argument("--probes", type=int, default=30, help="Hutch++ probes for the trace (default 30)")
    sharp_bench.add_argument("--no-purify", action="store_true", help="skip the measurement after NGF")
    sharp_bench.add_argument("--clean-fraction", type=float, default=0.01)
    _common(sharp_bench)

    merge = bench_sub.add_parser("merge", help="merge bench defences or bench sharpness reports of one benchmark "
                                 "(e.g. one per job)")
    merge.add_argument("reports", nargs="+", help="bench defences JSON files, or bench sharpness JSON files")
    merge.add_argument("--figure", metavar="PATH", default=None,
                       help="also write a figure as HTML: the ASR vs ACC-drop scatter (defences) or "
                       "λmax and trace against training length (sharpness)")
    merge.add_argument("--json", metavar="PATH", default=None, help="write the merged report here")
    merge.add_argument("--quiet", action="store_true")
    merge.add_argument("--device", default="cpu", help=argparse.SUPPRESS)

    grid = sub.add_parser("grid", help="run a notebook over a parameter grid with papermill "
                          "(one output notebook per cell, resumable)")
    grid.add_argument("notebook", help="the notebook to run; it needs a cell tagged 'parameters'")
    grid.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                      help="a parameter and its values, e.g. attack=badnets,blend (repeatable; the grid is every "
                           "combination, the last --param varying fastest)")
    grid.add_argument("--out", required=True, help="folder for the output notebooks, one per grid cell")
    grid.add_argument("--collect", metavar="PATH", default=None,
                      help="then write each cell's parameters and glued values to this JSON and print a table")
    grid.add_argument("--print-commands", action="store_true",
                      help="print one papermill command per pending cell instead of running them")
    grid.add_argument("--only", type=int, default=None, metavar="I",
                      help="run only cell I (0-based), e.g. $SLURM_ARRAY_TASK_ID in a job array")
    grid.add_argument("--kernel", default="python3", help="Jupyter kernel to run the notebook with (default python3)")
    grid.add_argument("--force", action="store_true", help="run finished cells again too")
    grid.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _attack_params(pairs: Sequence[str], flag: str = "--attack-param") -> dict[str, Any]:
    """``["alpha=0.3", "bits=4"]`` -> ``{"alpha": 0.3, "bits": 4}`` (values read as JSON, else text)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise NgfkitError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def _train_config(args: argparse.Namespace):
    from ..train import TrainConfig

    train = dict(DEFAULT_TRAIN)
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.train_lr is not None:
        train["lr"] = args.train_lr
    return TrainConfig(**train)


def _defence_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    names = {"acc_budget": "acc_budget", "lr": "lr", "steps": "steps", "body": "body", "fisher": "fisher",
             "reg_strength": "reg_strength"}
    options = {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}
    if getattr(args, "layers", None):
        options["layers"] = tuple(_comma_list(args.layers))
    options.update(_attack_params(getattr(args, "defense_param", []), "--defense-param"))
    options["seed"] = args.seed
    return options


def _check_output(path: str | None, suffix: str) -> None:
    if path is None:
        return
    target = Path(path)
    if target.suffix != suffix:
        raise NgfkitError(f"output {path} should end in {suffix}")
    if target.exists() and target.is_dir():
        raise NgfkitError(f"output {path} is a folder; give a file name ending in {suffix}")


def _experiment(args: argparse.Namespace):
    from ..pipeline import Experiment

    return Experiment(dataset=args.dataset, arch=args.arch, attack=args.attack,
                      attack_params=_attack_params(args.attack_param), target=args.target,
                      poison_rate=args.poison_rate, mode="all-to-all" if args.all_to_all else None,
                      clean_fraction=args.clean_fraction, seed=args.seed, train=_train_config(args))


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.2f}"


def _table(rows: Sequence[tuple[str, dict]]) -> str:
    lines = ["              C-ACC %   ASR %    RA %"]
    for name, m in rows:
        lines.append(f"  {name:<10} {_pct(m.get('acc'))}  {_pct(m.get('asr'))}  {_pct(m.get('ra'))}")
    return "\n".join(lines)


def _print_choice(history: dict) -> None:
    """What the defence chose from clean data, and whether its accuracy budget could be kept."""
    if "selection" in history:
        print(f"  chosen from clean data: {history['setting']}; purify took {history['seconds']:.1f} s")
    else:
        print(f"  setting {history['setting']}; purify took {history['seconds']:.1f} s")
    if history.get("selection", {}).get("budget_met") is False:
        print("  note: no learning rate kept the cross-fitted clean accuracy within --acc-budget; "
              "the weakest was used (raise --acc-budget or give more clean data)")


def _provenance(args: argparse.Namespace, start: float) -> dict[str, Any]:
    from ..utils import versions

    return {"versions": versions(), "argv": sys.argv[1:], "wall_seconds": time.perf_counter() - start}


def _json_safe(history: dict) -> dict:
    """The defence history with anything JSON cannot hold turned into strings."""
    return json.loads(json.dumps(history, default=str))


def cmd_demo(args: argparse.Namespace) -> dict:
    from ..pipeline import load_or_train, load_splits, run_defence
    from ..utils import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    exp = _experiment(args)
    splits = load_splits(exp, args.data_root, args.download)
    trained = load_or_train(exp, splits, device=device, progress=not args.quiet, use_cache=not args.no_cache)
    print(f"{'loaded cached' if trained.cached else 'trained'} {exp.arch} backdoored with {exp.attack} "
          f"on {exp.dataset} ({len(splits.train)} training images, {len(splits.clean)} held out as clean data)")
    result = run_defence(trained.model, trained.attack, splits, args.defense, device=device,
                         progress=not args.quiet, before=trained.meta.get("metrics"),
                         test_predictions=trained.test_predictions, **_defence_kwargs(args))
    history = result["history"]
    print(_table([("before", result["before"]), (f"after {args.defense}", result["after"])]))
    _print_choice(history)
    total = time.perf_counter() - start
    return {"dataset": exp.dataset, "arch": exp.arch, "attack": exp.attack, "defense": args.defense,
            "before": result["before"], "after": result["after"], "der": result.get("der"),
            "seconds": {"train": trained.seconds, "purify": history["seconds"], "total": total},
            "seed": exp.seed, "cached_model": trained.cached, "experiment": exp.to_dict(),
            "defense_history": _json_safe(history), **_provenance(args, start)}


def cmd_attack(args: argparse.Namespace) -> dict:
    from ..checkpoint import save_checkpoint
    from ..pipeline import load_or_train, load_splits
    from ..utils import resolve_device

    _check_output(args.out, ".safetensors")
    start = time.perf_counter()
    device = resolve_device(args.device)
    exp = _experiment(args)
    splits = load_splits(exp, args.data_root, args.download)
    trained = load_or_train(exp, splits, device=device, progress=not args.quiet, use_cache=False)
    save_checkpoint(args.out, trained.model, trained.meta, trained.attack.trigger if trained.attack else None)
    print(f"wrote {args.out} (+ {Path(args.out).with_suffix('.json').name})")
    print(_table([("backdoored", trained.meta["metrics"])]))
    return {"dataset": exp.dataset, "arch": exp.arch, "attack": exp.attack, "model": args.out,
            "metrics": trained.meta["metrics"], "seconds": {"train": trained.seconds}, "seed": exp.seed,
            "experiment": exp.to_dict(), **_provenance(args, start)}


def _clean_and_test(meta: dict, dataset: str, args: argparse.Namespace, clean_fraction: float | None):
    from ..data import defender_split, load_dataset

    experiment = meta.get("experiment", {})
    fraction = clean_fraction or experiment.get("clean_fraction", 0.01)
    seed = experiment.get("seed", args.seed)
    train = load_dataset(dataset, "train", root=args.data_root, download=args.download)
    test = load_dataset(dataset, "test", root=args.data_root, download=args.download)
    _, clean_idx = defender_split(len(train), fraction, seed)
    return train.subset(clean_idx), test, fraction


def cmd_purify(args: argparse.Namespace) -> dict:
    from ..checkpoint import save_checkpoint
    from ..defences import purify
    from ..metrics import defence_effectiveness_rating, evaluate
    from ..pipeline import model_from_checkpoint
    from ..utils import resolve_device, versions

    _check_output(args.out, ".safetensors")
    start = time.perf_counter()
    device = resolve_device(args.device)
    model, attack, meta = model_from_checkpoint(args.model, args.arch, args.dataset)
    dataset = meta.get("dataset") or args.dataset
    clean, test, fraction = _clean_and_test(meta, dataset, args, args.clean_fraction)
    model = model.to(device)
    purified, history = purify(model, clean, args.defense, device=device, progress=not args.quiet,
                               **_defence_kwargs(args))
    before = evaluate(model, test, attack, device=device)
    after = evaluate(purified, test, attack, device=device)
    out_meta = {**meta, "arch": meta.get("arch") or args.arch, "dataset": dataset, "metrics": after,
                "purified_from": str(args.model), "defense": args.defense, "defense_config": history["config"],
                "clean_fraction": fraction, "seed": args.seed, "versions": versions()}
    save_checkpoint(args.out, purified, out_meta, attack.trigger if attack else None)
    print(_table([("before", before), (f"after {args.defense}", after)]))
    _print_choice(history)
    print(f"  wrote {args.out}")
    result = {"model": args.model, "out": args.out, "dataset": dataset, "arch": out_meta["arch"],
              "attack": attack.name if attack else None, "defense": args.defense, "before": before,
              "after": after, "seconds": {"purify": history["seconds"]}, "seed": args.seed,
              "defense_history": _json_safe(history), **_provenance(args, start)}
    if attack is not None:
        result["der"] = defence_effectiveness_rating(before, after)
    return result


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from ..attacks import create_attack
    from ..data import dataset_info, load_dataset
    from ..metrics import evaluate
    from ..pipeline import model_from_checkpoint
    from ..utils import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    model, attack, meta = model_from_checkpoint(args.model, args.arch, args.dataset)
    dataset = meta.get("dataset") or args.dataset
    if args.attack is not None and (attack is None or attack.name != args.attack):
        from ..attacks import ATTACKS

        if ATTACKS.get(args.attack).learned:
            raise NgfkitError(f"attack {args.attack!r} has a learned trigger that {args.model} does not hold; "
                              f"evaluate a model trained with it (its checkpoint carries the trigger) instead")
        info = dataset_info(dataset)
        attack = create_attack(args.attack, info.image_shape, info.num_classes, seed=args.seed)
    test = load_dataset(dataset, "test", root=args.data_root, download=args.download)
    metrics = evaluate(model.to(device), test, attack, device=device)
    print(_table([(Path(args.model).stem[:10], metrics)]))
    return {"model": args.model, "dataset": dataset, "arch": meta.get("arch") or args.arch,
            "attack": attack.name if attack else None, **metrics, "seed": args.seed,
            **_provenance(args, start)}


def cmd_sharpness(args: argparse.Namespace) -> dict:
    from ..pipeline import model_from_checkpoint
    from ..curvature.sharpness import measure
    from ..utils import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    model, _, meta = model_from_checkpoint(args.model, args.arch, args.dataset)
    dataset = meta.get("dataset") or args.dataset
    clean, test, fraction = _clean_and_test(meta, dataset, args, args.clean_fraction)
    data = clean if args.split == "clean" else test
    if args.samples < 1:
        raise NgfkitError(f"--samples must be at least 1, got {args.samples}")
    params = args.params if args.params in ("all", "last") else _comma_list(args.params)
    result = measure(model, data, params=params, samples=min(args.samples, len(data)), k=args.top_k,
                     probes=args.probes, tol=args.tol, seed=args.seed, device=device)
    print(f"lambda_max {result['lambda_max']:.4g}  top-{args.top_k} {[round(v, 4) for v in result['top_k']]}"
          + (f"  trace {result['trace']:.4g} ± {result['trace_std']:.2g}" if result["trace"] is not None else "")
          + f"  ({result['samples']} {args.split} images, {result['num_params']} parameters, "
            f"{result['seconds']:.1f} s)")
    return {"model": args.model, "dataset": dataset, "arch": meta.get("arch") or args.arch, "split": args.split,
            "clean_fraction": fraction, **result, **_provenance(args, start)}


def cmd_list(args: argparse.Namespace) -> dict:
    from ..attacks import ATTACKS
    from ..data import DATASETS
    from ..defences import DEFENCES
    from ..models import MODELS

    listing = {"datasets": DATASETS.names(), "architectures": MODELS.names(), "attacks": ATTACKS.names(),
               "defenses": DEFENCES.names()}
    for key, names in listing.items():
        print(f"{key:>13}: {', '.join(names)}")
    return listing


def _defence_params(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["anp.iterations=2000"]`` -> ``{"anp": {"iterations": 2000}}``."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or "=" not in rest:
            raise NgfkitError(f"--defense-param takes NAME.KEY=VALUE (e.g. anp.iterations=2000), got {pair!r}")
        options.setdefault(name.strip(), {}).update(_attack_params([rest]))
    return options


def _show_defence_report(report: dict, settings: Sequence[str], figure: str | None) -> None:
    """Print a bench defences report's tables, one per setting, and write its scatter if asked."""
    from ..bench.defences import defence_table

    for setting in settings:
        print(defence_table(report, setting))
        print()
    if figure:
        from ..viz.plots import defence_scatter, write_html

        write_html(defence_scatter(report), figure)
        print(f"wrote {figure}")


def _comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(e) for e in _comma_list(text)]
    except ValueError:
        raise NgfkitError(f"{option} takes whole numbers separated by commas, got {text!r}") from None


def _is_sharpness_report(path: str) -> bool:
    """Whether ``path`` looks like a ``bench sharpness`` report (rows) rather than a defences one;
    unreadable files are left to the merge, which names the problem."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "rows" in report and "cells" not in report


def cmd_bench(args: argparse.Namespace) -> dict:
    from ..bench.attacks import attack_table, bench_attacks
    from ..utils import resolve_device

    if args.bench_command == "merge":
        from ..bench.defences import SETTINGS, merge_reports

        if args.figure:
            _check_output(args.figure, ".html")
        if _is_sharpness_report(args.reports[0]):
            from ..bench.sharpness import merge_reports as merge_sharpness, sharpness_table
            from ..viz.plots import sharpness_vs_training_figure, write_html

            report = merge_sharpness(args.reports)
            if not args.quiet:
                print(sharpness_table(report))
            if args.figure:
                write_html(sharpness_vs_training_figure(report), args.figure)
                print(f"wrote {args.figure}")
            return report
        report = merge_reports(args.reports)
        _show_defence_report(report, [s for s in SETTINGS if any(c["setting"] == s for c in report["cells"])],
                             args.figure)
        return report
    if args.bench_command != "attacks" and args.seed != 0:
        # --seed comes with every command, but these run a set of seeds
        alternative = " or the seeds of --seed-list S,..." if args.bench_command == "sharpness" else ""
        raise NgfkitError(f"bench {args.bench_command} does not take --seed: it runs seeds 0..N-1 with --seeds N"
                          f"{alternative}")
    device = resolve_device(args.device)
    if args.bench_command == "sharpness":
        from ..bench.sharpness import bench_sharpness, sharpness_table

        epochs = _int_list(args.epochs, "--epochs")
        seeds = _int_list(args.seed_list, "--seed-list") if args.seed_list else args.seeds
        report = bench_sharpness(args.dataset, args.arch, _comma_list(args.kinds),
                                 epochs=epochs, seeds=seeds, train_lr=args.train_lr, samples=args.samples,
                                 probes=args.probes, purify_with=None if args.no_purify else "ngf",
                                 clean_fraction=args.clean_fraction, device=device, progress=not args.quiet,
                                 json_path=args.json, data_root=args.data_root, download=args.download)
        print(sharpness_table(report))
        return report
    if args.bench_command in ("defences", "defenses"):
        from ..bench.defences import bench_defences

        if args.figure:
            _check_output(args.figure, ".html")
        settings = _comma_list(args.settings)
        report = bench_defences(args.dataset, args.arch, args.attacks, args.defenses, seeds=args.seeds,
                                acc_budget=args.acc_budget, holdout=args.holdout, settings=settings,
                                train=_train_config(args), clean_fraction=args.clean_fraction, device=device,
                                progress=not args.quiet, json_path=args.json, data_root=args.data_root,
                                download=args.download, defence_options=_defence_params(args.defense_param))
        _show_defence_report(report, settings, args.figure)
        return report
    report = bench_attacks(args.dataset, args.arch, args.attacks, seed=args.seed, train=_train_config(args),
                           clean_fraction=args.clean_fraction, device=device, progress=not args.quiet,
                           json_path=args.json, data_root=args.data_root, download=args.download)
    print(attack_table(report))
    return report


def cmd_grid(args: argparse.Namespace) -> dict:
    from ..book.grid import collect, commands, plan, results_table, run_grid
    from ..utils import write_json

    if args.collect:
        _check_output(args.collect, ".json")
    if args.print_commands:
        lines = commands(args.notebook, args.param, args.out, only=args.only, kernel=args.kernel)
        for line in lines:
            print(line)
        return {"commands": lines}
    report = run_grid(args.notebook, args.param, args.out, only=args.only, kernel=args.kernel, force=args.force,
                      progress=not args.quiet)
    print(f"{len(report['cells'])} cell(s): {report['ran']} ran, {report['skipped']} already done, "
          f"{report['failed']} failed; outputs in {args.out}")
    for cell in report["cells"]:
        if cell["status"] == "failed":
            where = f"see {cell['output']}" if Path(cell["output"]).is_file() else "no output was written"
            print(f"  cell {cell['index']} failed ({cell['error']}); {where}")
    if args.collect:
        rows = collect(args.out, plan(args.notebook, args.param, args.out))  # this grid's cells only
        write_json(args.collect, rows)
        print(results_table(rows))
        print(f"wrote {args.collect}")
    if report["failed"]:
        raise NgfkitError(f"{report['failed']} of {len(report['cells'])} cell(s) failed; run the same command "
                          f"again to retry them (finished cells are skipped)")
    return report


COMMANDS = {"demo": cmd_demo, "attack": cmd_attack, "purify": cmd_purify, "evaluate": cmd_evaluate,
            "list": cmd_list, "bench": cmd_bench, "sharpness": cmd_sharpness, "grid": cmd_grid}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "json", None):
            _check_output(args.json, ".json")
        result = COMMANDS[args.command](args)
        if getattr(args, "json", None):
            from ..utils import write_json

            write_json(args.json, result)
            print(f"wrote {args.json}")
    except NgfkitError as error:
        print(f"ngfkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ngfkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
