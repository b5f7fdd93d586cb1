"""The attack interface.

An :class:`Attack` owns its trigger (tensors and parameters), its target mapping and the choice
of poisoned training indices. Triggers are applied lazily, batch by batch, by
:class:`PoisonedDataset`, so a poisoned training set costs no extra memory and can always be
rebuilt from the attack's saved state.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import NgfkitError
from ..registry import Registry

ATTACKS: Registry[type["Attack"]] = Registry("attack")

MODES = ("all-to-one", "all-to-all")


class Attack:
    """Base class of poisoning attacks. Subclasses implement :meth:`build_trigger` and :meth:`apply`.

    Args:
        image_shape: ``(C, H, W)`` of the images the trigger is made for.
        num_classes: number of classes of the task.
        target: the target class of an all-to-one attack.
        poison_rate: fraction of the training set that is poisoned, in ``(0, 1)``.
        mode: ``"all-to-one"`` (every triggered image goes to ``target``) or ``"all-to-all"``
            (class ``y`` goes to ``(y + 1) mod C``).
        seed: seeds the trigger and the choice of poisoned images.
    """

    name: ClassVar[str] = ""
    #: parameters (beyond the common ones) that define the trigger, with their defaults
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, image_shape, num_classes: int, target: int = 0, poison_rate: float = 0.1,
                 mode: str = "all-to-one", seed: int = 0, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise NgfkitError(f"attack {self.name!r} has no parameter {sorted(unknown)[0]!r}; "
                              f"its parameters are: {', '.join(self.defaults) or 'none'}")
        if not 0.0 < float(poison_rate) < 1.0:
            raise NgfkitError(f"poison rate must be in (0, 1), got {poison_rate}")
        if not 0 <= int(target) < int(num_classes):
            raise NgfkitError(f"target class {target} is outside the {num_classes} classes (0..{num_classes - 1})")
        if mode not in MODES:
            raise NgfkitError(f"attack mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise NgfkitError(f"attacks need images shaped (C, H, W), got {self.image_shape}")
        self.num_classes = int(num_classes)
        self.target = int(target)
        self.poison_rate = float(poison_rate)
        self.mode = mode
        self.seed = int(seed)
        self.params = {**self.defaults, **params}
        self.check_params()
        self.trigger: dict[str, Tensor] = self.build_trigger(torch.Generator().manual_seed(self.seed))

    # -- what a subclass defines -------------------------------------------------------------
    def check_params(self) -> None:
        """Raise :class:`NgfkitError` for parameters the trigger cannot use."""

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Make the trigger tensors (saved with the model) from a seeded generator."""
        return {}

    def apply(self, x: Tensor) -> Tensor:
        """Stamp the trigger on a batch ``x`` of shape ``(B, C, H, W)`` in ``[0, 1]``."""
        raise NotImplementedError

    # -- shared behaviour --------------------------------------------------------------------
    def target_labels(self, y: Tensor) -> Tensor:
        """The label an attacked model should give a triggered image of true class ``y``."""
        if self.mode == "all-to-all":
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.target)

    def attacked_mask(self, y: Tensor) -> Tensor:
        """Which images count for ASR: those whose true label differs from the target label."""
        return self.target_labels(y) != y

    def poison_indices(self, labels: Tensor) -> Tensor:
        """Seeded choice of ``poison_rate * N`` training indices among images that can be attacked."""
        candidates = torch.nonzero(self.attacked_mask(labels), as_tuple=False).flatten()
        count = int(round(self.poison_rate * len(labels)))
        if count > len(candidates):
            raise NgfkitError(f"poison rate {self.poison_rate} asks for {count} images but only "
                              f"{len(candidates)} are outside the target class; lower --poison-rate")
        generator = torch.Generator().manual_seed(self.seed + 1)
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
        return torch.sort(chosen).values

    def check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.image_shape:
            raise NgfkitError(f"attack {self.name!r} was built for images {self.image_shape}, "
                              f"got {tuple(x.shape[1:])}; build it with the dataset's image shape")

    def poison(self, dataset: Dataset) -> "PoisonedDataset":
        """The poisoned training set: the same images, a recorded subset triggered and relabelled."""
        return PoisonedDataset(dataset, self, self.poison_indices(dataset_targets(dataset)))

    def state(self) -> dict[str, Any]:
        """JSON-able description; with :attr:`trigger` it rebuilds the attack exactly."""
        return {"name": self.name, "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "target": self.target, "poison_rate": self.poison_rate, "mode": self.mode,
                "seed": self.seed, "params": dict(self.params)}

    @classmethod
    def from_state(cls, state: dict[str, Any], trigger: dict[str, Tensor] | None = None) -> "Attack":
        attack = ATTACKS.get(state["name"])(
            state["image_shape"], state["num_classes"], target=state["target"],
            poison_rate=state["poison_rate"], mode=state["mode"], seed=state["seed"], **state["params"])
        if trigger:
            missing = set(attack.trigger) - set(trigger)
            if missing:
                raise NgfkitError(f"the checkpoint lacks trigger tensors {sorted(missing)}; it was not saved by ngfkit")
            attack.trigger = {k: trigger[k].float() for k in attack.trigger}
        return attack

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (f"{type(self).__name__}(target={self.target}, poison_rate={self.poison_rate}, "
                f"mode={self.mode!r}, seed={self.seed}{', ' + extra if extra else ''})")


def create_attack(name: str, image_shape, num_classes: int, **kwargs: Any) -> Attack:
    """Build a registered attack by name, e.g. ``create_attack("badnets", (1, 28, 28), 10)``."""
    return ATTACKS.get(name)(image_shape, num_classes, **kwargs)


def dataset_targets(dataset: Dataset) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    return torch.as_tensor(targets, dtype=torch.long)


class PoisonedDataset(Dataset):
    """``dataset`` with the images at ``indices`` triggered and given their target labels.

    ``poisoned`` is a bool mask of shape ``(N,)`` over the dataset.
    """

    def __init__(self, dataset: Dataset, attack: Attack, indices: Tensor):
        self.dataset = dataset
        self.attack = attack
        self.indices = indices
        self.poisoned = torch.zeros(len(dataset), dtype=torch.bool)
        self.poisoned[indices] = True
        self.info = getattr(dataset, "info", None)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def targets(self) -> Tensor:
        y = dataset_targets(self.dataset).clone()
        y[self.poisoned] = self.attack.target_labels(y[self.poisoned])
        return y

    def _poison_batch(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if mask.any():
            x = x.clone()
            y = y.clone()
            x[mask] = self.attack.apply(x[mask])
            y[mask] = self.attack.target_labels(y[mask])
        return x, y

    def __getitem__(self, i: int):
        i = range(len(self))[i]  # normalises negative indices and raises IndexError out of range
        x, y = self.dataset[i]
        x, y = self._poison_batch(x.unsqueeze(0), torch.tensor([int(y)]), self.poisoned[i : i + 1])
        return x[0], int(y[0])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        x, y = self.dataset.get_batch(indices)
        return self._poison_batch(x, y, self.poisoned[indices])
