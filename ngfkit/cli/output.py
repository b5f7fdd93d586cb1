"""What the commands print and write: the before/after table, the defence's choice, the
provenance every JSON result carries, and the check that an output path can be written."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import NgfkitError


#: the output options of the commands (argparse dest -> the suffix the path needs; "" a folder)
OUTPUTS = {"out": ".safetensors", "json": ".json", "collect": ".json", "figure": ".html", "out_dir": ""}
#: the input options that name files an output must never replace
INPUTS = ("model", "reports", "notebook")
#: ``--json -``: the JSON result goes to stdout (and the tables to stderr)
STDOUT = "-"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")  # as ngfkit.checkpoint.sidecar_path, without importing torch


def _writable_folder(path: Path, option: str) -> None:
    """The nearest existing folder above ``path`` is a folder that we may create files in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NgfkitError(f"{option} {path}: {parent} is a file, not a folder; pick another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NgfkitError(f"{option} {path}: the folder {parent} is not writable; pick a folder you can write to")


def check_output(path: str | None, suffix: str, option: str = "output") -> None:
    """Refuse, before any work, an output path without ``suffix`` (``""``: a folder), that is a
    folder (or a file, for a folder), or whose folder cannot be written."""
    if path is None or path == STDOUT and suffix == ".json":
        return
    target = Path(path)
    if suffix and target.suffix != suffix:
        raise NgfkitError(f"{option} {path} should end in {suffix}")
    if suffix and target.is_dir():
        raise NgfkitError(f"{option} {path} is a folder; give a file name ending in {suffix}")
    if not suffix and target.exists() and not target.is_dir():
        raise NgfkitError(f"{option} {path} is a file; give a folder")
    if not suffix and target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise NgfkitError(f"{option} {path} is not writable; pick a folder you can write to")
        return
    _writable_folder(target, option)


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def check_outputs(args: argparse.Namespace) -> None:
    """Every output of a parsed command checked before any work starts (:func:`check_output`),
    and no output may replace an input, another output, or a checkpoint's sidecar: the JSON
    report never takes the name that a model beside it would read as its sidecar."""
    outputs = {dest: getattr(args, dest) for dest in OUTPUTS if getattr(args, dest, None) is not None}
    flags = {dest: "--" + dest.split("_")[0] for dest in outputs}
    for dest, path in outputs.items():
        check_output(path, OUTPUTS[dest], flags[dest])
    files = {dest: Path(path) for dest, path in outputs.items() if path != STDOUT}
    if "out" in files:  # a checkpoint's sidecar is an output too
        files["out sidecar"] = _sidecar(files["out"])
        flags["out sidecar"] = f"the sidecar of --out ({files['out sidecar'].name})"
        check_output(str(files["out sidecar"]), ".json", flags["out sidecar"])
    inputs: list[tuple[str, Path]] = []
    for dest in INPUTS:
        given = getattr(args, dest, None)
        for path in ([given] if isinstance(given, str) else given or []):
            inputs.append((f"--{dest}" if dest == "model" else "an input", Path(path)))
            if dest == "model":
                inputs.append(("the sidecar of --model", _sidecar(Path(path))))
    names = list(files)
    for i, dest in enumerate(names):
        for other in names[i + 1:]:
            if _same(files[dest], files[other]):
                raise NgfkitError(f"{flags[dest]} and {flags[other]} are the same file ({files[dest]}); "
                                  f"give them different names")
        for what, path in inputs:
            if _same(files[dest], path):
                raise NgfkitError(f"{flags[dest]} {files[dest]} would overwrite {what}; write to another file")
    for dest in ("json", "collect"):
        report = files.get(dest)
        if report is not None and report.with_suffix(".safetensors").exists():
            raise NgfkitError(f"{flags[dest]} {report} is the sidecar name of {report.with_suffix('.safetensors')}, "
                              f"which would then not load; pick another name (e.g. {report.stem}-report.json)")


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.2f}"


def metrics_table(rows: Sequence[tuple[str, dict]]) -> str:
    """One line of C-ACC, ASR and RA (percent; ``-`` where absent) per ``(name, metrics)``; names
    are shown whole (the column is as wide as the longest)."""
    width = max([10, *(len(name) for name, _ in rows)])
    lines = [f"  {'':<{width}}  C-ACC %   ASR %    RA %"]
    for name, m in rows:
        lines.append(f"  {name:<{width}} {_pct(m.get('acc'))}  {_pct(m.get('asr'))}  {_pct(m.get('ra'))}")
    return "\n".join(lines)


def print_choice(history: dict) -> None:
    """What the defence chose from clean data, and whether its accuracy budget could be kept."""
    if "selection" in history:
        print(f"  chosen from clean data: {history['setting']}; purify took {history['seconds']:.1f} s")
    else:
        print(f"  setting {history['setting']}; purify took {history['seconds']:.1f} s")
    if history.get("selection", {}).get("budget_met") is False:
        knob = history["selection"].get("knob", "strength")
        print(f"  note: no value of {knob} kept the clean-accuracy estimate within --acc-budget; "
              "the cheapest was used (raise --acc-budget or give more clean data)")


def provenance(start: float) -> dict[str, Any]:
    """Versions, the command line and the wall time since ``start`` (a ``perf_counter``)."""
    from ..utils import versions

    return {"versions": versions(), "argv": sys.argv[1:], "wall_seconds": time.perf_counter() - start}


def json_safe(history: dict) -> dict:
    """The defence history with anything JSON cannot hold turned into strings."""
    return json.loads(json.dumps(history, default=str))
