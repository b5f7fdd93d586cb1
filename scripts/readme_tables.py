"""Regenerate the README's result tables from the committed ``results/*.json`` (or, with
``--check``, fail when the README disagrees with them).

A generated table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->`` in README.md;
NAME is a key of :data:`TABLES`, whose function renders it with the same code the CLI and the
book use. Prose around the tables is not touched: its numbers are the author's to keep in step.
Usage: python scripts/readme_tables.py [--check]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

from ngfkit.bench.attacks import attack_table
from ngfkit.bench.defences import defence_table, reactivation_table, training_length_table
from ngfkit.bench.sharpness import sharpness_table
from ngfkit.bench.stability import stability_table
from ngfkit.studies.reports import complete_attacks
from ngfkit.viz.tables import demo_table, reported_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# the body never holds another marker, so an empty block cannot swallow the blocks after it
BLOCK = re.compile(r"(<!-- table: (?P<name>[a-z0-9-]+) -->\n)(?P<body>(?:(?!<!-- ).)*?)\n?(<!-- /table -->)", re.S)


def report(name: str) -> dict:
    return json.loads((ROOT / "results" / name).read_text())


def first_table(markdown: str) -> str:
    """The first markdown table of ``markdown`` (its lines starting with ``|``)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


LENGTHS = ("defences-fashion-mnist-h200.json", "defences-fashion-mnist-10epochs-h100.json",
           "defences-fashion-mnist-30epochs-h100.json", "defences-fashion-mnist-100epochs-h100.json")

#: table name -> its markdown, from results/
TABLES: dict[str, Callable[[], str]] = {
    "attacks": lambda: attack_table(report("attacks-fashion-mnist-seed0.json")),
    # the attacks every defence finished, as the benchmarks chapter shows it
    "defences-gpu": lambda: first_table(defence_table(complete_attacks(report("defences-fashion-mnist-h200.json")))),
    "defences-cpu": lambda: first_table(defence_table(report("defences-fashion-mnist.json"))),
    "training-length": lambda: training_length_table([report(n) for n in LENGTHS]),
    "sharpness": lambda: sharpness_table(report("sharpness-fashion-mnist.json")),
    "stability": lambda: stability_table(report("stability-fashion-mnist.json")),
    "demo": lambda: demo_table(report("demo-fashion-mnist.json")),
    "protocol": lambda: defence_table(report("protocol-fashion-mnist-1epoch.json"), "authors"),
    "reactivation": lambda: reactivation_table(report("reactivation-fashion-mnist.json"), "authors"),
    "protocol-auto": lambda: defence_table(report("protocol-fashion-mnist-auto.json"), "authors"),
    "ablation-distill": lambda: defence_table(report("ablation-shift-nodistill.json"), "authors"),
    "protocol-long": lambda: defence_table(report("protocol-fashion-mnist-30epochs.json"), "authors"),
    "everyone": lambda: first_table(defence_table(report("reactivation-fashion-mnist.json"), "authors")),
    "low-poison": lambda: defence_table(report("low-poison-fashion-mnist.json"), "authors"),
    "successors": lambda: defence_table(report("successors-fashion-mnist-1epoch.json"), "authors"),
    "reported": lambda: reported_table(report("reported-cifar10.json"), report("successors-fashion-mnist-1epoch.json"),
                                       methods=("fip", "nft")),
}


def regenerate(text: str) -> tuple[str, list[str], list[str]]:
    """(the README with every table block regenerated, the names that changed, unknown names)."""
    changed, unknown = [], []

    def render(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            unknown.append(name)
            return match[0]
        body = TABLES[name]().strip()
        if body != match["body"].strip():
            changed.append(name)
        return match[1] + body + "\n" + match[4]

    return BLOCK.sub(render, text), changed, unknown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a table differs; write nothing")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new, changed, unknown = regenerate(text)
    if unknown:
        print(f"README.md: unknown table name(s) {', '.join(unknown)}; known: {', '.join(TABLES)}")
        return 1
    found = len(BLOCK.findall(text))
    if args.check:
        if changed:
            print(f"README.md: table(s) {', '.join(changed)} disagree with results/*.json; "
                  "run python scripts/readme_tables.py and review the diff")
            return 1
        print(f"README.md: {found} result table(s) agree with results/*.json")
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
    print(f"README.md: {found} table(s), {len(changed)} rewritten ({', '.join(changed) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
