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
