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

from .. import validation as check
from ..batches import iterate_batches
from ..errors import NgfkitError
from ..models import named_classifier
from ..registry import Registry
from ..utils import resolve_device

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

    def run(self, model: nn.Module, clean_data: Dataset, *, device: torch.device, progress: bool,
            features: Any = None) -> tuple[nn.Module, dict]:
        """``(purified copy of model, history)``; ``features`` is a
        :class:`~ngfkit.defences.classifier_only.FeatureCache` that classifier-only defences may read from."""
        raise NotImplementedError

    #: whether the defence needs to know the model's classifier layer (classifier-only defences do)
    needs_classifier: ClassVar[bool] = False

    def head_only(self, model: nn.Module) -> bool:
        """Whether this defence, as configured, changes nothing of ``model`` but its classifier."""
        return False

    def with_options(self, **options: Any) -> "Defence":
        """A copy of this defence with some options changed."""
        return type(self)(**{**dataclasses.asdict(self.config), **options})

    def path(self, model: nn.Module, clean_data: Dataset, values: tuple, *, device: torch.device,
             progress: bool, features: Any = None) -> Iterator[tuple[Any, nn.Module]]:
        """``(value, purified model)`` for each strength value, weakest first.

        The default runs the defence once per value; defences whose strength is an amount of
        work (steps, rounds, a pruning threshold) override this to read every value off one run.
        """
        for value in values:
            purified, _ = self.with_options(**{self.strength: value}).run(
                model, clean_data, device=device, progress=progress, features=features)
            yield value, purified


def purify(model: nn.Module, clean_data: Dataset, method: str = "ngf", *, device: str | torch.device = "auto",
           progress: bool = True, features: Any = None, layer: str | None = None,
           **options: Any) -> tuple[nn.Module, dict]:
    """Purify ``model`` with the defence ``method`` using only ``clean_data``.

    ``model`` may be any ``nn.Module`` mapping ``(N, C, H, W)`` images in ``[0, 1]`` to logits and
    ``clean_data`` any map-style dataset of ``(image, label)``; the classifier is found automatically
    (:func:`~ngfkit.models.find_classifier`) or named by ``layer``. The input model is left
    untouched. ``device="auto"`` uses CUDA when available. ``features``
    (a :class:`~ngfkit.defences.classifier_only.FeatureCache`) shares the clean set's classifier inputs
    between several classifier-only defences run on one model.

    Returns ``(purified_model, history)``. Every history holds ``"method"``, ``"config"``,
    ``"seconds"``, ``"changed"`` (``"head"`` when only the classifier changed, else ``"model"``)
    and ``"setting"`` (the options that define the run that was kept); a defence that chose its
    strength from clean data adds ``"selection"`` in the layout of
    :func:`~ngfkit.defences.selection.selection_record`; defences add what else they record
    (NGF: the loss per step).
    """
    defence = DEFENCES.get(method)(**options)
    if len(clean_data) == 0:
        raise NgfkitError("the clean set is empty; give the defence at least a few clean images")
    _, labels = next(iterate_batches(clean_data, 2))  # one clear line now, not a torch error mid-run
    check.labels(labels, "clean_data's labels")
    start = time.perf_counter()
    model = named_classifier(model, clean_data, layer=layer, required=defence.needs_classifier)
    purified, history = defence.run(model, clean_data, device=resolve_device(device), progress=progress,
                                    features=features)
    setting = history.pop("setting", None)
    if setting is None:
        setting = {defence.strength: getattr(defence.config, defence.strength)} if defence.strength else {}
    history = {"method": method, "config": dataclasses.asdict(defence.config),
               "changed": "head" if defence.head_only(model) else "model", "setting": setting, **history,
               "seconds": time.perf_counter() - start}
    return purified, history
