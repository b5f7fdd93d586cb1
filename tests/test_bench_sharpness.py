"""The sharpness benchmark's summary, table and input errors (the measurements themselves are
tested against exact Hessians in test_sharpness.py)."""
import pytest
from errors_helper import one_line_error

from ngfkit.bench_sharpness import bench_sharpness, sharpness_table, summarise


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
    assert "lambda_max_ratio" not in summary["clean"]


def test_table_has_one_row_per_kind_and_length():
    table = sharpness_table(fake_report()).splitlines()
    assert table[-2].startswith("| clean | 3 | 2 | 91.00 | 10.50 ± 0.71") and table[-2].count("–") == 2
    assert table[-1].startswith("| badnets | 3 | 2 | 90.00 | 22.00 ± 1.41") and "| 2.10 | 5.00 ± 0.00 |" in table[-1]


def test_bad_benchmark_input_is_one_line():
    one_line_error(lambda: bench_sharpness(kinds=("clean", "nope")))
    one_line_error(lambda: bench_sharpness(epochs=(0,)))
    one_line_error(lambda: bench_sharpness(seeds=0))
