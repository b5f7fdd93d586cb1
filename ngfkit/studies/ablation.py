"""NGF's ablations side by side: which options each variant changes, how its learning rate was
set, and one table row per run (the natural-gradient chapter's ablation table).

A *run* is what :func:`ngfkit.pipeline.run_defence` returns: ``{"defense", "before", "after",
"history", ...}``, with ``before`` / ``after`` the metrics ``{"acc", "asr", "ra"}`` in percent
and ``history["config"]`` the options the defence ran with. A run whose learning rate was chosen
from clean data has ``history["selection"]`` (``"tried"``: one entry per value with its held-out
clean-accuracy drop ``"val_acc_drop"``, ``"chosen"``: the value kept); ``history["setting"]``
holds the options of the run that was kept.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..defences import DEFENCES
from ..defences.ngf import NGFConfig


def changed_options(config: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                    ignore: Sequence[str] = ("seed",)) -> dict[str, Any]:
    """The options of ``config`` that differ from ``base`` (default: :class:`NGFConfig`'s
    defaults), leaving out ``ignore`` and options ``base`` does not have."""
    base = dataclasses.asdict(NGFConfig()) if base is None else base
    return {k: v for k, v in config.items() if k in base and k not in ignore and v != base[k]}


def options_text(options: Mapping[str, Any]) -> str:
    """``"body=sgd, steps=200"``, or ``"none"`` for no options."""
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "none"


def tried_at(history: Mapping[str, Any], value: Any) -> dict | None:
    """The entry of ``history["selection"]["tried"]`` for ``value``; None when the run chose
    nothing from clean data or did not try that value."""
    tried = history.get("selection", {}).get("tried", [])
    return next((t for t in tried if t["value"] == value), None)


def lr_note(history: Mapping[str, Any]) -> str:
    """The learning rate a run kept and how it was set: ``"0.03 (chosen; held-out drop 1.2)"``
    or ``"0.01 (fixed)"``."""
    lr = history["setting"]["lr"]
    entry = tried_at(history, lr) if "selection" in history else None
    if entry is None:
        return f"{lr:g} (fixed)"
    return f"{lr:g} (chosen; held-out drop {entry['val_acc_drop']:.1f})"


def describe(name: str, descriptions: Mapping[str, str] | None = None) -> str:
    """What variant ``name`` changes: ``descriptions[name]``, else the first sentence of the
    defence's docstring."""
    if descriptions and name in descriptions:
        return descriptions[name]
    return (DEFENCES.get(name).__doc__ or name).split(".")[0].strip()


def ablation_rows(runs: Mapping[str, Mapping[str, Any]], before: Mapping[str, float], *,
                  descriptions: Mapping[str, str] | None = None, ignore: Sequence[str] = ("seed",)) -> list[dict]:
    """Rows for :func:`ngfkit.viz.tables.markdown_table`: the backdoored model (``before``), then
    one per run of ``runs`` (``{variant name: run}``, in its order).

    Keys: ``variant``, ``what changes``, ``options changed``, ``learning rate`` (text),
    ``ACC (%)``, ``ASR (%)``, ``RA (%)`` and ``seconds`` (numbers, unformatted; None where a
    row has no such value).
    """
    rows = [{"variant": "backdoored model", "what changes": None, "options changed": None, "learning rate": None,
             "ACC (%)": before["acc"], "ASR (%)": before["asr"], "RA (%)": before["ra"], "seconds": None}]
    for name, run in runs.items():
        history, after = run["history"], run["after"]
        rows.append({"variant": f"`{name}`", "what changes": describe(name, descriptions),
                     "options changed": options_text(changed_options(history["config"], ignore=ignore)),
                     "learning rate": lr_note(history), "ACC (%)": after["acc"], "ASR (%)": after["asr"],
                     "RA (%)": after["ra"], "seconds": history["seconds"]})
    return rows


def within_budget(selection: Mapping[str, Any]) -> list:
    """The values of ``selection["tried"]`` whose held-out clean-accuracy drop is at most
    ``selection["budget"]`` points, in the order tried."""
    return [t["value"] for t in selection["tried"] if t["val_acc_drop"] <= selection["budget"]]
