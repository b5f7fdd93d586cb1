"""The CLI's structure: one command table behind every (sub)command, option groups shared, both
spellings of the defence options, and the one name-list parser of the registries."""
from __future__ import annotations

import pytest

from errors_helper import one_line_error
from ngfkit.cli import COMMANDS, build_parser, main
from ngfkit.registry import Registry, comma_separated


@pytest.fixture
def fruits() -> Registry:
    registry: Registry = Registry("fruit")
    for name in ("pear", "apple", "fig"):
        registry.register(name)(name)
    return registry


def test_parse_names_reads_all_comma_lists_and_sequences(fruits: Registry) -> None:
    assert fruits.parse_names("all") == ["apple", "fig", "pear"]
    assert fruits.parse_names(" all ") == ["apple", "fig", "pear"]
    # "all" with a default: its registered names in its order, once each
    assert fruits.parse_names("all", default=("pear", "kiwi", "apple", "pear")) == ["pear", "apple"]
    assert fruits.parse_names(" fig, pear,,") == ["fig", "pear"]
    assert fruits.parse_names(["fig", " apple "]) == ["fig", "apple"]
    assert fruits.parse_names(["all"]) == ["apple", "fig", "pear"]


def test_parse_names_refuses_unknown_and_empty_lists_in_one_line(fruits: Registry) -> None:
    message = one_line_error(fruits.parse_names, "fig,kiwi", option="--fruits")
    assert "unknown fruit 'kiwi' in --fruits" in message and "apple, fig, pear" in message and "'all'" in message
    assert "'all'" in one_line_error(fruits.parse_names, "all,fig")  # 'all' stands alone
    assert "no fruit given" in one_line_error(fruits.parse_names, " , ")


def test_comma_separated() -> None:
    assert comma_separated("a, b,,c ") == ["a", "b", "c"]
    assert comma_separated("") == []


def test_every_command_of_the_table_parses_to_its_entry() -> None:
    parser = build_parser()
    required = {"attack": ["--out", "m.safetensors"], "purify": ["--model", "m.safetensors", "--out", "p.safetensors"],
                "evaluate": ["--model", "m.safetensors"], "sharpness": ["--model", "m.safetensors"],
                "bench merge": ["a.json"], "grid": ["nb.ipynb", "--out", "out"], "cache pack": ["c.tar.gz"],
                "cache pull": ["file:///c.tar.gz", "--sha256", "0" * 64]}
    for name in COMMANDS:
        args = parser.parse_args([*name.split(), *required.get(name, [])])
        assert args.command_name == name
    assert parser.parse_args(["bench", "defenses"]).command_name == "bench defences"


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"], ["purify", "--help"], ["bench", "defences", "--help"]])
def test_help_works(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 0
    assert "usage: ngfkit" in capsys.readouterr().out


@pytest.mark.parametrize("spelling", ["defence", "defense"])
def test_both_spellings_of_the_defence_options(spelling: str) -> None:
    parser = build_parser()
    args = parser.parse_args(["purify", "--model", "m.safetensors", "--out", "p.safetensors", f"--{spelling}", "anp",
                              f"--{spelling}-param", "iterations=5"])
    assert args.defence == "anp" and args.defence_param == ["iterations=5"]
    args = parser.parse_args(["demo", f"--{spelling}", "ft"])
    assert args.defence == "ft"
    args = parser.parse_args(["bench", "defences", f"--{spelling}s", "ngf,ft", f"--{spelling}-param", "ft.steps=3"])
    assert args.defences == "ngf,ft" and args.defence_param == ["ft.steps=3"]


def test_shared_options_have_the_same_defaults_everywhere() -> None:
    parser = build_parser()
    for argv in (["demo"], ["attack", "--out", "m.safetensors"], ["bench", "attacks"], ["bench", "defences"]):
        args = parser.parse_args(argv)
        assert (args.epochs, args.train_lr, args.clean_fraction, args.dataset) == (None, None, 0.01, "fashion-mnist")
        seed = None if argv == ["bench", "defences"] else 0  # it runs --seeds N; its --seed is only refused
        assert (args.device, args.seed, args.json, args.quiet) == ("auto", seed, None, False)


def test_version(capsys: pytest.CaptureFixture) -> None:
    from ngfkit.version import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ngfkit {__version__}"


def test_list_json_to_stdout_and_to_a_file(capsys: pytest.CaptureFixture, tmp_path, monkeypatch) -> None:
    import json

    assert main(["list", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    listing = json.loads(out)  # stdout holds the JSON alone; the table went to stderr
    assert "ngf" in listing["defenses"] and "badnets" in listing["attacks"] and "attacks:" in err
    monkeypatch.chdir(tmp_path)
    assert main(["list", "--json", "l.json"]) == 0
    assert json.loads((tmp_path / "l.json").read_text()) == listing


def _actions(parser, prog: str = "ngfkit"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.prog.split()[-1] == name:  # aliases share the parser
                    yield from _actions(sub, sub.prog)
        else:
            yield prog, action


def test_every_option_says_its_default_and_bench_seed_is_hidden() -> None:
    import argparse

    for prog, action in _actions(build_parser()):
        if (not action.option_strings or action.required or action.help == argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction))):
            continue
        assert "default" in action.help, (prog, action.option_strings)
    hidden = {prog for prog, action in _actions(build_parser())
              if "--seed" in action.option_strings and action.help == argparse.SUPPRESS}
    assert {"ngfkit bench defences", "ngfkit bench sharpness"} <= hidden  # they run --seeds N
