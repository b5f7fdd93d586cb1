"""Tests for ngfkit.checkpoint and pipeline.model_from_checkpoint: round trips, atomic writes,
and one-line errors for every checkpoint a user might hand in by mistake."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ngfkit import checkpoint as ckpt_module
from ngfkit.attacks import create_attack
from ngfkit.checkpoint import load_checkpoint, save_checkpoint
from ngfkit.data import dataset_info
from ngfkit.errors import NgfkitError
from ngfkit.models import build_model
from ngfkit.pipeline import model_from_checkpoint


def smallcnn(num_classes: int = 10, shape=(1, 28, 28), seed: int = 0):
    torch.manual_seed(seed)
    info_mean, info_std = (0.5,) * shape[0], (0.5,) * shape[0]
    model = build_model("smallcnn", num_classes, shape, info_mean, info_std)
    with torch.no_grad():  # non-default BatchNorm statistics, so that the buffers are checked too
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    return model


def fashion_model(seed: int = 0):
    info = dataset_info("fashion-mnist")
    torch.manual_seed(seed)
    return build_model("smallcnn", info.num_classes, info.image_shape, info.mean, info.std)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# --- round trips -----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = smallcnn()
    trigger = {"pattern": torch.rand(1, 28, 28), "mask": torch.zeros(1, 28, 28)}
    meta = {"arch": "smallcnn", "dataset": "fashion-mnist", "metrics": {"acc": 91.5}, "seed": 3}
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta, trigger)
    assert Path(path) == tmp_path / "m.safetensors" and path.is_file()
    assert (tmp_path / "m.json").is_file()
    loaded = load_checkpoint(path)
    assert loaded.meta == meta
    assert loaded.trigger.keys() == trigger.keys()
    for key, tensor in trigger.items():
        assert torch.equal(loaded.trigger[key], tensor)
    assert loaded.weights.keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.weights[key], tensor), key
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.safetensors"]  # no temporary files left


def test_load_without_sidecar(tmp_path: Path) -> None:
    model = smallcnn()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"arch": "smallcnn"})
    (tmp_path / "m.json").unlink()
    loaded = load_checkpoint(path)
    assert loaded.meta == {} and loaded.trigger == {}
    assert loaded.weights.keys() == model.state_dict().keys()


@pytest.mark.parametrize("attack_name", ["badnets", "blend", None])
def test_model_from_checkpoint_round_trip(tmp_path: Path, attack_name: str | None) -> None:
    model = fashion_model(seed=1)
    attack = create_attack(attack_name, (1, 28, 28), 10, target=3, seed=5) if attack_name else None
    meta = {"arch": "smallcnn", "dataset": "fashion-mnist", "attack": attack.state() if attack else None,
            "metrics": {"acc": 90.0, "asr": 99.0}}
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta, attack.trigger if attack else None)
    rebuilt, rebuilt_attack, rebuilt_meta = model_from_checkpoint(path)
    assert rebuilt_meta == meta
    assert not rebuilt.training
    assert_same_weights(rebuilt, model)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
    if attack is None:
        assert rebuilt_attack is None
    else:
        assert rebuilt_attack.state() == attack.state()
        assert torch.equal(rebuilt_attack.apply(x), attack.apply(x))


def test_model_from_checkpoint_keeps_the_saved_trigger(tmp_path: Path) -> None:
    """The trigger comes from the file, not from re-running the seed."""
    attack = create_attack("blend", (1, 28, 28), 10, seed=0)
    saved = {"pattern": torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(99))}
    meta = {"arch": "smallcnn", "dataset": "fashion-mnist", "attack": attack.state()}
    path = save_checkpoint(tmp_path / "m.safetensors", fashion_model(), meta, saved)
    _, rebuilt_attack, _ = model_from_checkpoint(path)
    assert torch.equal(rebuilt_attack.trigger["pattern"], saved["pattern"])


def test_model_from_checkpoint_without_sidecar_needs_arch_and_dataset(tmp_path: Path) -> None:
    model = fashion_model(seed=2)
    path = save_checkpoint(tmp_path / "m.safetensors", model, {})
    (tmp_path / "m.json").unlink()
    with pytest.raises(NgfkitError) as err:
        model_from_checkpoint(path, arch="smallcnn")
    msg = one_line(err)
    assert "--arch" in msg and "--dataset" in msg
    rebuilt, attack, _ = model_from_checkpoint(path, arch="smallcnn", dataset="fashion-mnist")
    assert attack is None
    assert_same_weights(rebuilt, model)


def test_round_trip_of_a_header_starting_with_0x80(tmp_path: Path) -> None:
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    model = build_model("smallcnn", info.num_classes, info.image_shape, info.mean, info.std)
    attack = create_attack("blend", info.image_shape, info.num_classes)
    meta = {"arch": "smallcnn", "dataset": "cifar10", "attack": attack.state()}
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta, attack.trigger)
    rebuilt, rebuilt_attack, _ = model_from_checkpoint(path)
    assert_same_weights(rebuilt, model)
    assert torch.equal(rebuilt_attack.trigger["pattern"], attack.trigger["pattern"])


def test_any_safetensors_header_length_loads(tmp_path: Path) -> None:
    """A valid file must load whatever its header length; the arch string in the metadata shifts it."""
    model = torch.nn.Linear(2, 2)
    refused = []
    for n in range(0, 256, 8):  # the header is padded to 8 bytes, so this walks every length mod 256
        path = tmp_path / f"m{n}.safetensors"
        save_checkpoint(path, model, {"arch": "x" * n})
        try:
            load_checkpoint(path)
        except NgfkitError:
            refused.append(n)
    assert refused == []


# --- atomic save -----------------------------------------------------------------------------


def failing_save_file(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"half\":")  # some bytes, then the disk fills up
    raise OSError(28, "No space left on device")


def test_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt_module, "save_file", failing_save_file)
    target = tmp_path / "out" / "m.safetensors"
    with pytest.raises(OSError):
        save_checkpoint(target, smallcnn(), {"arch": "smallcnn", "dataset": "fashion-mnist"})
    assert not target.exists()
    assert not (tmp_path / "out" / "m.json").exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary files either


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = fashion_model(seed=0)
    target = tmp_path / "m.safetensors"
    save_checkpoint(target, old, {"arch": "smallcnn", "dataset": "fashion-mnist"})
    monkeypatch.setattr(ckpt_module, "save_file", failing_save_file)
    with pytest.raises(OSError):
        save_checkpoint(target, fashion_model(seed=1), {"arch": "smallcnn", "dataset": "fashion-mnist", "new": 1})
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.safetensors"]
    monkeypatch.undo()
    rebuilt, _, meta = model_from_checkpoint(target)
    assert "new" not in meta
    assert_same_weights(rebuilt, old)


# --- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(NgfkitError) as err:
            load(path)
        msg = one_line(err)
        assert str(path) in msg and "not found" in msg


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_pickle_checkpoint_is_refused(tmp_path: Path, zipfile: bool) -> None:
    path = tmp_path / "model.pt"
    torch.save(smallcnn().state_dict(), path, _use_new_zipfile_serialization=zipfile)
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(NgfkitError) as err:
            load(path)
        msg = one_line(err)
        assert "pickle" in msg and "safetensors" in msg and str(path) in msg


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_checkpoint_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.safetensors"
    torch.save({"head.weight": _Payload(marker)}, path)
    with pytest.raises(NgfkitError, match="pickle"):
        model_from_checkpoint(path, arch="smallcnn", dataset="fashion-mnist")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "header-only", "garbage", "empty"])
def test_corrupt_safetensors(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, smallcnn(), {"arch": "smallcnn", "dataset": "fashion-mnist"})
    raw = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes({"truncated": raw[: len(raw) // 2], "header-only": raw[:20],
                     "garbage": b"this is not a safetensors file, honestly", "empty": b""}[damage])
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(NgfkitError) as err:
            load(bad)
        msg = one_line(err)
        assert str(bad) in msg and "safetensors" in msg and "corrupt" in msg


@pytest.mark.parametrize("sidecar, loader", [("{not json", load_checkpoint),
                                             ("[1, 2, 3]\n", model_from_checkpoint)],
                         ids=["invalid-json", "not-an-object"])
def test_bad_sidecar(tmp_path: Path, sidecar: str, loader) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", fashion_model(), {"arch": "smallcnn"})
    (tmp_path / "m.json").write_text(sidecar)
    with pytest.raises(NgfkitError) as err:
        loader(path)
    assert "m.json" in one_line(err)


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    torch.manual_seed(0)
    other = build_model("preact-resnet18", 10, (1, 28, 28), (0.5,), (0.5,))
    path = tmp_path / "resnet.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in other.state_dict().items()}, str(path))  # no sidecar
    with pytest.raises(NgfkitError) as err:
        model_from_checkpoint(path, arch="smallcnn", dataset="fashion-mnist")
    msg = one_line(err)
    assert str(path) in msg and "'smallcnn'" in msg and "--arch" in msg


def test_class_count_mismatch(tmp_path: Path) -> None:
    gtsrb_like = smallcnn(num_classes=43, shape=(1, 28, 28))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, gtsrb_like, {"arch": "smallcnn", "dataset": "fashion-mnist"})
    with pytest.raises(NgfkitError) as err:
        model_from_checkpoint(path)
    msg = one_line(err)
    assert "head.weight" in msg and "(43, 256)" in msg and "(10, 256)" in msg and "--dataset" in msg
    assert "classes" in msg


@pytest.mark.parametrize("given", [{"arch": "preact-resnet18"}, {"dataset": "cifar10"}])
def test_sidecar_disagrees_with_the_user(tmp_path: Path, given: dict) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", fashion_model(),
                           {"arch": "smallcnn", "dataset": "fashion-mnist"})
    with pytest.raises(NgfkitError) as err:
        model_from_checkpoint(path, **given)
    msg = one_line(err)
    (name, value), = given.items()
    stored = {"arch": "smallcnn", "dataset": "fashion-mnist"}[name]
    assert repr(value) in msg and repr(stored) in msg and f"--{name}" in msg


def test_sidecar_agreeing_with_the_user_is_fine(tmp_path: Path) -> None:
    model = fashion_model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"arch": "smallcnn", "dataset": "fashion-mnist"})
    rebuilt, _, _ = model_from_checkpoint(path, arch="smallcnn", dataset="fashion-mnist")
    assert_same_weights(rebuilt, model)
