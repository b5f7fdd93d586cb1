"""Run one notebook over a parameter grid with papermill: one output notebook per grid cell.

A grid maps parameter names to lists of values, ``{"attack": ["badnets", "blend"], "seed": [0, 1]}``
(on the command line ``--param attack=badnets,blend --param seed=0,1``). Its cells are the
Cartesian product in the order the names were given (the last name varies fastest), numbered
``0 .. N-1``: that number is what a scheduler's job array hands to ``--only`` (one SLURM array
task per cell), so fanning out needs no distribution logic here.

Each cell writes ``OUT/<notebook stem>_<name>-<value>_....ipynb``, a name made from its
parameters alone (a short hash is added only when a value had to be changed to fit a file
name). The runner is resumable: a cell whose output notebook exists and finished without an
error (papermill's metadata says so) is skipped; a failed or half-written one is run again.
A run writes to a hidden temporary notebook beside its final name and renames it when papermill
is done, so a killed job never leaves a half-written notebook under a final name.

Every output records its parameters (papermill's ``metadata.papermill.parameters``) and
``metadata.ngfkit_grid``: ``index``, ``parameters``, ``status``, ``error``, ``wall_seconds``,
the input ``notebook`` with its ``notebook_sha256``, and package ``versions``. :func:`collect`
reads them back with every value the notebook glued with ``myst_nb.glue`` (one row per output;
all outputs in the folder, or the cells of one grid).
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import os
import re
import shlex
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

from ..errors import NgfkitError
from ..viz.tables import markdown_table

#: what a grid may be given as: ``{"seed": [0, 1]}`` or CLI strings ``["seed=0,1"]``
GridLike = Union[Mapping[str, Any], Sequence[str]]

_UNKNOWN = object()  # a parameter whose default is not a Python literal
_SAFE = re.compile(r"[^A-Za-z0-9.+-]")
_MAX_NAME = 150


@dataclass(frozen=True)
class GridCell:
    """One point of the grid: its number, its parameter values and its output notebook."""

    index: int
    parameters: dict[str, Any]
    path: Path


# -- the notebook's parameters cell ---------------------------------------------------------------

def _nbformat():
    """nbformat and papermill come with the book extra; say so in one line when they are missing."""
    try:
        import nbformat
        import papermill  # noqa: F401
    except ImportError:
        raise NgfkitError("ngfkit grid needs papermill and a Jupyter kernel: pip install 'ngfkit[book]'") from None
    return nbformat

def _read_notebook(notebook: str | Path):
    nbformat = _nbformat()
    path = Path(notebook)
    if not path.is_file():
        raise NgfkitError(f"notebook {path} not found; check the path")
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as error:  # nbformat raises several kinds for a file that is not a notebook
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NgfkitError(f"{path} is not a readable Jupyter notebook ({first})") from None


def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """Names and default values set by the notebook's cell tagged ``parameters``.

    A default that is not a Python literal (``Path("x")``, a call) is kept as an unknown value,
    so grid values for it are read as Python literals, else as text.
    """
    nb = _read_notebook(notebook)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise NgfkitError(f"{notebook} has no cell tagged 'parameters'; tag the cell that sets its knobs "
                          f"(papermill inserts the grid's values after it)")
    source = cells[0].source
    try:
        tree = ast.parse(source)
    except SyntaxError:
        from papermill.translators import PythonTranslator

        return {p.name: _literal(p.default) for p in PythonTranslator.inspect(cells[0])}
    params: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        for target in targets:
            if isinstance(target, ast.Name):
                params[target.id] = _literal(ast.get_source_segment(source, value)) if value is not None else _UNKNOWN
    return params


def _literal(text: str | None) -> Any:
    try:
        return ast.literal_eval(text) if text is not None else _UNKNOWN
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _UNKNOWN


# -- grid values -------------------------------------------------------------------------------

def _split_values(text: str) -> list[str]:
    """``"a,[1,2],'x,y'"`` -> ``["a", "[1,2]", "'x,y'"]``: commas inside brackets or quotes stay."""
    items, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    items.append("".join(current).strip())
    return items


def _coerce(name: str, raw: str, default: Any) -> Any:
    """One grid value from text, read as the type of the parameter's default."""
    kind = type(default) if default is not _UNKNOWN and default is not None else None
    where = f"(the parameters cell sets {name} = {default!r})"
    a_kind = f"{'an' if kind is int else 'a'} {kind.__name__}" if kind is not None else ""
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
    if kind is str and not quoted:
        return raw
    if kind is bool and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if kind is None:
            return raw  # an unknown or None default: plain text
        raise NgfkitError(f"grid value {raw!r} for {name} is not {a_kind} {where}") from None
    if kind is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise NgfkitError(f"grid value {raw!r} for {name} is not {a_kind} {where}")
    return value


