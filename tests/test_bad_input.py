"""Bad input, as a hostile-but-fair user would give it (issue 17): every case ends with exit
status 2 and one ``ngfkit: error:`` line naming the problem (no traceback, no usage block), and
leaves every file as it was; the Python API raises one :class:`NgfkitError` naming the argument.

The CLI cases are one table (:data:`CLI_CASES`): an argv, what to plant first, and words the
error line must hold. Every case stops before any training, so the table runs in seconds.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Callable

import pytest
import torch

from defence_helpers import tiny_clean, tiny_model
from errors_helper import one_line_error
from fashion_helpers import isolate_user_data, write_fashion_mnist
from ngfkit.attacks import create_attack
from ngfkit.checkpoint import load_checkpoint, save_checkpoint
from ngfkit.cli import main
from ngfkit.data import ImageTensorDataset, dataset_info
from ngfkit.defences import purify
from ngfkit.metrics import evaluate
from ngfkit.pipeline import Experiment, model_from_checkpoint
from ngfkit.train import TrainConfig
from ngfkit.utils import resolve_device

TRAIN = TrainConfig().to_dict()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_user_data(monkeypatch, tmp_path)


def plant_fashion(root: Path) -> None:
    """A tiny Fashion-MNIST (20 train, 5 test images) under ``root/fmnist``."""
    write_fashion_mnist(root / "fmnist")


def plant_model(path: Path, *, attack: bool = True, meta: dict | None = None, trigger: dict | None = None,
                nan: bool = False) -> Path:
    """A smallcnn checkpoint for Fashion-MNIST (backdoored with BadNets unless ``attack=False``)."""
    model = tiny_model()
    if nan:
        with torch.no_grad():
            model.head.weight[0, 0] = float("nan")
    badnets = create_attack("badnets", (1, 28, 28), 10)
    sidecar = {"arch": "smallcnn", "dataset": "fashion-mnist", "attack": badnets.state() if attack else None,
               **(meta or {})}
    return save_checkpoint(path, model, sidecar, trigger if trigger is not None else badnets.trigger)


def plant_report(path: Path, **changes) -> None:
    """A ``bench defences`` report with the CLI's default settings (no cells yet), then ``changes``."""
    report = {"dataset": "fashion-mnist", "arch": "smallcnn", "acc_budget": 3.0, "holdout": 0.2,
              "clean_fraction": 0.01, "train": TRAIN, "defence_options": {}, "cells": [], "before": []}
    path.write_text(json.dumps({**report, **changes}))


class Evil:
    """Unpickling this creates the file ``marker``: the proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant_pickle(path: Path, protocol: int | None) -> None:
    """A malicious checkpoint: protocol 0 or 2 pickles, or torch's zip format (``None``)."""
    payload = {"head.weight": Evil(str(path.parent / "code-ran"))}
    if protocol is None:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=protocol))


def _cell(**drop) -> dict:
    cell = {"attack": "badnets", "defense": "ngf", "seed": 0, "setting": "selected", "acc": 80.0, "asr": 5.0,
            "ra": 50.0, "der": 90.0, "acc_drop": 1.0, "seconds": 1.0}
    return {k: v for k, v in cell.items() if k not in drop}


def _plant_all(tmp: Path) -> None:
    """What every case may refer to: data, a model m.safetensors (+ m.json), a notebook-less folder."""
    plant_fashion(tmp)
    plant_model(tmp / "m.safetensors")
    (tmp / "a-file").write_text("not a folder")


Setup = Callable[[Path], None]
DATA = ["--data-root", "fmnist"]
BENCH = ["--attacks", "badnets", "--defences", "ngf", *DATA]

