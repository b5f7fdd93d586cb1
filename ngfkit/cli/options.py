"""The option groups the commands share, each declared once, and the readers that turn them
into library objects.

A command takes a group by calling its ``*_options(parser)`` function (which adds one titled
argument group to the command's ``--help``); the group's reader (``experiment``,
``train_config``, ``defence_options``) reads the parsed values back. Nothing here imports torch,
so ``ngfkit --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from ..errors import NgfkitError
from ..registry import comma_separated

#: backdoor training when the command line does not say otherwise (``--epochs``, ``--train-lr``)
DEFAULT_TRAIN = {"epochs": 1, "lr": 0.05, "batch_size": 128}


def both_spellings(flag: str) -> tuple[str, str]:
    """``"--defence-param"`` -> ``("--defense-param", "--defence-param")``: the command line takes
    the American spelling too (the one the README and shipped scripts use); the code says defence."""
    return flag.replace("defence", "defense"), flag


# --- groups every running command takes -----------------------------------------------------


def data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data-root", default=None, help="folder holding the dataset (default: $NGFKIT_DATA, "
                       "then the system location, e.g. Debian's /usr/share/datasets/fashion-mnist)")
    group.add_argument("--download", action="store_true", help="allow torchvision to download the dataset")


def run_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """``--device`` and ``--seed``; without ``seed`` (benchmarks that run a set of seeds) ``--seed``
    is still parsed, so that it can be refused in one line, but left out of ``--help``."""
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto",
                       help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N (default: auto)")
    if seed:
        group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    else:
        group.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)


def output_options(parser: argparse.ArgumentParser, *, json_help: str = "also write the full result as JSON",
                   quiet_help: str = "no progress bars", json: bool = True) -> None:
    group = parser.add_argument_group("output")
    if json:
        group.add_argument("--json", metavar="PATH", default=None, help=f"{json_help} ('-': to stdout, the "
                           f"tables then go to stderr; default: none)")
    group.add_argument("--quiet", action="store_true", help=quiet_help)


def common_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """Data, device and seed, and output: what every command that loads data takes."""
    data_options(parser)
    run_options(parser, seed=seed)
    output_options(parser)


# --- what model a command trains or reads -----------------------------------------------------


def model_options(parser: argparse.ArgumentParser) -> None:
    """The dataset and architecture of the model(s) a command trains."""
    group = parser.add_argument_group("model")
    group.add_argument("--dataset", default="fashion-mnist", help="dataset name (see `ngfkit list`; "
                       "default: fashion-mnist)")
    group.add_argument("--arch", default=None, help="architecture name (see `ngfkit list`; default: the dataset's)")


def checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """A saved model; its sidecar says its architecture and dataset."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help="a .safetensors checkpoint")
    group.add_argument("--arch", default=None, help="needed only for checkpoints without an ngfkit sidecar "
                       "(default: the sidecar's)")
    group.add_argument("--dataset", default=None, help="needed only for checkpoints without an ngfkit sidecar "
                       "(default: the sidecar's)")


def clean_fraction_option(group, *, from_checkpoint: bool = False) -> None:
    if from_checkpoint:
        group.add_argument("--clean-fraction", type=float, default=None,
                           help="share of the training set used as clean data (default: the checkpoint's, else 0.01)")
    else:
        group.add_argument("--clean-fraction", type=float, default=0.01,
                           help="share of the training set held out as the defender's clean data (default 0.01)")


def poison_rate_option(group, *, whose: str = "the training set") -> None:
    group.add_argument("--poison-rate", type=float, default=None,
                       help=f"share of {whose} poisoned, e.g. 0.01 where FST finds that tuning fails "
                            "(default: each attack's own, 0.1; 0.05 for sig and clb)")