def parse_grid(notebook: str | Path, grid: GridLike) -> dict[str, list[Any]]:
    """Check ``grid`` against the notebook's parameters cell; return ``{name: [values]}``.

    ``grid`` is either a mapping (a value that is not a list or tuple counts as one value) or
    CLI strings ``"NAME=V1,V2"``, whose values are read as the type of the parameter's default.
    """
    known = notebook_parameters(notebook)
    result: dict[str, list[Any]] = {}
    if isinstance(grid, Mapping):
        items = [(str(k), list(v) if isinstance(v, (list, tuple)) else [v], None) for k, v in grid.items()]
    else:
        items = []
        for spec in grid:
            name, sep, text = str(spec).partition("=")
            if not sep or not name.strip():
                raise NgfkitError(f"--param takes NAME=V1,V2,..., got {spec!r}")
            items.append((name.strip(), None, text))
    for name, values, text in items:
        if name not in known:
            names = ", ".join(known) or "none"
            raise NgfkitError(f"{notebook} has no parameter {name!r} (its parameters cell sets: {names})")
        if name in result:
            raise NgfkitError(f"parameter {name!r} is given twice; list all its values once: {name}=A,B")
        if values is None:
            raws = _split_values(text)
            if any(not raw for raw in raws):
                raise NgfkitError(f"empty value in --param {name}={text}; separate values by single commas")
            values = [_coerce(name, raw, known[name]) for raw in raws]
        if not values:
            raise NgfkitError(f"parameter {name!r} has no values")
        result[name] = values
    return result