#: (id, argv, setup, words the error line holds)
CLI_CASES: list[tuple[str, list[str], Setup | None, tuple[str, ...]]] = [
    # -- corruption and lost work ------------------------------------------------------------
    ("purify-json-is-out-sidecar", ["purify", "--model", "m.safetensors", "--out", "p.safetensors", "--json", "p.json"],
     None, ("--json", "sidecar of --out", "p.json")),
    ("attack-json-is-out-sidecar", ["attack", "--out", "a.safetensors", "--json", "a.json", *DATA], None,
     ("sidecar of --out",)),
    ("evaluate-json-is-model-sidecar", ["evaluate", "--model", "m.safetensors", "--json", "m.json"], None,
     ("would overwrite the sidecar of --model",)),
    ("json-takes-a-checkpoint-sidecar-name", ["evaluate", "--model", "m.safetensors", "--json", "o.json"],
     lambda t: plant_model(t / "o.safetensors"), ("sidecar name of o.safetensors", "o-report.json")),
    ("resume-with-other-defence-options", ["bench", "defences", *BENCH, "--json", "r.json",
                                           "--defense-param", "ngf.reg_strength=0"],
     lambda t: plant_report(t / "r.json"), ("other settings", "defence_options")),
    ("resume-with-other-budget", ["bench", "defences", *BENCH, "--json", "r.json", "--acc-budget", "5"],
     lambda t: plant_report(t / "r.json"), ("other settings", "acc_budget")),
    ("json-under-a-file", ["evaluate", "--model", "m.safetensors", "--json", "a-file/r.json"], None,
     ("a-file is a file, not a folder",)),
    ("out-under-a-file", ["purify", "--model", "m.safetensors", "--out", "a-file/p.safetensors"], None,
     ("a-file is a file",)),
    ("purify-out-is-the-model", ["purify", "--model", "m.safetensors", "--out", "m.safetensors"], None,
     ("would overwrite --model",)),
    ("figure-is-json", ["bench", "defences", *BENCH, "--json", "r.json", "--figure", "r.json"], None,
     ("should end in .html",)),
    ("merge-onto-an-input", ["bench", "merge", "r.json", "--json", "r.json"],
     lambda t: plant_report(t / "r.json"), ("would overwrite an input",)),
    # -- misleading results ----------------------------------------------------------------
    *[(f"purify-lr-{v}", ["purify", "--model", "m.safetensors", "--out", "p.safetensors", "--lr", v, *DATA], None,
       ("ngf lr", "finite number > 0")) for v in ("inf", "nan", "-1", "0")],
    *[(f"{cmd}-acc-budget-{v}", [*cmd.split(), *extra, "--acc-budget", v, *DATA], None, ("acc_budget", ">= 0"))
      for v in ("-1", "nan") for cmd, extra in (("purify", ["--model", "m.safetensors", "--out", "p.safetensors"]),
                                                ("demo", ["--defence", "ngf"]), ("bench defences", ["--attacks", "badnets"]))],
    ("evaluate-nan-model", ["evaluate", "--model", "n.safetensors", *DATA], lambda t: plant_model(t / "n.safetensors",
                                                                                               nan=True),
     ("n.safetensors", "head.weight", "NaN")),
    ("purify-nan-model", ["purify", "--model", "n.safetensors", "--out", "p.safetensors", *DATA],
     lambda t: plant_model(t / "n.safetensors", nan=True), ("NaN",)),
    *[(f"attack-epochs-{v}", ["attack", "--out", "a.safetensors", "--epochs", v, *DATA], None, ("--epochs", "at least 1"))
      for v in ("0", "-3")],
    # -- options -------------------------------------------------------------------------------
    *[(f"purify-steps-{v}", ["purify", "--model", "m.safetensors", "--out", "p.safetensors", "--steps", v, *DATA],
       None, ("ngf steps", "at least 1")) for v in ("0", "-5")],
    ("bench-defence-param-steps-0", ["bench", "defences", *BENCH, "--defense-param", "ngf.steps=0"], None,
     ("ngf steps", "at least 1")),
    ("bench-defence-param-unknown", ["bench", "defences", *BENCH, "--defense-param", "ngf.nope=1"], None,
     ("no option 'nope'",)),
    ("attack-train-lr-negative", ["attack", "--out", "a.safetensors", "--train-lr", "-1", *DATA], None,
     ("--train-lr", "> 0")),
    ("attack-param-not-a-number", ["attack", "--out", "a.safetensors", "--attack-param", "patch_size=abc", *DATA],
     None, ("badnets parameter patch_size", "whole number", "'abc'")),
    ("attack-clean-fraction-nan", ["attack", "--out", "a.safetensors", "--clean-fraction", "nan", *DATA], None,
     ("--clean-fraction",)),
    ("device-meta", ["evaluate", "--model", "m.safetensors", "--device", "meta", *DATA], None, ("'meta'", "cpu")),
    ("device-unknown", ["evaluate", "--model", "m.safetensors", "--device", "tpu9", *DATA], None, ("'tpu9'",)),
    ("bench-seeds-0", ["bench", "defences", *BENCH, "--seeds", "0"], None, ("--seeds",)),
    ("bench-holdout-1", ["bench", "defences", *BENCH, "--holdout", "1"], None, ("--holdout",)),
    ("bench-defences-seed", ["bench", "defences", *BENCH, "--seed", "0"], None, ("does not take --seed", "--seeds")),
    ("bench-sharpness-samples-0", ["bench", "sharpness", "--samples", "0", *DATA], None, ("--samples",)),
    ("bench-sharpness-train-lr-nan", ["bench", "sharpness", "--train-lr", "nan", *DATA], None, ("--train-lr",)),
    ("argparse-bad-int", ["purify", "--model", "m.safetensors", "--out", "p.safetensors", "--steps", "x"], None,
     ("invalid int value: 'x'", "ngfkit purify --help")),
    ("argparse-missing-option", ["attack"], None, ("--out", "required")),
    ("argparse-unknown-command", ["purfy"], None, ("invalid choice",)),
    # -- untrusted model files --------------------------------------------------------------
    ("sidecar-attack-without-keys", ["evaluate", "--model", "w.safetensors", *DATA],
     lambda t: plant_model(t / "w.safetensors", meta={"attack": {"name": "wanet"}}), ("w.json", "attack entry")),
    ("sidecar-attack-a-string", ["evaluate", "--model", "w.safetensors", *DATA],
     lambda t: plant_model(t / "w.safetensors", meta={"attack": "wanet"}), ("w.json", "'attack' should be a dict")),
    ("sidecar-arch-a-number", ["evaluate", "--model", "w.safetensors", *DATA],
     lambda t: plant_model(t / "w.safetensors", meta={"arch": 3}), ("'arch' should be a str",)),
    ("sidecar-attack-param-type", ["evaluate", "--model", "w.safetensors", *DATA],
     lambda t: plant_model(t / "w.safetensors", meta={"attack": {**create_attack("badnets", (1, 28, 28), 10).state(),
                                                                 "params": {"patch_size": "big"}}}),
     ("patch_size", "whole number")),
    ("sidecar-attack-other-dataset", ["evaluate", "--model", "w.safetensors", *DATA],
     lambda t: plant_model(t / "w.safetensors", meta={"attack": create_attack("badnets", (3, 32, 32), 10).state()}),
     ("(3, 32, 32)", "fashion-mnist")),
    ("trigger-of-the-wrong-shape", ["evaluate", "--model", "w.safetensors", *DATA],
     lambda t: plant_model(t / "w.safetensors", trigger={"pattern": torch.zeros(3, 5, 5), "mask": torch.zeros(3, 5, 5)}),
     ("trigger tensor", "(3, 5, 5)")),
    ("sidecar-not-json", ["evaluate", "--model", "m.safetensors", *DATA],
     lambda t: (t / "m.json").write_text("{oops"), ("m.json", "not valid JSON")),
    *[(f"pickle-{name}", ["evaluate", "--model", "evil.safetensors", "--arch", "smallcnn", "--dataset",
                          "fashion-mnist", *DATA],
       lambda t, protocol=protocol: plant_pickle(t / "evil.safetensors", protocol), ("pickle", "safetensors"))
      for name, protocol in (("protocol-0", 0), ("protocol-2", 2), ("torch-zip", None))],
    ("truncated-checkpoint", ["evaluate", "--model", "t.safetensors", *DATA],
     lambda t: (t / "t.safetensors").write_bytes((t / "m.safetensors").read_bytes()[:500]), ("corrupt",)),
    # -- report files -------------------------------------------------------------------------
    *[(f"resume-report-{name}", ["bench", "defences", *BENCH, "--json", "r.json"],
       lambda t, text=text: (t / "r.json").write_text(text), words)
      for name, text, words in (("list", "[]", ("not a bench defences report",)),
                                ("null", "null", ("not a bench defences report",)),
                                ("truncated", '{"cells": [', ("cannot read bench report",)),
                                ("other-dataset", json.dumps({"dataset": "cifar10", "cells": [], "before": []}),
                                 ("other settings", "dataset")))],
    ("resume-report-cell-without-asr", ["bench", "defences", *BENCH, "--json", "r.json"],
     lambda t: plant_report(t / "r.json", cells=[_cell(asr=0)]), ("cells[0] lacks 'asr'",)),
    ("resume-report-cells-not-a-list", ["bench", "defences", *BENCH, "--json", "r.json"],
     lambda t: plant_report(t / "r.json", cells={}), ("'cells' should be a list",)),
    ("merge-malformed-cell", ["bench", "merge", "r.json", "s.json", "--json", "merged.json"],
     lambda t: (plant_report(t / "r.json", cells=[_cell()]), plant_report(t / "s.json", cells=[_cell(seed=0)])),
     ("s.json", "lacks 'seed'")),
    ("merge-null-report", ["bench", "merge", "r.json", "s.json"],
     lambda t: (plant_report(t / "r.json"), (t / "s.json").write_text("null")), ("s.json", "not a bench")),
    # -- datasets and the grid ----------------------------------------------------------------
    ("dataset-unknown", ["demo", "--dataset", "nope"], None, ("'nope'", "fashion-mnist")),
    ("data-root-empty", ["demo", "--data-root", "cache-free-empty"], lambda t: (t / "cache-free-empty").mkdir(),
     ("cache-free-empty", "--download")),
    ("grid-out-is-a-file", ["grid", "nb.ipynb", "--param", "x=1", "--out", "a-file"], None, ("a-file is a file",)),
    ("grid-collect-is-a-sidecar-name", ["grid", "nb.ipynb", "--param", "x=1", "--out", "o",
                                        "--collect", "m.json"], None, ("m.json", "sidecar name")),
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes (a change or a new file shows)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, setup, words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(argv: list[str], setup: Setup | None, words: tuple[str, ...], tmp_path: Path,
                       capsys: pytest.CaptureFixture) -> None:
    _plant_all(tmp_path)
    if setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ngfkit: error: "), err
    assert "Traceback" not in out + err
    for word in words:
        assert word in lines[0], lines[0]
    assert snapshot(tmp_path) == before  # nothing written, nothing changed
    assert not (tmp_path / "code-ran").exists()  # no pickle was ever unpickled


def test_case_ids_are_unique() -> None:
    ids = [c[0] for c in CLI_CASES]
    assert len(ids) == len(set(ids))


# --- the Python API: one NgfkitError naming the argument ---------------------------------------

INFO = dataset_info("fashion-mnist")
U8 = torch.uint8


def _nan_checkpoint(tmp: Path) -> Path:
    return plant_model(tmp / "n.safetensors", nan=True)


API_CASES: list[tuple[str, Callable, tuple[str, ...]]] = [
    ("dataset-images-without-channel", lambda t: ImageTensorDataset(torch.zeros(4, 28, 28, dtype=U8), torch.zeros(4),
                                                                    INFO), ("images", "(N, C, H, W)", "unsqueeze")),
    ("dataset-images-other-shape", lambda t: ImageTensorDataset(torch.zeros(4, 3, 28, 28, dtype=U8),
                                                                torch.zeros(4, dtype=torch.long), INFO),
     ("images", "(N, 1, 28, 28)")),
    ("dataset-images-float", lambda t: ImageTensorDataset(torch.rand(4, 1, 28, 28), torch.zeros(4), INFO),
     ("images", "uint8")),
    ("dataset-labels-out-of-range", lambda t: ImageTensorDataset(torch.zeros(4, 1, 28, 28, dtype=U8),
                                                                 torch.tensor([0, 1, 2, 10]), INFO), ("labels", "0..9")),
    ("dataset-labels-negative", lambda t: ImageTensorDataset(torch.zeros(2, 1, 28, 28, dtype=U8), torch.tensor([0, -1]),
                                                             INFO), ("labels", "-1")),
    ("dataset-labels-float", lambda t: ImageTensorDataset(torch.zeros(2, 1, 28, 28, dtype=U8), torch.tensor([0., 1.]),
                                                          INFO), ("labels", "integer", ".long()")),
    ("dataset-labels-one-short", lambda t: ImageTensorDataset(torch.zeros(2, 1, 28, 28, dtype=U8), torch.tensor([0]),
                                                              INFO), ("labels", "one per image")),
    ("evaluate-images-of-another-shape", lambda t: evaluate(tiny_model(), torch.utils.data.TensorDataset(
        torch.rand(3, 3, 32, 32), torch.zeros(3, dtype=torch.long))), ("dataset's images", "(3, 32, 32)")),
    ("evaluate-labels-out-of-range", lambda t: evaluate(tiny_model(), torch.utils.data.TensorDataset(
        torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 12]))), ("dataset's labels", "0..9")),
    ("evaluate-labels-float", lambda t: evaluate(tiny_model(), torch.utils.data.TensorDataset(
        torch.rand(3, 1, 28, 28), torch.tensor([0., 1., 2.]))), ("dataset's labels", "integer")),
    *[(f"purify-ngf-{name}-{value}", lambda t, name=name, value=value: purify(tiny_model(), tiny_clean(8), "ngf",
                                                                               device="cpu", **{name: value}),
       (f"ngf {name}",))
      for name, value in (("lr", float("nan")), ("lr", float("inf")), ("lr", -1.0), ("steps", 0), ("steps", 2.5),
                          ("acc_budget", float("nan")), ("acc_budget", -1.0), ("reg_strength", float("nan")),
                          ("batch_size", 0), ("damping", 0.0), ("momentum", 1.0))],
    *[(f"purify-{method}-{name}", lambda t, method=method, name=name, value=value: purify(
        tiny_model(), tiny_clean(8), method, device="cpu", **{name: value}), (name,))
      for method, name, value in (("ft", "lr", float("inf")), ("ft", "steps", 0), ("ft-last", "lr", float("nan")),
                                  ("ft-sam", "rho", float("nan")), ("fp", "ratio", float("nan")),
                                  ("anp", "eps", float("inf")), ("i-bau", "lr", float("inf")),
                                  ("nad", "teacher_lr", float("nan")))],
    ("train-epochs-0", lambda t: TrainConfig(epochs=0), ("epochs", "at least 1")),
    ("train-lr-nan", lambda t: TrainConfig(lr=float("nan")), ("lr", "finite")),
    ("experiment-clean-fraction", lambda t: Experiment(clean_fraction=1.5), ("clean_fraction",)),
    ("experiment-attack-param-type", lambda t: Experiment(attack_params={"patch_size": "abc"}), ("patch_size",)),
    ("experiment-attack-param-nan", lambda t: Experiment(attack="blend", attack_params={"alpha": float("nan")}),
     ("alpha",)),
    ("device-meta", lambda t: resolve_device("meta"), ("'meta'",)),
    ("load-nan-weights", lambda t: model_from_checkpoint(_nan_checkpoint(t)), ("head.weight", "NaN")),
    ("load-protocol-0-pickle", lambda t: (plant_pickle(t / "p.safetensors", 0), load_checkpoint(t / "p.safetensors")),
     ("pickle",)),
    ("bench-defences-acc-budget-nan", lambda t: __import__("ngfkit.bench.defences", fromlist=["x"]).bench_defences(
        attacks="badnets", defenses="ngf", acc_budget=float("nan")), ("acc_budget",)),
    ("bench-merge-cell-without-key", lambda t: (plant_report(t / "r.json", cells=[_cell(defense=0)]),
                                                __import__("ngfkit.bench.defences", fromlist=["x"]).merge_reports(
                                                    [t / "r.json"])), ("lacks 'defense'",)),
]


