"""What the commands print and write: the before/after table, the defence's choice, the
provenance every JSON result carries, and the check that an output path can be written."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import NgfkitError


def check_output(path: str | None, suffix: str) -> None:
    """Refuse, before any work, an output path without ``suffix`` or that is a folder."""
    if path is None:
        return
    target = Path(path)
    if target.suffix != suffix:
        raise NgfkitError(f"output {path} should end in {suffix}")
    if target.exists() and target.is_dir():
        raise NgfkitError(f"output {path} is a folder; give a file name ending in {suffix}")


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.2f}"


def metrics_table(rows: Sequence[tuple[str, dict]]) -> str:
    """One line of C-ACC, ASR and RA (percent; ``-`` where absent) per ``(name, metrics)``."""
    lines = ["              C-ACC %   ASR %    RA %"]
    for name, m in rows:
        lines.append(f"  {name:<10} {_pct(m.get('acc'))}  {_pct(m.get('asr'))}  {_pct(m.get('ra'))}")
    return "\n".join(lines)


def print_choice(history: dict) -> None:
    """What the defence chose from clean data, and whether its accuracy budget could be kept."""
    if "selection" in history:
        print(f"  chosen from clean data: {history['setting']}; purify took {history['seconds']:.1f} s")
    else:
        print(f"  setting {history['setting']}; purify took {history['seconds']:.1f} s")
    if history.get("selection", {}).get("budget_met") is False:
        print("  note: no learning rate kept the cross-fitted clean accuracy within --acc-budget; "
              "the weakest was used (raise --acc-budget or give more clean data)")


def provenance(start: float) -> dict[str, Any]:
    """Versions, the command line and the wall time since ``start`` (a ``perf_counter``)."""
    from ..utils import versions

    return {"versions": versions(), "argv": sys.argv[1:], "wall_seconds": time.perf_counter() - start}


def json_safe(history: dict) -> dict:
    """The defence history with anything JSON cannot hold turned into strings."""
    return json.loads(json.dumps(history, default=str))