def expand(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The grid's cells in order: the Cartesian product, the last name varying fastest."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _short_hash(parameters: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:8]


def cell_filename(stem: str, parameters: Mapping[str, Any]) -> str:
    """``purify_job`` + ``{"defense": "ngf", "seed": 0}`` -> ``purify_job_defense-ngf_seed-0.ipynb``."""
    parts, changed = [stem], False
    for name, value in parameters.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        safe = _SAFE.sub("_", text) or "_"
        changed |= safe != text
        parts.append(f"{name}-{safe}")
    base = "_".join(parts)
    if changed or len(base) > _MAX_NAME:
        base = f"{base[:_MAX_NAME]}_{_short_hash(parameters)}"
    return f"{base}.ipynb"


def plan(notebook: str | Path, grid: GridLike, out_dir: str | Path) -> list[GridCell]:
    """Every cell of the grid with its output notebook path."""
    notebook, out_dir = Path(notebook), Path(out_dir)
    cells = expand(parse_grid(notebook, grid))
    names = [cell_filename(notebook.stem, p) for p in cells]
    if len(set(names)) < len(names):  # values that differ only in type or in unsafe characters
        names = [f"{Path(n).stem}_{_short_hash(p)}.ipynb" for n, p in zip(names, cells)]
    return [GridCell(i, p, out_dir / n) for i, (p, n) in enumerate(zip(cells, names))]


# -- the state of one output notebook ----------------------------------------------------------

def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _status(nb, parameters: Mapping[str, Any] | None = None, notebook_sha256: str | None = None) -> str:
    meta = nb.metadata.get("papermill")
    if not meta:
        return "missing"
    failed = meta.get("exception") or any(
        out.get("output_type") == "error" for c in nb.cells for out in c.get("outputs", []))
    if failed:
        return "failed"
    if not meta.get("end_time") or any(c.get("metadata", {}).get("papermill", {}).get("status") not in
                                       (None, "completed") for c in nb.cells):
        return "partial"
    if parameters is not None and meta.get("parameters") != _jsonable(dict(parameters)):
        return "mismatch"
    recorded = nb.metadata.get("ngfkit_grid", {}).get("notebook_sha256")
    if notebook_sha256 is not None and recorded is not None and recorded != notebook_sha256:
        return "stale"
    return "done"


def cell_status(path: str | Path, parameters: Mapping[str, Any] | None = None,
                notebook_sha256: str | None = None) -> str:
    """``done`` (finished without error, with these parameters and, when ``notebook_sha256`` is
    given, from that version of the notebook), ``failed``, ``partial`` (papermill never finished
    it), ``mismatch`` (other parameters), ``stale`` (made from another version of the notebook:
    its glued values no longer say what the notebook computes), or ``missing`` (no readable output).

    Outputs of :func:`commands` (papermill run directly) record no hash and count as done."""
    nbformat = _nbformat()
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:  # a truncated or foreign file is simply run again
        return "missing"
    return _status(nb, parameters, notebook_sha256)


# -- running ---------------------------------------------------------------------------------------

@contextmanager
def _temporary_notebook(path: Path) -> Iterator[Path]:
    """A hidden ``.ipynb`` beside ``path`` (papermill wants the suffix), removed unless renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial.ipynb", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _kernel_arguments(kernel: str) -> list[str]:
    """Check the kernel exists; for an IPython kernel, arguments that keep its start-up warnings
    (e.g. about unencrypted local TCP) out of the caller's output."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise NgfkitError(f"no Jupyter kernel named {kernel!r}; list them with `jupyter kernelspec list` "
                          f"and pass one with --kernel") from None
    return ["--IPKernelApp.log_level=ERROR"] if any("ipykernel" in arg for arg in spec.argv) else []


