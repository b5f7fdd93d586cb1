"""Checkpoints: weights (and trigger tensors) in safetensors, provenance in a JSON sidecar.

``model.safetensors`` holds ``model.<name>`` tensors and, for backdoored models, the attack's
``trigger.<name>`` tensors; ``model.json`` beside it holds the architecture, dataset, attack
parameters, seed, training config, versions and metrics. Nothing is ever unpickled: a
backdoored model may come from someone you should not trust.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

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
    head = path.read_bytes()[:4]
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


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
        except json.JSONDecodeError:
            raise NgfkitError(f"{sidecar} is not valid JSON; delete it and pass --arch and --dataset") from None
        if not isinstance(meta, dict):
            raise NgfkitError(f"{sidecar} is not an ngfkit sidecar (a JSON object); delete it and pass --arch and --dataset")
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
    model.load_state_dict(weights)
