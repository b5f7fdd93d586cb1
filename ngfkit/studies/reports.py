"""Reading a shipped benchmark report (``ngfkit bench defences --json``) for the book: the part
of it on which every defence finished, so that every mean is over the same models."""
from __future__ import annotations

from collections import Counter

from ..bench.defences import summarise
from ..errors import NgfkitError


def complete_attacks(report: dict) -> dict:
    """``report`` restricted to the attacks on which every defence finished (those with the
    most cells), its ``"summary"`` recomputed over them; the input is left unchanged."""
    if not report.get("cells"):
        raise NgfkitError("the defence report has no cells; run ngfkit bench defences (or pass a finished report)")
    counts = Counter(cell["attack"] for cell in report["cells"])
    complete = {attack for attack, n in counts.items() if n == max(counts.values())}
    kept = {**report, "cells": [c for c in report["cells"] if c["attack"] in complete],
            "before": [b for b in report.get("before", []) if b["attack"] in complete]}
    kept["summary"] = summarise(kept)
    return kept


def only_defences(report: dict, defences) -> dict:
    """``report`` restricted to the cells of ``defences`` (names, kept in that order in its summary),
    its ``"summary"`` recomputed; the input is left unchanged. A name the report never ran is an error."""
    names = list(defences)
    ran = {cell["defense"] for cell in report.get("cells", [])}
    missing = [n for n in names if n not in ran]
    if missing:
        raise NgfkitError(f"the report has no cell of {missing[0]!r}; it ran: {', '.join(sorted(ran))}")
    kept = {**report, "cells": [c for c in report["cells"] if c["defense"] in names]}
    order = {name: i for i, name in enumerate(names)}
    kept["summary"] = sorted(summarise(kept), key=lambda row: order[row["defense"]])
    return kept


def seconds_per_defence(report: dict, setting: str = "authors", reference: str = "ngf") -> list[dict]:
    """Per defence of ``report`` at ``setting``: its mean seconds per model and that time over
    ``reference``'s (NGF's) in the same run, fastest first."""
    rows = {row["defense"]: row for row in summarise(report) if row["setting"] == setting}
    if reference not in rows:
        raise NgfkitError(f"the report has no {reference!r} cell at setting {setting!r} to compare times with")
    base = rows[reference]["seconds"]
    return sorted(({"defence": name, "seconds": row["seconds"], "ratio": row["seconds"] / base,
                    "cells": row["cells"]} for name, row in rows.items()), key=lambda r: r["seconds"])