def notebook_digest(path: str | Path) -> str:
    """The SHA-256 of a notebook file: what an output records, to tell it was made from this version."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_cell(notebook: str | Path, cell: GridCell, *, kernel: str = "python3", cwd: str | Path | None = None,
             grid_size: int | None = None, kernel_arguments: Sequence[str] = ()) -> dict[str, Any]:
    """Execute one cell with papermill; rename its output into place; return its record."""
    nbformat = _nbformat()
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from ..utils import give_usual_permissions, versions

    notebook = Path(notebook)
    cwd = Path(cwd) if cwd is not None else notebook.resolve().parent
    error = None
    start = time.perf_counter()
    with _temporary_notebook(cell.path) as tmp:
        try:
            papermill.execute_notebook(str(notebook), str(tmp), parameters=cell.parameters, kernel_name=kernel,
                                       cwd=str(cwd), progress_bar=False, log_output=False,
                                       extra_arguments=list(kernel_arguments))
        except PapermillExecutionError as err:
            error = f"{err.ename}: {err.evalue}".strip().splitlines()[0]
        except Exception as err:  # a dead kernel, a timeout: record it, go on with the next cell
            error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        seconds = time.perf_counter() - start
        try:
            nb = nbformat.read(str(tmp), as_version=4)
        except Exception:
            nb = None  # papermill stopped before writing anything
        if nb is not None:
            status = "failed" if error else _status(nb, cell.parameters)
            nb.metadata.setdefault("papermill", {})["output_path"] = str(cell.path)
            nb.metadata["ngfkit_grid"] = {
                "index": cell.index, "grid_size": grid_size, "parameters": _jsonable(cell.parameters),
                "parameter_order": list(cell.parameters),
                "status": status, "error": error, "wall_seconds": seconds, "notebook": str(notebook),
                "notebook_sha256": notebook_digest(notebook), "kernel": kernel, "versions": versions()}
            nbformat.write(nb, str(tmp))
            give_usual_permissions(tmp)
            os.replace(tmp, cell.path)
        else:
            status = "failed"
    return {"index": cell.index, "parameters": cell.parameters, "output": str(cell.path),
            "status": "ran" if status == "done" else "failed", "seconds": seconds, "error": error}


def _make_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NgfkitError(f"output folder {out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)


def _pick(cells: list[GridCell], only: int | None) -> list[GridCell]:
    if only is None:
        return cells
    if not 0 <= only < len(cells):
        raise NgfkitError(f"--only {only} is outside the grid, whose cells are 0..{len(cells) - 1}")
    return [cells[only]]


def run_grid(notebook: str | Path, grid: GridLike, out_dir: str | Path, *, only: int | None = None,
             kernel: str = "python3", cwd: str | Path | None = None, force: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run every pending cell of the grid (or just cell ``only``); skip the finished ones.

    ``cwd`` is where each notebook runs (default: the notebook's folder, as in the book build);
    ``force`` runs finished cells again; a cell made from another version of the notebook (its
    hash differs) is run again too. Returns ``{"notebook", "out_dir", "grid", "cells",
    "ran", "skipped", "failed"}``, each cell ``{"index", "parameters", "output", "status"
    ("ran", "skipped" or "failed"), "seconds", "error"}``. A failing cell does not stop the others.
    """
    from tqdm.auto import tqdm

    notebook, out_dir = Path(notebook), Path(out_dir)
    parsed = parse_grid(notebook, grid)
    cells = plan(notebook, parsed, out_dir)
    size = len(cells)
    cells = _pick(cells, only)
    kernel_arguments = _kernel_arguments(kernel)
    _make_out_dir(out_dir)
    digest = notebook_digest(notebook)
    records = []
    bar = tqdm(cells, desc=f"grid {notebook.stem}", unit="cell", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.path.stem.removeprefix(notebook.stem + "_"), refresh=True)
        if not force and cell_status(cell.path, cell.parameters, digest) == "done":
            records.append({"index": cell.index, "parameters": cell.parameters, "output": str(cell.path),
                            "status": "skipped", "seconds": 0.0, "error": None})
            continue
        records.append(run_cell(notebook, cell, kernel=kernel, cwd=cwd, grid_size=size,
                                kernel_arguments=kernel_arguments))
    counts = {k: sum(r["status"] == k for r in records) for k in ("ran", "skipped", "failed")}
    return {"notebook": str(notebook), "out_dir": str(out_dir), "grid": parsed, "cells": records, **counts}


def commands(notebook: str | Path, grid: GridLike, out_dir: str | Path, *, only: int | None = None,
             kernel: str = "python3", cwd: str | Path | None = None) -> list[str]:
    """One ``papermill`` command line per pending cell (for a scheduler to run as it likes).

    Text values go with ``-r`` (raw), numbers, booleans and None with ``-p``, lists and dicts with
    ``-y`` (JSON). papermill writes these outputs in place as it runs; a killed one has no end
    time, so :func:`run_grid` and :func:`collect` count it as partial, not done.
    """
    notebook = Path(notebook)
    cells = _pick(plan(notebook, grid, out_dir), only)
    cwd = Path(cwd) if cwd is not None else notebook.parent
    _make_out_dir(Path(out_dir))  # papermill does not create it
    digest = notebook_digest(notebook)
    lines = []
    for cell in cells:
        if cell_status(cell.path, cell.parameters, digest) == "done":
            continue
        args = ["papermill", str(notebook), str(cell.path), "-k", kernel, "--cwd", str(cwd), "--no-progress-bar"]
        for name, value in cell.parameters.items():
            if isinstance(value, str):
                args += ["-r", name, value]
            elif isinstance(value, (list, tuple, dict)):
                args += ["-y", json.dumps({name: value})]
            else:
                args += ["-p", name, str(value)]  # papermill reads True, False, None and numbers back
        lines.append(shlex.join(args))
    return lines


# -- collecting results ------------------------------------------------------------------------------

