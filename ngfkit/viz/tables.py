"""Markdown tables for the book and the command line: one function, :func:`markdown_table`.

Rows are dicts (one key per column) or plain sequences under a given header. Numbers are
formatted by the caller, or per column with ``formats``; a cell never decides its own
precision, so a table shows what its author asked for and nothing else.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ..errors import NgfkitError

Format = str | Callable[[Any], str]


def _text(value: Any, fmt: Format | None, missing: str) -> str:
    if value is None:
        return missing
    if fmt is None:
        text = str(value)
    elif callable(fmt):
        text = fmt(value)
    else:
        text = format(value, fmt)
    # a bare "|" would end the cell early and a newline the row: escape one, flatten the other
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
                   columns: Sequence[str] | Mapping[str, str] | None = None, *,
                   formats: Mapping[str, Format] | None = None, missing: str = "") -> str:
    """A Markdown (GFM pipe) table.

    ``rows`` is either a list of dicts or a list of sequences:

    - dicts: ``columns`` chooses and orders the keys shown (default: every key, in the order
      first seen); a mapping ``{key: header}`` also renames them. A key a row lacks is shown
      as ``missing``.
    - sequences: ``columns`` is the header, one name per cell (required).

    ``formats`` maps a column (its key, or its header for sequence rows) to a format spec
    (``".2f"``, ``"g"``, ``"+.1f"``) or a function of the value returning its text; other cells
    are ``str(value)``. ``None`` is shown as ``missing``. A ``|`` inside a cell is escaped.

    >>> print(markdown_table([{"eta": 0.0, "asr": 98.123}], {"eta": "η", "asr": "ASR (%)"},
    ...                      formats={"eta": "g", "asr": ".1f"}))
    | η | ASR (%) |
    | --- | --- |
    | 0 | 98.1 |
    """
    if not rows:
        raise NgfkitError("markdown_table got no rows; give it at least one row (or show no table)")
    formats = dict(formats or {})
    if isinstance(rows[0], Mapping):
        if columns is None:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            headers = keys
        elif isinstance(columns, Mapping):
            keys, headers = list(columns), list(columns.values())
        else:
            keys = headers = list(columns)
        unknown = [k for k in formats if k not in keys]
        cells = [[row.get(k) for k in keys] for row in rows]
    else:
        if columns is None or isinstance(columns, Mapping):
            raise NgfkitError("markdown_table: rows that are not dicts need a header; pass columns=[name, ...]")
        keys = headers = list(columns)
        cells = [list(row) for row in rows]
        wrong = next((i for i, row in enumerate(cells) if len(row) != len(keys)), None)
        if wrong is not None:
            raise NgfkitError(f"markdown_table: row {wrong} has {len(cells[wrong])} cells for {len(keys)} columns; "
                              f"give every row one cell per column")
        unknown = [k for k in formats if k not in keys]
    if unknown:
        raise NgfkitError(f"markdown_table: formats name {unknown[0]!r}, which is not a column; "
                          f"the columns are: {', '.join(map(str, keys))}")
    lines = ["| " + " | ".join(_text(h, None, "") for h in headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    for row in cells:
        lines.append("| " + " | ".join(_text(v, formats.get(k), missing) for k, v in zip(keys, row)) + " |")
    return "\n".join(lines)


def demo_table(result: Mapping[str, Any]) -> str:
    """The ``ngfkit demo --json`` result as a Markdown table: the backdoored model, then each
    defence run on it (the headline defence first) with its setting, its seconds and those seconds
    over one forward pass through the clean images and their augmented views."""
    def setting(value: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())

    forward = result["seconds"].get("forward_pass")
    rows = [{"model": f"backdoored ({result['attack']})", **result["before"]}]
    rows.append({"model": f"after `{result['defense']}`", **result["after"],
                 "setting": setting(result["defense_history"]["setting"]), "seconds": result["seconds"]["purify"]})
    rows += [{"model": f"after `{other['defense']}`", **other["after"], "setting": setting(other["setting"]),
              "seconds": other["seconds"]} for other in result.get("compared", [])]
    for row in rows[1:]:
        row["ratio"] = row["seconds"] / forward if forward else None
    return markdown_table(rows, {"model": "model", "acc": "C-ACC %", "asr": "ASR %", "ra": "RA %",
                                 "setting": "setting (chosen or fixed)", "seconds": "seconds",
                                 "ratio": "× one forward pass"},
                          formats={"acc": ".2f", "asr": ".2f", "ra": ".2f", "seconds": ".1f", "ratio": ".1f"},
                          missing="")


def reported_table(reported: Mapping[str, Any], ours: Mapping[str, Any], *, setting: str = "authors",
                   methods: Sequence[str] = ("fip", "nft")) -> str:
    """Markdown: per attack, the ASR % (C-ACC %) a successor paper reports for each of ``methods``
    (``reported``, the layout of ``results/reported-cifar10.json``: *their* dataset and model) beside
    the ASR % (C-ACC drop in points) the same defences leave in ``ours`` (a ``bench defences``
    report) at ``setting``, mean over seeds; ``–`` where one side has no number. Attacks: those in
    both."""
    from ..bench.defences import cell_mean

    def theirs(method: str, attack: str) -> str:
        cell = reported["methods"].get(method, {}).get("cells", {}).get(attack)
        return "–" if cell is None else f"{cell['asr']:.1f} ({cell['acc']:.1f})"

    def mine(method: str, attack: str) -> str:
        asr = cell_mean(ours, attack, method, "asr", setting)
        return "–" if asr is None else f"{asr:.1f} ({cell_mean(ours, attack, method, 'acc_drop', setting):+.1f})"

    ran = {c["attack"] for c in ours["cells"] if c["setting"] == setting}
    attacks = [a for a in reported["before"]["cells"] if a in ran]
    if not attacks:
        raise NgfkitError("the report shares no attack with the reported numbers; run bench defences on "
                          f"some of: {', '.join(reported['before']['cells'])}")
    header = ["attack", f"before ({reported['dataset']})"] + [f"{m} ({reported['dataset']}, theirs)" for m in methods]
    header += [f"before ({ours['dataset']}, ours)"] + [f"{m} ({ours['dataset']}, ours)" for m in methods]
    rows = []
    for attack in attacks:
        before = reported["before"]["cells"][attack]
        ours_before = [b["asr"] for b in ours["before"] if b["attack"] == attack]
        rows.append([attack, f"{before['asr']:.1f} ({before['acc']:.1f})", *(theirs(m, attack) for m in methods),
                     f"{sum(ours_before) / len(ours_before):.1f}" if ours_before else "–",
                     *(mine(m, attack) for m in methods)])
    return markdown_table(rows, header)
