"""A tiny fixed-seed run of the whole spine on a subset of the real Fashion-MNIST:
backdoor a model, save it, purify it with NGF through the CLI, evaluate, and the demo."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ngfkit.cli import main
from ngfkit.data import SYSTEM_DATA_DIRS, load_dataset

DEBIAN = SYSTEM_DATA_DIRS["fashion-mnist"][0]
pytestmark = pytest.mark.skipif(not DEBIAN.is_dir(), reason="needs Debian's dataset-fashion-mnist "
                                "(installed by scripts/setup.sh)")


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def small_fashion(tmp_path_factory) -> Path:
    """4000 training and 1000 test images of the real data, in the real on-disk format."""
    root = tmp_path_factory.mktemp("fashion")
    for split, prefix, count in (("train", "train", 4000), ("test", "t10k", 1000)):
        data = load_dataset("fashion-mnist", split, root=DEBIAN)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", data.images[:count, 0].numpy(), 2051)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", data.labels[:count].numpy(), 2049)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NGFKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory):
    """One model cache for the bench tests, so that they train their 2-epoch models once."""
    return tmp_path_factory.mktemp("bench-models")


@pytest.fixture
def bench_cache(bench_models, tmp_path, monkeypatch):
    monkeypatch.setenv("NGFKIT_CACHE", str(bench_models))
    return tmp_path


def run(*argv: str) -> None:
    assert main(list(argv)) == 0


def test_attack_purify_evaluate_through_the_cli(small_fashion, cache):
    model = cache / "bd.safetensors"
    run("attack", "--data-root", str(small_fashion), "--epochs", "3", "--clean-fraction", "0.1",
        "--out", str(model), "--json", str(cache / "attack.json"), "--quiet", "--device", "cpu")
    attack = json.loads((cache / "attack.json").read_text())
    assert attack["metrics"]["asr"] >= 90 and attack["metrics"]["acc"] >= 70
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert sidecar["attack"]["name"] == "badnets" and sidecar["seed"] == 0 and "torch" in sidecar["versions"]

    purified = cache / "clean.safetensors"
    run("purify", "--model", str(model), "--data-root", str(small_fashion), "--out", str(purified),
        "--lr", "0.01", "--json", str(cache / "purify.json"), "--quiet")
    result = json.loads((cache / "purify.json").read_text())
    assert result["before"] == pytest.approx(attack["metrics"])
    history = result["defense_history"]
    assert history["changed"] == "head" and history["setting"]["lr"] == 0.01 and len(history["loss"]) == 500
    # strong natural-gradient steps on the last layer alone must move the backdoor
    assert result["after"]["asr"] < result["before"]["asr"] - 10

    run("evaluate", "--model", str(purified), "--data-root", str(small_fashion), "--json", str(cache / "eval.json"))
    assert json.loads((cache / "eval.json").read_text())["asr"] == pytest.approx(result["after"]["asr"])

    # only the classifier changed: the frozen body is bit-identical
    from safetensors.torch import load_file
    before, after = load_file(str(model)), load_file(str(purified))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.head.weight", "model.head.bias"}


def test_demo_chooses_strength_from_clean_data_and_reuses_its_model(small_fashion, cache, capsys):
    out = cache / "demo.json"
    args = ["demo", "--data-root", str(small_fashion), "--epochs", "3", "--clean-fraction", "0.1",
            "--json", str(out), "--quiet"]
    run(*args)
    first = json.loads(out.read_text())
    for key in ("dataset", "arch", "attack", "defense", "before", "after", "seconds", "seed"):
        assert key in first
    assert set(first["seconds"]) >= {"train", "purify", "total", "forward_pass"}
    # the headline is ngf-shift (a fixed setting); plain ngf, beside it, chooses its lr from clean data
    assert first["defense"] == "ngf-shift" and "selection" not in first["defense_history"]
    (ngf,) = first["compared"]
    assert ngf["defense"] == "ngf" and ngf["seconds"] > 0
    selection = ngf["defense_history"]["selection"]
    drops = {t["value"]: t["val_acc_drop"] for t in selection["tried"]}
    chosen = ngf["setting"]["lr"]
    assert chosen == selection["chosen"]
    if selection["budget_met"]:
        assert drops[chosen] <= 3.0
        assert all(drops[lr] > 3.0 for lr in drops if lr > chosen)
    else:
        assert chosen == min(drops)
    assert first["cached_model"] is False

    run(*args)
    second = json.loads(out.read_text())
    assert second["cached_model"] is True and second["seconds"]["train"] == 0
    assert second["after"] == pytest.approx(first["after"])  # seeded: the same purification again
    assert second["compared"][0]["after"] == pytest.approx(ngf["after"])


def test_bench_attacks_writes_the_report_and_resumes_from_the_cache(small_fashion, cache):
    out = cache / "attacks.json"
    args = ["bench", "attacks", "--attacks", "badnets,blend", "--data-root", str(small_fashion), "--epochs", "2",
            "--clean-fraction", "0.1", "--json", str(out), "--quiet"]
    run(*args)
    report = json.loads(out.read_text())
    assert report["dataset"] == "fashion-mnist" and report["arch"] == "smallcnn"
    assert 0 < report["clean_acc"] <= 100
    rows = {r["attack"]: r for r in report["attacks"]}
    assert list(rows) == ["badnets", "blend"]
    for row in rows.values():
        assert {"attack", "acc", "asr", "ra", "poison_rate", "seconds", "seed"} <= set(row)
        assert row["seconds"] > 0 and row["seed"] == 0 and row["poison_rate"] == 0.1 and not row["cached"]
        assert row["acc_drop"] == pytest.approx(report["clean_acc"] - row["acc"])
        assert row["goal"]["met"] == (row["asr"] >= 90 and row["acc_drop"] <= 2)
    assert rows["badnets"]["asr"] >= 90  # BadNets is learned even from 3,600 images
    run(*args)  # a second run is free: every model comes from the cache, numbers unchanged
    again = json.loads(out.read_text())
    assert all(r["cached"] for r in again["attacks"])
    assert [r["asr"] for r in again["attacks"]] == [r["asr"] for r in report["attacks"]]


def test_attack_table_marks_missed_goals():
    from ngfkit.bench.attacks import attack_table

    row = {"attack": "x", "acc": 85.0, "acc_drop": 5.0, "asr": 95.0, "ra": 1.0, "seconds": 3.0,
           "goal": {"met": False, "asr_min": 90.0, "acc_drop_max": 2.0}}
    report = {"clean_acc": 90.0, "dataset": "d", "arch": "a", "seed": 0, "train": {"epochs": 1},
              "attacks": [row, {**row, "attack": "y", "acc_drop": 1.0, "goal": {**row["goal"], "met": True}}]}
    table = attack_table(report).splitlines()
    assert table[-2].startswith("| x | 85.00 | +5.00 | 95.00") and "**missed**" in table[-2]
    assert "| met |" in table[-1]


def test_bench_defences_reports_every_cell_resumes_and_reruns_a_lost_cell_identically(small_fashion, bench_cache):
    cache = bench_cache
    out, figure = cache / "defences.json", cache / "scatter.html"
    args = ["bench", "defences", "--attacks", "badnets", "--defenses", "ngf,ft-last,fp", "--data-root",
            str(small_fashion), "--epochs", "2", "--clean-fraction", "0.1", "--json", str(out), "--quiet",
            "--defense-param", "ngf.steps=100", "--defense-param", "ft-last.steps=100",
            "--defense-param", "fp.steps=5", "--defense-param", "fp.ratio=[0.2,0.6]", "--figure", str(figure)]
    run(*args)
    report = json.loads(out.read_text())
    assert report["dataset"] == "fashion-mnist" and report["arch"] == "smallcnn" and report["seeds"] == [0]
    cells = {(c["defense"], c["setting"]): c for c in report["cells"]}
    assert set(cells) == {(d, s) for d in ("ngf", "ft-last", "fp") for s in ("selected", "authors")}
    (before,) = report["before"]
    assert before["attack"] == "badnets" and before["asr"] >= 90
    for cell in cells.values():
        assert {"attack", "defense", "seed", "acc", "asr", "ra", "der", "seconds", "peak_mb"} <= set(cell)
        assert cell["seconds"] > 0 and 0 <= cell["asr"] <= 100
        assert cell["acc_drop"] == pytest.approx(before["acc"] - cell["acc"])
    assert [t["value"] for t in cells[("fp", "selected")]["choice"]["selection"]["tried"]] == [0.2, 0.6]
    assert cells[("ngf", "selected")]["choice"]["selection"]["knob"] == "lr"
    assert {r["defense"] for r in report["summary"]} == {"ngf", "ft-last", "fp"}
    assert "plotly" in figure.read_text()[:5000].lower()

    # a killed run: drop one finished cell; the rerun computes only that one, and identically
    lost = report["cells"].pop(1)
    out.write_text(json.dumps(report))
    run(*args)
    again = json.loads(out.read_text())
    assert len(again["cells"]) == 6
    redone = next(c for c in again["cells"] if (c["defense"], c["setting"]) == (lost["defense"], lost["setting"]))
    for key in ("acc", "asr", "ra"):
        assert redone[key] == lost[key]


def test_bench_defences_measures_whether_the_purification_lasts(small_fashion, bench_cache, capsys):
    cache = bench_cache
    from ngfkit.bench.defences import reactivation_table

    out = cache / "lasting.json"
    args = ["bench", "defences", "--attacks", "badnets", "--defenses", "ft-last", "--settings", "authors",
            "--data-root", str(small_fashion), "--epochs", "2", "--clean-fraction", "0.1", "--json", str(out),
            "--quiet", "--defense-param", "ft-last.steps=50", "--reactivation"]
    run(*args)
    report = json.loads(out.read_text())
    assert report["reactivation"]["poisoned"] == 10 and report["reactivation"]["test_images"] == 2000
    (cell,), (before,), (reference,) = report["cells"], report["before"], report["reactivation_reference"]
    for row in (cell["reactivation"], before["reactivation"], reference):
        assert {"asr_before", "asr_after", "climb", "acc_after"} <= set(row)
        assert row["climb"] == pytest.approx(row["asr_after"] - row["asr_before"])
    assert before["reactivation"]["asr_before"] >= 90  # the backdoored model, before its re-tuning
    assert reference["seed"] == 0 and reference["asr_before"] < 20  # the clean twin has no backdoor yet
    assert report["summary"][0]["reactivated_asr"] == pytest.approx(cell["reactivation"]["asr_after"])
    table = reactivation_table(report, "authors")
    assert "| badnets |" in table and "10 poisoned + 90 clean" in table
    # a resume that would mix reports with and without the measurement is refused
    assert main(args[:-1]) == 2
    assert "reactivation" in capsys.readouterr().err


def test_purify_runs_any_defence_with_its_own_options(small_fashion, cache):
    model = cache / "bd.safetensors"
    run("attack", "--data-root", str(small_fashion), "--epochs", "1", "--clean-fraction", "0.05",
        "--out", str(model), "--quiet")
    out = cache / "anp.safetensors"
    run("purify", "--model", str(model), "--data-root", str(small_fashion), "--defense", "anp",
        "--defense-param", "iterations=5", "--defense-param", "threshold=0.3", "--out", str(out),
        "--json", str(cache / "anp-report.json"), "--quiet")
    result = json.loads((cache / "anp-report.json").read_text())
    assert result["defense"] == "anp" and result["defense_history"]["config"]["iterations"] == 5
    assert out.is_file() and out.with_suffix(".json").is_file()