def glued_values(nb) -> dict[str, Any]:
    """Every value glued with ``myst_nb.glue``: ``{name: value}``, read back from ``text/plain``
    as a Python literal when it is one (so ``glue("acc", 91.2)`` gives a float), else as text.
    Glued objects without a text form (figures) are left out."""
    values: dict[str, Any] = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            scrap = out.get("metadata", {}).get("scrapbook")
            if not scrap or "name" not in scrap:
                continue
            text = out.get("data", {}).get(scrap.get("mime_prefix", "") + "text/plain")
            if text is None:
                continue
            text = "".join(text) if isinstance(text, list) else text
            value = _literal(text)
            values[scrap["name"]] = text if value is _UNKNOWN else value
    return values


def _row(path: Path, nb, cell: GridCell | None, notebook_sha256: str | None = None) -> dict[str, Any]:
    """One row of :func:`collect` from an output notebook (``nb`` None: there is none yet)."""
    if nb is None or not nb.metadata.get("papermill"):
        return {"output": path.name, "index": cell.index if cell else None, "status": "missing",
                "parameters": _jsonable(cell.parameters) if cell else {}, "values": {}, "seconds": None,
                "error": None, "notebook": None}
    papermill_meta, grid_meta = nb.metadata["papermill"], nb.metadata.get("ngfkit_grid", {})
    status = _status(nb, None, notebook_sha256)
    params = dict(papermill_meta.get("parameters") or {})
    order = list(cell.parameters) if cell else grid_meta.get("parameter_order", [])  # JSON sorted the keys
    order = [k for k in order if k in params]
    params = {k: params[k] for k in [*order, *(k for k in params if k not in order)]}
    index = cell.index if cell else grid_meta.get("index")
    return {"output": path.name, "index": index, "status": status, "parameters": params,
            "values": glued_values(nb), "seconds": grid_meta.get("wall_seconds", papermill_meta.get("duration")),
            "error": grid_meta.get("error") if status != "done" else None,
            "notebook": grid_meta.get("notebook", papermill_meta.get("input_path"))}


def collect(out_dir: str | Path, cells: Sequence[GridCell] | None = None,
            notebook: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per papermill output notebook in ``out_dir`` (hidden temporary ones skipped):
    ``{"output", "index", "status", "parameters", "values", "seconds", "error", "notebook"}``,
    ordered by grid index. ``values`` are the glued values; ``seconds`` the cell's wall time.

    With ``cells`` (from :func:`plan`), only those outputs are read, in grid order, and a cell
    without one gets a row with status ``missing``: outputs of other grids in the same folder
    are left out. With ``notebook``, outputs made from another version of it have status ``stale``.
    """
    nbformat = _nbformat()
    out_dir = Path(out_dir)
    digest = notebook_digest(Path(notebook)) if notebook is not None else None
    if not out_dir.is_dir():
        raise NgfkitError(f"output folder {out_dir} not found; run the grid first")

    def read(path: Path):
        try:
            return nbformat.read(str(path), as_version=4)
        except Exception:  # missing, truncated or not a notebook
            return None

    if cells is not None:
        return [_row(cell.path, read(cell.path), cell, digest) for cell in cells]
    rows = []
    for path in sorted(out_dir.glob("*.ipynb")):
        nb = None if path.name.startswith(".") else read(path)
        if nb is not None and nb.metadata.get("papermill"):  # an output of papermill
            rows.append(_row(path, nb, None, digest))
    rows.sort(key=lambda r: (r["index"] is None, r["index"] if r["index"] is not None else 0, r["output"]))
    return rows


def _cell_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "–"
    return str(value)


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of :func:`collect`'s rows: parameters, glued values, seconds, status."""
    if not rows:
        return "(no output notebooks)"
    params = list(dict.fromkeys(k for r in rows for k in r["parameters"]))
    values = list(dict.fromkeys(k for r in rows for k in r["values"] if k not in r["parameters"]))
    header = ["#", *params, *values, "seconds", "status"]
    cells = [[r["index"], *(r["parameters"].get(k) for k in params), *(r["values"].get(k) for k in values),
              r["seconds"], r["status"]] for r in rows]
    return markdown_table([[_cell_text(c) for c in row] for row in cells], header)
