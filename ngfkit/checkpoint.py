"""Checkpoints: weights (and trigger tensors) in safetensors, provenance in a JSON sidecar.

``model.safetensors`` holds ``model.<name>`` tensors and, for backdoored models, the attack's
``trigger.<name>`` tensors; ``model.json`` beside it holds the architecture, dataset, attack
parameters, seed, training config, versions and metrics. Nothing is ever unpickled: a
backdoored model may come from someone you should not trust.
"""
from __future__ import annotations

import json
import pickletools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from . import validation as check
from .errors import NgfkitError
from .utils import atomic_path, write_json

PICKLE_HINT = ("ngfkit reads only safetensors because unpickling can run arbitrary code; if you trust the "
               "file, convert it once: python -c \"import torch, safetensors.torch as s; "
               "s.save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')\"")


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


@dataclass
class Checkpoint:
    """Loaded tensors: ``weights`` (a state dict), ``trigger`` tensors, and ``meta`` from the sidecar."""

    weights: dict[str, Tensor]
    trigger: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    trigger: dict[str, Tensor] | None = None) -> Path:
    """Write ``path`` (safetensors) and its JSON sidecar, each atomically."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"trigger.{k}": v.detach().cpu().contiguous() for k, v in (trigger or {}).items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "ngfkit", "arch": str(meta.get("arch", ""))})
    write_json(sidecar_path(path), meta)
    return path


def save_tensors(path: str | Path, tensors: dict[str, Tensor]) -> Path:
    """Write a flat dict of tensors as safetensors, atomically (used for cached learned triggers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    return path


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file written by :func:`save_tensors`."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise NgfkitError(f"{path} is not a readable safetensors file ({err}); delete it to rebuild it") from None


def _looks_like_pickle(path: Path) -> bool:
    """A torch zip archive, or bytes that parse as pickle opcodes up to STOP (any protocol, 0 too).
    :mod:`pickletools` only decodes the opcodes; nothing is imported or called."""
    raw = path.read_bytes()
    if raw.startswith(b"PK\x03\x04"):
        return True
    try:
        ops = [op.name for op, _, _ in pickletools.genops(raw)]
    except Exception:  # any decoding failure: not a pickle
        return False
    return bool(ops) and ops[-1] == "STOP"


#: what each key of a sidecar must hold when present (a sidecar comes with an untrusted model)
_SIDECAR_TYPES = {"arch": str, "dataset": str, "attack": dict, "experiment": dict, "metrics": dict}
#: the keys of a sidecar's ``attack`` entry (:meth:`ngfkit.attacks.Attack.state`) and their types
_ATTACK_TYPES = {"name": str, "image_shape": list, "num_classes": int, "target": int, "poison_rate": (int, float),
                 "mode": (str, type(None)), "seed": int, "params": dict}


def check_sidecar(meta: Any, sidecar: Path) -> dict[str, Any]:
    """``meta`` checked against the sidecar's schema (the keys ngfkit reads back, with their
    types); anything else is one error naming the key and the fix."""
    fix = f"delete {sidecar.name} and pass --arch and --dataset, or re-create the model with ngfkit"
    if not isinstance(meta, dict):
        raise NgfkitError(f"{sidecar} is not an ngfkit sidecar (a JSON object); {fix}")
    for key, kind in _SIDECAR_TYPES.items():
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise NgfkitError(f"{sidecar}: {key!r} should be a {kind.__name__}, got {meta[key]!r:.60}; {fix}")
    attack = meta.get("attack")
    if attack is not None:
        for key, kind in _ATTACK_TYPES.items():
            value = attack.get(key)
            if key not in attack or isinstance(value, bool) or not isinstance(value, kind):
                raise NgfkitError(f"{sidecar}: the attack entry lacks a valid {key!r} (got {value!r:.60}); {fix}")
        if len(attack["image_shape"]) != 3 or not all(isinstance(v, int) and v > 0 for v in attack["image_shape"]):
            raise NgfkitError(f"{sidecar}: the attack's image_shape should be [C, H, W], got {attack['image_shape']}; "
                              f"{fix}")
    return meta


def check_trigger(expected: dict[str, Tensor], given: dict[str, Tensor], source: str) -> None:
    """The trigger tensors of a checkpoint have the shapes the attack builds (``expected``) and
    finite values: a wrong one would fail deep inside the attack or poison every image."""
    for key, tensor in expected.items():
        if key in given and tuple(given[key].shape) != tuple(tensor.shape):
            raise NgfkitError(f"{source}: trigger tensor {key!r} has shape {tuple(given[key].shape)}, but the attack "
                              f"expects {tuple(tensor.shape)}; the file was not written by ngfkit for this attack")
    check.finite_tensors({f"trigger.{k}": v for k, v in given.items()}, source, "re-create or re-download the model")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a safetensors checkpoint (and its sidecar, if present) without executing any code."""
    path = Path(path)
    if not path.is_file():
        raise NgfkitError(f"checkpoint {path} not found; train one with `ngfkit attack --out {path}` or check the path")
    try:
        tensors = load_file(str(path))  # safetensors never unpickles, so trying it first is safe
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        if _looks_like_pickle(path):
            raise NgfkitError(f"{path} is a pickle file (torch.save), not safetensors; {PICKLE_HINT}") from None
        raise NgfkitError(f"{path} is not a readable safetensors file ({str(error).splitlines()[0]}); "
                          f"it may be truncated or corrupt: re-create or re-download it") from None
    meta: dict[str, Any] = {}
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NgfkitError(f"{sidecar} is not valid JSON; delete it and pass --arch and --dataset") from None
        meta = check_sidecar(meta, sidecar)
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith("trigger.")}
    trigger = {k.removeprefix("trigger."): v for k, v in tensors.items() if k.startswith("trigger.")}
    return Checkpoint(weights, trigger, meta)


def load_weights(model: nn.Module, weights: dict[str, Tensor], *, source: str, arch: str) -> None:
    """``model.load_state_dict`` with one-line errors for another architecture or class count."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise NgfkitError(f"the weights in {source} do not fit architecture {arch!r} ({detail}); "
                          f"pass the --arch the model was trained with")
    for key, tensor in expected.items():
        if weights[key].shape != tensor.shape:
            hint = ("the number of classes differs: pick the matching --dataset"
                    if key.endswith(("head.weight", "head.bias", "fc.weight", "fc.bias"))
                    else "pass the --arch and --dataset the model was trained with")
            raise NgfkitError(f"{source}: tensor {key!r} has shape {tuple(weights[key].shape)}, but {arch!r} "
                              f"here expects {tuple(tensor.shape)}; {hint}")
    # a NaN model scores C-ACC 10 %, ASR 100 % (argmax of NaN is class 0): refuse it, do not measure it
    check.finite_tensors(weights, source, "the model is broken; re-create or re-download it")
    model.load_state_dict(weights)