def training_options(parser: argparse.ArgumentParser, *, whose: str = "the backdoored model") -> None:
    """How the model(s) are trained (``whose`` says which in the help), and the defender's share."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=None,
                       help=f"training epochs of {whose} (default: {DEFAULT_TRAIN['epochs']})")
    group.add_argument("--train-lr", type=float, default=None,
                       help=f"training learning rate of {whose} (default {DEFAULT_TRAIN['lr']})")
    clean_fraction_option(group)


def train_config(args: argparse.Namespace):
    """The :class:`~ngfkit.train.TrainConfig` of :func:`training_options`."""
    from ..train import TrainConfig

    train = dict(DEFAULT_TRAIN)
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.train_lr is not None:
        train["lr"] = args.train_lr
    return TrainConfig(**train)


# --- attack and defence ---------------------------------------------------------------------


def attack_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("attack")
    group.add_argument("--attack", default="badnets", help="attack name (see `ngfkit list`; default: badnets)")
    group.add_argument("--attack-param", action="append", default=[], metavar="KEY=VALUE",
                       help="a trigger parameter of the attack, e.g. alpha=0.3 (repeatable; see the attack's docs; "
                       "default: the attack's own values)")
    poison_rate_option(group)
    group.add_argument("--target", type=int, default=0, help="target class (default: 0)")
    group.add_argument("--all-to-all", action="store_true", help="label y -> y+1 instead of all -> target")


def experiment(args: argparse.Namespace):
    """The :class:`~ngfkit.pipeline.Experiment` of :func:`model_options`, :func:`attack_options`,
    :func:`training_options` and ``--seed``."""
    from ..pipeline import Experiment

    return Experiment(dataset=args.dataset, arch=args.arch, attack=args.attack,
                      attack_params=key_values(args.attack_param), target=args.target,
                      poison_rate=args.poison_rate, mode="all-to-all" if args.all_to_all else None,
                      clean_fraction=args.clean_fraction, seed=args.seed, train=train_config(args))


#: the NGF options with a flag of their own (dest = the defence's keyword); the rest go through --defence-param
_NGF_FLAGS = ("acc_budget", "lr", "steps", "body", "fisher", "reg_strength")


def defence_options(parser: argparse.ArgumentParser, default: str = "ngf") -> None:
    """One defence and its options (those of NGF have flags of their own)."""
    group = parser.add_argument_group("defence")
    group.add_argument(*both_spellings("--defence"), dest="defence", default=default,
                       help=f"defence name (see `ngfkit list`; default: {default})")
    group.add_argument("--acc-budget", type=float, default=None,
                       help="NGF: most clean-accuracy points (cross-fitted on the clean set) the chosen strength may "
                       "cost (default: the defence's)")
    group.add_argument("--lr", type=float, default=None, help="NGF: fixed learning rate instead of choosing one "
                       "(default: chosen from clean data)")
    group.add_argument("--steps", type=int, default=None, help="NGF: optimiser steps (default: the defence's)")
    group.add_argument("--body", choices=("frozen", "sgd"), default=None,
                       help="NGF: frozen (strictly one layer, fast) or sgd (the reference code's variant) "
                       "(default: the defence's)")
    group.add_argument("--fisher", choices=("empirical", "sampled"), default=None,
                       help="NGF: Fisher of the clean labels (empirical) or of labels drawn from the model "
                       "(sampled) (default: the defence's)")
    group.add_argument("--reg-strength", type=float, default=None,
                       help="NGF: Fisher regulariser strength η (default: the defence's)")
    group.add_argument("--layers", default=None, help="NGF: comma-separated Linear layer names (default: the classifier)")
    group.add_argument(*both_spellings("--defence-param"), dest="defence_param", action="append", default=[],
                       metavar="KEY=VALUE", help="any option of the defence, e.g. iterations=2000 for anp "
                       "(repeatable; see the defence's docs; default: its own values)")


def checked_defence_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`defence_kwargs`, checked by building the defence (its config validates every option), so
    that a bad one fails before a model is loaded or trained."""
    from ..defences import DEFENCES

    kwargs = defence_kwargs(args)
    DEFENCES.get(args.defence)(**kwargs)
    return kwargs


def defence_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of the defence of :func:`defence_options` (and ``--seed``)."""
    options = {name: getattr(args, name) for name in _NGF_FLAGS if getattr(args, name) is not None}
    if args.layers:
        options["layers"] = tuple(comma_separated(args.layers))
    options.update(key_values(args.defence_param, "--defense-param"))
    options["seed"] = args.seed
    return options


# --- option values --------------------------------------------------------------------------


def key_values(pairs: Sequence[str], flag: str = "--attack-param") -> dict[str, Any]:
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


def named_key_values(pairs: Sequence[str], flag: str = "--defense-param") -> dict[str, dict[str, Any]]:
    """``["anp.iterations=2000"]`` -> ``{"anp": {"iterations": 2000}}``."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or "=" not in rest:
            raise NgfkitError(f"{flag} takes NAME.KEY=VALUE (e.g. anp.iterations=2000), got {pair!r}")
        options.setdefault(name.strip(), {}).update(key_values([rest], flag))
    return options


def int_list(text: str, option: str) -> list[int]:
    """``"3,10,30"`` -> ``[3, 10, 30]``; anything else is one error naming ``option``."""
    try:
        return [int(e) for e in comma_separated(text)]
    except ValueError:
        raise NgfkitError(f"{option} takes whole numbers separated by commas, got {text!r}") from None
