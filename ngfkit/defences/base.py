"""The defence interface: every defence turns a (possibly backdoored) model and a small clean
set into a purified model plus a history. Defences differ only in what they optimise; all of
them train through :func:`ngfkit.train.train_model`."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import NgfkitError
from ..registry import Registry

DEFENCES: Registry[type["Defence"]] = Registry("defence")


class Defence:
    """Base class. Subclasses set ``name`` and ``Config`` (a dataclass) and implement :meth:`run`.

    ``strength`` names the one option that sets how hard the defence pushes (a learning rate,
    a number of steps, a pruning threshold…) and ``strength_grid`` the values a benchmark tries,
    weakest first; the config's default for that option is the authors' setting.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    strength: ClassVar[str] = ""
    strength_grid: ClassVar[tuple] = ()

    def __init__(self, **options: Any):
        fields = {f.name for f in dataclasses.fields(self.Config)}
        unknown = set(options) - fields
        if unknown:
            raise NgfkitError(f"defence {self.name!r} has no option {sorted(unknown)[0]!r}; "
                              f"its options are: {', '.join(sorted(fields))}")
        self.config = self.Config(**options)

    def run(self, model: nn.Module, clean_data: Dataset, *, device: torch.device,
            progress: bool) -> tuple[nn.Module, dict]:
        raise NotImplementedError

    def with_options(self, **options: Any) -> "Defence":
        """A copy of this defence with some options changed."""
        return type(self)(**{**dataclasses.asdict(self.config), **options})

    def path(self, model: nn.Module, clean_data: Dataset, values: tuple, *, device: torch.device,
             progress: bool) -> Iterator[tuple[Any, nn.Module]]:
        """``(value, purified model)`` for each strength value, weakest first.

        The default runs the defence once per value; defences whose strength is an amount of
        work (steps, rounds, a pruning threshold) override this to read every value off one run.
        """
        for value in values:
            purified, _ = self.with_options(**{self.strength: value}).run(
                model, clean_data, device=device, progress=progress)
            yield value, purified


def purify(model: nn.Module, clean_data: Dataset, method: str = "ngf", *, device: str | torch.device = "cpu",
           progress: bool = True, **options: Any) -> tuple[nn.Module, dict]:
    """Purify ``model`` with the defence ``method`` using only ``clean_data``.

    The input model is left untouched. Returns ``(purified_model, history)``; the history
    always holds ``"method"``, ``"config"`` and ``"seconds"``, plus what the defence records
    (for NGF: the loss per step, clean-validation accuracy per step, the chosen setting).
    """
    defence = DEFENCES.get(method)(**options)
    if len(clean_data) == 0:
        raise NgfkitError("the clean set is empty; give the defence at least a few clean images")
    start = time.perf_counter()
    purified, history = defence.run(model, clean_data, device=torch.device(device), progress=progress)
    history = {"method": method, "config": dataclasses.asdict(defence.config), **history,
               "seconds": time.perf_counter() - start}
    return purified, history
