"""The CLI run in-process: every problem the user can fix ends with exit status 2, one
``ngfkit: error:`` line on stderr, and no output file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ngfkit.checkpoint import save_checkpoint
from fashion_helpers import isolate_user_data, write_fashion_mnist
from ngfkit.cli import main
from ngfkit.models import build_model


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_user_data(monkeypatch, tmp_path)


@pytest.fixture
def fashion_root(tmp_path: Path) -> Path:
    """A tiny Fashion-MNIST (20 train, 5 test images) in the gzipped idx format."""
    write_fashion_mnist(tmp_path / "data" / "fashion-mnist")
    return tmp_path / "data"


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def run_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``ngfkit argv``; check status 2 and a single error line; return that line."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ngfkit: error: ")
    return lines[0]


def write_model(path: Path, **meta) -> Path:
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, (1, 28, 28), (0.5,), (0.5,))
    return save_checkpoint(path, model, {"arch": "smallcnn", "dataset": "fashion-mnist", **meta})


# --- demo ------------------------------------------------------------------------------------


def test_demo_unknown_dataset(capsys, tmp_path: Path) -> None:
    before = files_under(tmp_path)
    line = run_error(capsys, ["demo", "--dataset", "nope", "--json", "out.json"])
    assert "'nope'" in line and "fashion-mnist" in line and "cifar10" in line
    assert files_under(tmp_path) == before


def test_demo_unknown_arch(capsys, tmp_path: Path, fashion_root: Path) -> None:
    before = files_under(tmp_path)
    line = run_error(capsys, ["demo", "--arch", "nope", "--data-root", str(fashion_root), "--json", "out.json"])
    assert "'nope'" in line and "smallcnn" in line and "preact-resnet18" in line
    assert files_under(tmp_path) == before  # no model cached, no JSON


def test_demo_unknown_attack(capsys, tmp_path: Path, fashion_root: Path) -> None:
    before = files_under(tmp_path)
    line = run_error(capsys, ["demo", "--attack", "nope", "--data-root", str(fashion_root), "--json", "out.json"])
    assert "'nope'" in line and "badnets" in line and "blend" in line
    assert files_under(tmp_path) == before


def test_demo_without_fashion_mnist(capsys, tmp_path: Path) -> None:
    line = run_error(capsys, ["demo", "--json", "out.json"])
    assert "Fashion-MNIST" in line and "not found" in line
    for fix in ("dataset-fashion-mnist", "--data-root", "--download"):
        assert fix in line
    assert not (tmp_path / "out.json").exists()
    assert not (tmp_path / "cache" / "models").exists()


def test_demo_with_an_empty_data_root(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    line = run_error(capsys, ["demo", "--data-root", str(tmp_path / "empty")])
    assert str(tmp_path / "empty") in line and "--download" in line


# --- purify / evaluate -----------------------------------------------------------------------


def test_purify_missing_model(capsys, tmp_path: Path) -> None:
    line = run_error(capsys, ["purify", "--model", "missing.safetensors", "--out", "x.safetensors",
                              "--json", "report.json"])
    assert "missing.safetensors" in line and "not found" in line
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("command", ["purify", "evaluate"])
def test_pickle_model(capsys, tmp_path: Path, command: str) -> None:
    torch.manual_seed(0)
    torch.save(build_model("smallcnn", 10, (1, 28, 28), (0.5,), (0.5,)).state_dict(), tmp_path / "model.pt")
    argv = [command, "--model", "model.pt", "--arch", "smallcnn", "--dataset", "fashion-mnist", "--json", "report.json"]
    if command == "purify":
        argv += ["--out", "x.safetensors"]
    line = run_error(capsys, argv)
    assert "pickle" in line and "safetensors" in line
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("command", ["evaluate", "purify"])
def test_corrupt_model(capsys, tmp_path: Path, command: str) -> None:
    good = write_model(tmp_path / "good.safetensors")
    raw = good.read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "bad.json").write_text((tmp_path / "good.json").read_text())
    argv = [command, "--model", "bad.safetensors", "--json", "report.json"]
    if command == "purify":
        argv += ["--out", "x.safetensors"]
    line = run_error(capsys, argv)
    assert "bad.safetensors" in line and "corrupt" in line
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "report.json").exists()


def test_evaluate_model_for_another_arch(capsys, tmp_path: Path) -> None:
    write_model(tmp_path / "m.safetensors")
    line = run_error(capsys, ["evaluate", "--model", "m.safetensors", "--arch", "preact-resnet18"])
    assert "'smallcnn'" in line and "--arch" in line


def test_evaluate_with_a_learned_attack_the_model_does_not_hold(capsys, tmp_path: Path) -> None:
    write_model(tmp_path / "m.safetensors")
    line = run_error(capsys, ["evaluate", "--model", "m.safetensors", "--attack", "trojan-one"])
    assert "'trojan-one'" in line and "learned trigger" in line


def test_purify_wrong_out_suffix(capsys, tmp_path: Path) -> None:
    write_model(tmp_path / "m.safetensors")
    line = run_error(capsys, ["purify", "--model", "m.safetensors", "--out", "out.txt"])
    assert "out.txt" in line and ".safetensors" in line
    assert not (tmp_path / "out.txt").exists()


def test_purify_out_is_a_folder(capsys, tmp_path: Path) -> None:
    write_model(tmp_path / "m.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    line = run_error(capsys, ["purify", "--model", "m.safetensors", "--out", "dir.safetensors"])
    assert "folder" in line


@pytest.mark.parametrize("argv", [
    ["evaluate", "--model", "m.safetensors"],
    ["demo"],
    ["purify", "--model", "m.safetensors", "--out", "p.safetensors"],
], ids=["evaluate", "demo", "purify"])
def test_json_wrong_suffix(capsys, tmp_path: Path, argv: list[str]) -> None:
    write_model(tmp_path / "m.safetensors")
    before = files_under(tmp_path)
    line = run_error(capsys, [*argv, "--json", "out.txt"])
    assert "out.txt" in line and ".json" in line
    assert files_under(tmp_path) == before


# --- list ------------------------------------------------------------------------------------


def test_list(capsys) -> None:
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    listing = {}
    for line in out.splitlines():
        key, _, names = line.partition(":")
        listing[key.strip()] = {n.strip() for n in names.split(",")}
    assert {"badnets", "blend"} <= listing["attacks"]
    assert "ngf" in listing["defenses"]
    assert {"smallcnn", "preact-resnet18"} <= listing["architectures"]
    assert {"fashion-mnist", "cifar10", "gtsrb"} <= listing["datasets"]


@pytest.mark.parametrize("extra,expected", [
    (["--poison-rate", "1.5"], "poison rate must be in (0, 1)"),
    (["--poison-rate", "0"], "poison rate must be in (0, 1)"),
    (["--target", "10"], "target class 10 is outside the 10 classes"),
    (["--attack-param", "bogus=1"], "has no parameter 'bogus'"),
    (["--attack-param", "alpha"], "--attack-param takes KEY=VALUE"),
    (["--attack", "blend", "--attack-param", "alpha=2"], "blend alpha must be in (0, 1)"),
])
def test_bad_attack_settings(capsys, tmp_path: Path, fashion_root: Path, extra: list[str], expected: str) -> None:
    before = files_under(tmp_path)
    line = run_error(capsys, ["attack", "--out", "m.safetensors", "--data-root", str(fashion_root), *extra])
    assert expected in line
    assert files_under(tmp_path) == before


def test_bench_unknown_attack(capsys, tmp_path: Path, fashion_root: Path) -> None:
    before = files_under(tmp_path)
    line = run_error(capsys, ["bench", "attacks", "--attacks", "badnets,nope", "--data-root", str(fashion_root),
                              "--json", "out.json"])
    assert "'nope'" in line and "badnets" in line and "all" in line
    assert files_under(tmp_path) == before
