"""Command-line interface: ``ngfkit demo | attack | purify | evaluate | sharpness | list | bench ... | grid``.

Thin by design, in three layers:

* :mod:`ngfkit.cli.options`: the option groups the commands share (model, training, attack,
  defence, data, run, output), each declared once, and their readers;
* :mod:`ngfkit.cli.commands` and :mod:`ngfkit.cli.bench`: one ``<name>_options(parser)`` and one
  ``cmd_<name>(args)`` per command, which calls :mod:`ngfkit.pipeline` or :mod:`ngfkit.bench`,
  prints a table and returns the full result;
* here: :data:`COMMANDS`, the one table of every command (``"bench attacks"`` is
  ``ngfkit bench attacks``), the parser built from it, and :func:`main`, which runs the chosen
  command and (with ``--json PATH``) writes its result.

Problems the user can fix end with one ``ngfkit: error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence

from ..errors import NgfkitError
from ..version import __version__
from . import bench, cache, commands
from .output import STDOUT, check_outputs


@dataclass(frozen=True)
class Command:
    """One command: what runs it, what declares its options, its line in ``--help``."""

    run: Callable[[argparse.Namespace], dict]
    options: Callable[[argparse.ArgumentParser], None]
    help: str
    aliases: tuple[str, ...] = ()


#: the command groups (the first word of a two-word command) and their line in ``--help``
GROUPS = {"bench": "benchmarks (cached and resumable; JSON out)",
          "cache": "the pretrained model and trigger cache for readers (safetensors, sha256-checked)"}

#: every command by its words on the command line, in the order of ``--help``
COMMANDS: dict[str, Command] = {
    "demo": Command(commands.cmd_demo, commands.demo_options,
                    "backdoor a model on the embedded data, purify it with NGF, show before/after"),
    "attack": Command(commands.cmd_attack, commands.attack_options,
                      "train a backdoored model and save it as safetensors"),
    "purify": Command(commands.cmd_purify, commands.purify_options, "purify a saved model with a defence"),
    "evaluate": Command(commands.cmd_evaluate, commands.evaluate_options, "clean accuracy, ASR and RA of a saved model"),
    "list": Command(commands.cmd_list, commands.list_options,
                    "registered datasets, architectures, attacks and defences"),
    "sharpness": Command(commands.cmd_sharpness, commands.sharpness_options,
                         "top Hessian eigenvalue(s) and trace of a saved model on clean data"),
    "bench attacks": Command(bench.cmd_attacks, bench.attacks_options,
                             "one backdoored model per attack vs a clean model: ACC, ASR, RA, time"),
    "bench defences": Command(bench.cmd_defences, bench.defences_options,
                              "every defence on every backdoored model at an equal clean-accuracy budget: "
                              "ACC, ASR, RA, DER, time, memory", aliases=("defenses",)),
    "bench sharpness": Command(bench.cmd_sharpness, bench.sharpness_options,
                               "λmax and trace of benign vs backdoored models over training lengths and seeds, "
                               "and after NGF"),
    "bench stability": Command(bench.cmd_stability, bench.stability_options,
                               "one backdoored model, one defence, re-run over defence seeds and thread counts: "
                               "does the result hold? (resumable; JSON out)"),
    "bench merge": Command(bench.cmd_merge, bench.merge_options,
                           "merge bench defences or bench sharpness reports of one benchmark (e.g. one per job)"),
    "grid": Command(commands.cmd_grid, commands.grid_options,
                    "run a notebook over a parameter grid with papermill (one output notebook per cell, resumable)"),
    "cache pack": Command(cache.cmd_pack, cache.pack_options,
                          "pack the cached models and learned triggers into an archive (prints its sha256)"),
    "cache pull": Command(cache.cmd_pull, cache.pull_options,
                          "download a cache archive, check its sha256 and unpack it into the cache"),
}


class Parser(argparse.ArgumentParser):
    """argparse with ngfkit's error format: one ``ngfkit: error: ...`` line naming the fix (the
    usage block argparse prints first would bury it), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ngfkit: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``ngfkit`` parser of :data:`COMMANDS`; a parsed command's key is ``args.command_name``."""
    parser = Parser(prog="ngfkit", description="Backdoor removal by Natural Gradient Fine-tuning.")
    parser.add_argument("--version", action="version", version=f"ngfkit {__version__}")
    top = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, Any] = {}  # group word -> its subparsers
    for name, command in COMMANDS.items():
        *group, word = name.split()
        if group:
            if group[0] not in groups:
                group_parser = top.add_parser(group[0], help=GROUPS[group[0]])
                groups[group[0]] = group_parser.add_subparsers(dest=f"{group[0]}_command", required=True)
            where = groups[group[0]]
        else:
            where = top
        sub = where.add_parser(word, help=command.help, aliases=list(command.aliases))
        command.options(sub)
        sub.set_defaults(command_name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 (one ``ngfkit: error:`` line) on a problem the user can fix.

    Every output path is checked before the command starts (:func:`~ngfkit.cli.output.check_outputs`).
    With ``--json -`` the JSON result is the only thing on stdout; what the command prints goes
    to stderr.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error already printed in one line
        return exit.code if isinstance(exit.code, int) else 2
    json_path = getattr(args, "json", None)
    to_stdout = json_path == STDOUT
    try:
        check_outputs(args)
        with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
            result = COMMANDS[args.command_name].run(args)
        if to_stdout:
            print(json.dumps(result, indent=2))
        elif json_path:
            from ..utils import write_json

            write_json(json_path, result)
            print(f"wrote {json_path}")
    except NgfkitError as error:
        print(f"ngfkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ngfkit: interrupted", file=sys.stderr)
        return 130
    return 0
