"""The papermill grid runner on tiny throwaway notebooks (no torch work; a few kernel starts)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("myst_nb")
nbformat = pytest.importorskip("nbformat")

from errors_helper import one_line_error  # noqa: E402

from ngfkit.book import grid  # noqa: E402
from ngfkit.cli import main  # noqa: E402

PARAMS = 'x = 1  # a number\nname = "a"\nrate = 0.5\nflag = False\nitems = [1, 2]\n'
BODY = ("from myst_nb import glue\n"
        "with open('runs.log', 'a') as f:\n"
        "    f.write(f'{x}\\n')\n"
        "if x == {bad}:\n"
        "    raise ValueError('x is bad')\n"
        "glue('double', 2 * x, display=False)\n"
        "glue('label', f'{name}:{rate:.2f}', display=False)\n")


def write_notebook(path: Path, bad: int = 3, parameters: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    tags = {"tags": ["parameters"]} if parameters else {}
    nb.cells = [nbformat.v4.new_code_cell(PARAMS, metadata=tags),
                nbformat.v4.new_code_cell(BODY.replace("{bad}", str(bad)))]
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def job(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "job.ipynb")


def runs(folder: Path) -> list[str]:
    log = folder / "runs.log"
    return log.read_text().split() if log.is_file() else []


def test_grid_expansion_types_and_names(job: Path, tmp_path: Path):
    parsed = grid.parse_grid(job, ["name=a,b c", "x=1,2", "rate=1,0.25", "flag=true", "items=[3,4],[5]"])
    assert parsed == {"name": ["a", "b c"], "x": [1, 2], "rate": [1.0, 0.25], "flag": [True],
                      "items": [[3, 4], [5]]}
    assert isinstance(parsed["rate"][0], float)
    cells = grid.plan(job, {"name": ["a", "b"], "x": [1, 2]}, tmp_path / "out")
    assert [c.index for c in cells] == [0, 1, 2, 3]
    assert [c.parameters for c in cells] == [{"name": "a", "x": 1}, {"name": "a", "x": 2},
                                             {"name": "b", "x": 1}, {"name": "b", "x": 2}]  # last varies fastest
    assert cells[1].path == tmp_path / "out" / "job_name-a_x-2.ipynb"
    # the same parameters always give the same name; unsafe characters add a hash, never a clash
    again = grid.plan(job, ["name=a,b", "x=1,2"], tmp_path / "out")
    assert [c.path for c in again] == [c.path for c in cells]
    odd = grid.plan(job, {"name": ["b c", "b/c", "b_c"]}, tmp_path / "out")
    assert len({c.path.name for c in odd}) == 3 and odd[2].path.name == "job_name-b_c.ipynb"
    assert all("/" not in c.path.name and " " not in c.path.name for c in odd)


def test_input_errors_are_one_line(job: Path, tmp_path: Path):
    assert "not found" in one_line_error(grid.plan, tmp_path / "nope.ipynb", ["x=1"], tmp_path)
    bare = write_notebook(tmp_path / "bare.ipynb", parameters=False)
    assert "no cell tagged 'parameters'" in one_line_error(grid.plan, bare, ["x=1"], tmp_path)
    msg = one_line_error(grid.plan, job, ["x=one"], tmp_path)
    assert "'one'" in msg and "not an int" in msg
    assert "not a list" in one_line_error(grid.plan, job, ["items=3"], tmp_path)
    msg = one_line_error(grid.plan, job, ["y=1"], tmp_path)
    assert "no parameter 'y'" in msg and "x, name, rate, flag, items" in msg
    assert "NAME=V1,V2" in one_line_error(grid.plan, job, ["x"], tmp_path)
    assert "empty value" in one_line_error(grid.plan, job, ["x=1,,2"], tmp_path)
    assert "outside the grid" in one_line_error(grid.run_grid, job, ["x=1,2"], tmp_path / "out", only=2)
    assert "no Jupyter kernel" in one_line_error(grid.run_grid, job, ["x=1"], tmp_path / "o", kernel="nokernel")


def test_cli_error_line(job: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    code = main(["grid", str(job), "--param", "seed=0,1", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and err.startswith("ngfkit: error: ")
    assert "no parameter 'seed'" in err
    assert not (tmp_path / "out").exists()


def test_run_resume_failure_collect_and_commands(job: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "out"
    report = grid.run_grid(job, ["x=1,3"], out, progress=False)
    assert (report["ran"], report["skipped"], report["failed"]) == (1, 0, 1)
    failed = report["cells"][1]
    assert failed["status"] == "failed" and "x is bad" in failed["error"]
    done, bad = (Path(c["output"]) for c in report["cells"])
    assert grid.cell_status(done, {"x": 1}) == "done" and grid.cell_status(bad) == "failed"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary notebook left behind
    assert runs(tmp_path) == ["1", "3"]

    rows = grid.collect(out)
    assert [r["index"] for r in rows] == [0, 1]
    assert rows[0]["status"] == "done" and rows[0]["parameters"] == {"x": 1}
    assert rows[0]["values"] == {"double": 2, "label": "a:0.50"} and rows[0]["seconds"] > 0
    assert rows[1]["status"] == "failed" and "x is bad" in rows[1]["error"] and rows[1]["values"] == {}
    # restricted to a grid's cells: in grid order, a cell not run yet is listed as missing
    wider = grid.collect(out, grid.plan(job, ["x=1,3,5"], out))
    assert [(r["index"], r["status"], r["parameters"]) for r in wider] == [
        (0, "done", {"x": 1}), (1, "failed", {"x": 3}), (2, "missing", {"x": 5})]
    table = grid.results_table(rows)
    assert table.splitlines()[0] == "| # | x | double | label | seconds | status |"

    # only the failed cell is pending; its papermill command carries its parameters
    assert main(["grid", str(job), "--param", "x=1,3", "--out", str(out), "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    words = shlex.split(lines[0])
    assert words[:3] == ["papermill", str(job), str(bad)] and words[-3:] == ["-p", "x", "3"]

    # resume: the finished cell is skipped (not touched), the failed one runs again
    stamp = done.stat().st_mtime_ns
    report = grid.run_grid(job, ["x=1,3"], out, progress=False)
    assert (report["ran"], report["skipped"], report["failed"]) == (0, 1, 1)
    assert done.stat().st_mtime_ns == stamp and runs(tmp_path) == ["1", "3", "3"]
    assert grid.run_grid(job, ["x=1,3"], out, only=0, progress=False)["skipped"] == 1  # a job array's rerun

    # a half-written output (papermill killed: no end time) counts as pending, not done
    nb = nbformat.read(str(done), as_version=4)
    nb.metadata.papermill["end_time"] = None
    partial = out / "job_x-9.ipynb"
    nbformat.write(nb, str(partial))
    assert grid.cell_status(partial) == "partial"

    # fixed notebook: the finished cell was made by the old version (its hash differs), so it is stale
    # and both cells run again (never old and new results in one table); the CLI writes the JSON and
    # prints the table
    write_notebook(job, bad=-1)
    partial.unlink()
    assert grid.cell_status(done, {"x": 1}, grid.notebook_digest(job)) == "stale"
    results = tmp_path / "results.json"
    assert main(["grid", str(job), "--param", "x=1,3", "--out", str(out), "--collect", str(results),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "2 ran, 0 already done, 0 failed" in printed and "| 1 | 3 | 6 | a:0.50 |" in printed
    assert runs(tmp_path) == ["1", "3", "3", "1", "3"]
    saved = json.loads(results.read_text())
    assert [(r["parameters"]["x"], r["values"]["double"], r["status"]) for r in saved] == [(1, 2, "done"),
                                                                                          (3, 6, "done")]
    assert main(["grid", str(job), "--param", "x=1,3", "--out", str(out), "--print-commands"]) == 0
    assert capsys.readouterr().out == ""  # nothing left to run
