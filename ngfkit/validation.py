"""Checks of user-given values, shared by the CLI and the Python API.

Each option is checked once, where the library first receives it (a config's ``__post_init__``,
a benchmark's arguments), so that the command line and a Python call get the same
:class:`~ngfkit.errors.NgfkitError` line: the option's name as the caller spells it, what it
must be, what it was, and (where there is one) the fix. A non-finite number is never
accepted: ``nan`` fails every comparison and would otherwise slip through ``x < 0`` checks
as the weakest or strongest setting.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .errors import NgfkitError


def _tail(fix: str) -> str:
    return f"; {fix}" if fix else ""


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def number(value: Any, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, fix: str = "") -> float:
    """``value`` as a float, checked finite and in range; else one error naming ``name``.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``.
    """
    where = _range_text(low, high, low_open, high_open)
    what = f"a finite number{' ' + where if where else ''}"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise NgfkitError(f"{name} must be {what}, got {value!r}{_tail(fix)}")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise NgfkitError(f"{name} must be {what}, got {value:g}{_tail(fix)}")
    if high is not None and (value >= high if high_open else value > high):
        raise NgfkitError(f"{name} must be {what}, got {value:g}{_tail(fix)}")
    return value


def positive(value: Any, name: str, fix: str = "") -> float:
    """A finite number > 0 (a learning rate, a radius)."""
    return number(value, name, low=0.0, low_open=True, fix=fix)


def fraction(value: Any, name: str, fix: str = "") -> float:
    """A finite number strictly between 0 and 1 (a share of a data set)."""
    return number(value, name, low=0.0, high=1.0, low_open=True, high_open=True, fix=fix)


def whole(value: Any, name: str, *, least: int | None = 0, fix: str = "") -> int:
    """``value`` as an int of at least ``least`` (None: any; an integral float such as JSON's
    ``2000.0`` is accepted); else one error naming ``name``."""
    if isinstance(value, bool):
        ok = False
    elif isinstance(value, Integral):
        ok = True
    else:
        ok = isinstance(value, Real) and math.isfinite(float(value)) and float(value).is_integer()
    if not ok or (least is not None and int(value) < least):
        bound = f" of at least {least}" if least is not None else ""
        raise NgfkitError(f"{name} must be a whole number{bound}, got {value!r}{_tail(fix)}")
    return int(value)


def like_default(value: Any, default: Any, name: str) -> None:
    """Check a user-given option against the type of its default: a number for a number (finite),
    true/false for a flag, text for text; defaults of other types (tuples, None) are not checked.
    Catches ``--attack-param patch_size=abc`` before it reaches tensor code."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise NgfkitError(f"{name} is a flag and takes true or false, got {value!r}")
    elif isinstance(default, Integral):
        whole(value, name, least=None)
    elif isinstance(default, Real):
        number(value, name)
    elif isinstance(default, str) and not isinstance(value, str):
        raise NgfkitError(f"{name} takes text, got {value!r}")


def like_defaults(options: Mapping[str, Any], defaults: Mapping[str, Any], owner: str) -> None:
    """:func:`like_default` for every given option that has a default (``owner`` prefixes names)."""
    for key, value in options.items():
        if key in defaults:
            like_default(value, defaults[key], f"{owner} {key}")


def finite_tensors(tensors: Mapping[str, Tensor], source: str, fix: str) -> None:
    """Refuse NaN or infinite values in any floating-point tensor of ``tensors``: such a model
    predicts class 0 for everything (argmax of NaN) and would score as a real result."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NgfkitError(f"{source}: tensor {key!r} holds NaN or infinite values{_tail(fix)}")


def finite_model(model: nn.Module, source: str, fix: str) -> None:
    """:func:`finite_tensors` on a model's parameters and buffers."""
    finite_tensors(model.state_dict(), source, fix)


def labels(values: Tensor, name: str, num_classes: int | None = None) -> Tensor:
    """Class labels ``(N,)``: whole numbers in ``0 .. num_classes - 1``; returned as int64."""
    values = torch.as_tensor(values)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise NgfkitError(f"{name} must hold integer class indices, got dtype {values.dtype}; "
                          f"convert them with .long()")
    values = values.to(torch.int64)
    if values.numel():
        low, high = int(values.min()), int(values.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
            raise NgfkitError(f"{name} must be class indices in {bound}, got values from {low} to {high}")
    return values


def image_batch(images: Tensor, name: str, image_shape: tuple[int, ...] | None = None) -> None:
    """Images ``(N, C, H, W)``, with ``(C, H, W) == image_shape`` when that is given."""
    shape = tuple(images.shape)
    if images.dim() != 4:
        raise NgfkitError(f"{name} must be a batch shaped (N, C, H, W), got shape {shape}"
                          + ("; add a channel axis with .unsqueeze(1)" if images.dim() == 3 else ""))
    if image_shape is not None and shape[1:] != tuple(image_shape):
        raise NgfkitError(f"{name} must be shaped (N, {', '.join(map(str, image_shape))}), got {shape}")
