"""The sharpness benchmark's summary, table and input errors (the measurements themselves are
tested against exact Hessians in test_sharpness.py)."""
import json

import pytest
from errors_helper import one_line_error

from ngfkit.bench.sharpness import bench_sharpness, merge_reports, sharpness_table, summarise
from ngfkit.cli import main


def fake_report():
    rows = []
    for seed in (0, 1):
        rows.append({"kind": "clean", "epochs": 3, "seed": seed, "acc": 91.0, "lambda_max": 10.0 + seed,
                     "trace": 100.0})
        rows.append({"kind": "badnets", "epochs": 3, "seed": seed, "acc": 90.0, "asr": 100.0,
                     "lambda_max": 21.0 + 2 * seed, "trace": 150.0,
                     "purified": {"acc": 88.0, "asr": 1.0, "lambda_max": 5.0, "trace": 50.0}})
    return {"dataset": "fashion-mnist", "arch": "smallcnn", "train_lr": 0.1, "samples": 200, "rows": rows}


def test_summary_gives_means_and_the_backdoor_to_benign_ratio():
    summary = {e["kind"]: e for e in summarise(fake_report())}
    assert summary["clean"]["lambda_max"][0] == pytest.approx(10.5)
    assert summary["badnets"]["lambda_max"][0] == pytest.approx(22.0)
    assert summary["badnets"]["lambda_max_ratio"] == pytest.approx(22.0 / 10.5)
    assert summary["badnets"]["trace_ratio"] == pytest.approx(1.5)
    assert summary["badnets"]["purified"]["lambda_max"] == [5.0, 0.0]
    assert summary["badnets"]["lambda_max_seed_ratios"] == pytest.approx([21.0 / 10.0, 23.0 / 11.0])
    assert "lambda_max_ratio" not in summary["clean"]


def test_table_has_one_row_per_kind_and_length():
    table = sharpness_table(fake_report()).splitlines()
    assert table[-2].startswith("| clean | 3 | 2 | 91.00 | 10.50 ± 0.71") and table[-2].count("–") == 4
    assert table[-1].startswith("| badnets | 3 | 2 | 90.00 | 22.00 ± 1.41")
    # ratio of the means, then the range of the per-seed ratios (21/10 and 23/11); after NGF: ASR, λmax
    assert table[-1].endswith("| 2.10 (2.09–2.10) | 1.50 (1.50–1.50) | 1.0 ± 0.0 | 5.0 ± 0.0 |")


def test_bad_benchmark_input_is_one_line():
    one_line_error(lambda: bench_sharpness(kinds=("clean", "nope")))
    one_line_error(lambda: bench_sharpness(epochs=(0,)))
    one_line_error(lambda: bench_sharpness(seeds=0))
    one_line_error(lambda: bench_sharpness(seeds=[]))
    one_line_error(lambda: bench_sharpness(seeds=[-1]))


def write_job_reports(tmp_path):
    """The fake benchmark split as a job array would run it: one report per (seed, kind)."""
    report = fake_report()
    paths = []
    for row in report["rows"]:
        path = tmp_path / f"{row['kind']}-s{row['seed']}.json"
        path.write_text(json.dumps({**report, "rows": [row], "wall_seconds": 1.0}))
        paths.append(path)
    return report, paths


def test_merge_joins_job_reports_into_the_whole_benchmark(tmp_path):
    report, paths = write_job_reports(tmp_path)
    merged = merge_reports(paths + paths[:1])  # a report given twice adds nothing
    assert len(merged["rows"]) == 4 and merged["wall_seconds"] == 5.0
    assert merged["summary"] == summarise(report)
    assert [(r["seed"], r["kind"]) for r in merged["rows"]] == [(0, "clean"), (0, "badnets"), (1, "clean"), (1, "badnets")]


def test_merge_refuses_other_settings_and_other_reports(tmp_path):
    _, paths = write_job_reports(tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(paths[0].read_text()), "samples": 500}))
    assert "samples" in one_line_error(lambda: merge_reports([paths[0], other]))
    defences = tmp_path / "defences.json"
    defences.write_text(json.dumps({"dataset": "fashion-mnist", "cells": []}))
    assert "not a bench sharpness report" in one_line_error(lambda: merge_reports([defences]))


def test_cli_merge_recognises_sharpness_reports(tmp_path, capsys):
    _, paths = write_job_reports(tmp_path)
    out, figure = tmp_path / "merged.json", tmp_path / "sharpness.html"
    assert main(["bench", "merge", *map(str, paths), "--json", str(out), "--figure", str(figure)]) == 0
    assert "| badnets | 3 | 2 | 90.00 | 22.00 ± 1.41" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["rows"]) == 4
    assert "λmax" in figure.read_text()


def test_training_length_figure_has_markers_per_model_and_mean_lines():
    from ngfkit.viz.plots import sharpness_vs_training_figure

    figure = sharpness_vs_training_figure(fake_report())
    names = {t.name for t in figure.data}
    assert names == {"benign", "badnets", "badnets after ngf"}
    # per series and panel: one marker trace (a point per model) and one line through the means
    assert len(figure.data) == 3 * 2 * 2
    benign_markers = next(t for t in figure.data if t.name == "benign" and t.mode == "markers")
    assert list(benign_markers.y) == [10.0, 11.0]
    benign_line = next(t for t in figure.data if t.name == "benign" and t.mode == "lines")
    assert list(benign_line.y) == [10.5]
    assert figure.layout.xaxis.type == "log" and figure.layout.yaxis.type == "log" and figure.layout.xaxis.title.text
    assert len(sharpness_vs_training_figure(fake_report(), purified=False).data) == 2 * 2 * 2
    one_line_error(lambda: sharpness_vs_training_figure({"rows": []}))


def test_cli_rejects_bad_number_lists_in_one_line(capsys):
    for argv, needle in ((["--epochs", "3,x"], "--epochs takes whole numbers"),
                         (["--seed-list", "1,two"], "--seed-list takes whole numbers"),
                         (["--seed", "2"], "does not take --seed")):
        assert main(["bench", "sharpness", *argv, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