@pytest.mark.parametrize("call, words", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(call: Callable, words: tuple[str, ...], tmp_path: Path) -> None:
    message = one_line_error(call, tmp_path)
    for word in words:
        assert word.lower() in message.lower(), message
    assert not (tmp_path / "code-ran").exists()


def test_pickles_planted_anywhere_never_run(tmp_path: Path) -> None:
    """The malicious-pickle regression: as a checkpoint (every protocol), under a checkpoint's name
    with a valid sidecar, and as a cached model, nothing executes."""
    for protocol in (0, 1, 2, 4, None):
        path = tmp_path / f"evil{protocol}.safetensors"
        plant_pickle(path, protocol)
        (path.with_suffix(".json")).write_text(json.dumps({"arch": "smallcnn", "dataset": "fashion-mnist"}))
        assert "pickle" in one_line_error(model_from_checkpoint, path)
    cached = tmp_path / "cache" / "models" / f"{Experiment().key()}.safetensors"
    cached.parent.mkdir(parents=True)
    plant_pickle(cached, 2)
    from ngfkit.pipeline import load_or_train

    assert "pickle" in one_line_error(load_or_train, Experiment())
    assert not (tmp_path / "code-ran").exists()


def test_a_defence_that_returns_nan_weights_fails_and_saves_nothing(tmp_path: Path, monkeypatch) -> None:
    """``run_defence`` refuses a purified model with NaN weights instead of measuring it."""
    from ngfkit import pipeline

    def broken(model, clean, method, **options):
        out = tiny_model()
        with torch.no_grad():
            out.head.bias.fill_(float("inf"))
        return out, {"changed": "head"}

    monkeypatch.setattr(pipeline, "purify", broken)
    splits = pipeline.Splits(None, tiny_clean(8), tiny_clean(8, seed=1))
    message = one_line_error(pipeline.run_defence, tiny_model(), None, splits, "ngf", device="cpu", before={"acc": 1})
    assert "purified by 'ngf'" in message and "head.bias" in message and "nothing was saved" in message
    assert snapshot(tmp_path) == {}
