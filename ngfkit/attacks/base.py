"""The attack interface.

An :class:`Attack` owns its trigger (tensors and parameters), its target mapping and the choice
of poisoned training indices. Triggers are applied lazily, batch by batch, by
:class:`PoisonedDataset`, so a poisoned training set costs no extra memory and can always be
rebuilt from the attack's saved state.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import NgfkitError
from ..registry import Registry

ATTACKS: Registry[type["Attack"]] = Registry("attack")

MODES = ("all-to-one", "all-to-all")

#: the attack families, in the order the README and the book list them (:attr:`Attack.family`)
FAMILIES = ("patch", "optimised", "clean-label", "transformation", "generator", "composite")


@dataclass(frozen=True)
class Strength:
    """One "strength" knob of an attack (:attr:`Attack.strength`), for the attacks explorer.

    ``param`` names what the knob sets (an attack parameter, or a name for several); ``None``
    means the attack has no knob that works without fitting its trigger again, and ``meaning``
    then says why. ``low``, ``high``, ``step``: the knob's range and grid. ``zero_is_clean``: at
    value 0 the trigger vanishes (the limit of the parameter), so the explorer shows the clean
    image instead of building the attack. ``spread``: for a knob that sets several parameters at
    once, the parameters at a value; such a knob runs from no change (0) to the attack's
    defaults (1), so an attack as built is at 1.
    """

    param: str | None
    meaning: str
    low: float = 0.0
    high: float = 1.0
    step: float = 0.05
    integer: bool = False
    zero_is_clean: bool = True
    spread: Callable[[float], dict[str, Any]] | None = None

    def params(self, value: float) -> dict[str, Any]:
        """The attack parameters for knob ``value``."""
        if self.spread is not None:
            return self.spread(value)
        return {self.param: int(round(value)) if self.integer else float(value)}

    def current(self, attack: "Attack") -> float | None:
        """The knob's value of ``attack`` as built (from its own parameters)."""
        if self.param is None:
            return None
        if self.spread is not None:
            return 1.0
        return float(attack.params[self.param])


NO_STRENGTH = Strength(None, "no strength knob is defined for this attack")


@dataclass
class TriggerContext:
    """What an attack with a learned trigger may use while :meth:`Attack.fit_trigger` runs.

    ``train`` is the attacker's (clean-labelled) training set, the one that is poisoned next; it
    has ``get_batch(indices) -> (x, y)`` with ``x`` of shape ``(B, C, H, W)`` in ``[0, 1]``.
    ``make_model()`` returns a fresh, untrained model of the victim's architecture;
    ``reference_model()`` returns a clean model of that architecture trained on ``train`` (trained
    once and cached, so several attacks share it).
    """

    train: Any
    make_model: Callable[[], nn.Module]
    reference_model: Callable[[], nn.Module]
    device: torch.device | str = "cpu"
    progress: bool = True
    seed: int = 0


def checked_poison_rate(rate: Any) -> float:
    """``rate`` as a float in ``(0, 1)``, else one error line (shared by attacks and experiments,
    so a benchmark refuses a bad ``--poison-rate`` before it trains anything)."""
    if not 0.0 < float(rate) < 1.0:
        raise NgfkitError(f"poison rate must be in (0, 1), got {rate}")
    return float(rate)


class Attack:
    """Base class of poisoning attacks. Subclasses implement :meth:`build_trigger` and :meth:`apply`.

    Args:
        image_shape: ``(C, H, W)`` of the images the trigger is made for.
        num_classes: number of classes of the task.
        target: the target class of an all-to-one attack.
        poison_rate: fraction of the training set that is poisoned, in ``(0, 1)``; ``None``: the
            attack's :attr:`default_poison_rate` (0.1, or less for clean-label attacks, which can
            only use the target class).
        mode: ``"all-to-one"`` (every triggered image goes to ``target``) or ``"all-to-all"``
            (class ``y`` goes to ``(y + 1) mod C``).
        seed: seeds the trigger and the choice of poisoned images.
    """

    name: ClassVar[str] = ""
    #: parameters (beyond the common ones) that define the trigger, with their defaults
    defaults: ClassVar[dict[str, Any]] = {}
    #: the target mappings the method supports; the first is the default
    modes: ClassVar[tuple[str, ...]] = MODES
    #: clean-label attacks trigger images of the target class only and never change a label
    clean_label: ClassVar[bool] = False
    #: the trigger is learned from data (see :meth:`fit_trigger`) rather than fixed by the seed
    learned: ClassVar[bool] = False
    #: share of the training set poisoned when no rate is given
    default_poison_rate: ClassVar[float] = 0.1
    #: one of :data:`FAMILIES` (another name: listed after them); with :attr:`order`, where the
    #: attack comes in listings (:func:`listing_order`)
    family: ClassVar[str] = "other"
    #: rank within the family
    order: ClassVar[int] = 0
    #: position in the tables of the NGF paper's benchmark; ``None``: not in it (:func:`paper_attacks`)
    paper_order: ClassVar[int | None] = None
    #: ASR (percent) a backdoored model of the benchmark should reach (the issue's bar)
    asr_goal: ClassVar[float] = 90.0
    #: overrides of :attr:`defaults` that fit a learned trigger on a short budget, chosen so that
    #: it looks like the full fit's at a fraction of its cost (2-core CPU, Fashion-MNIST)
    short_fit: ClassVar[dict[str, Any]] = {}
    #: the attacks explorer's strength knob
    strength: ClassVar[Strength] = NO_STRENGTH

    def __init__(self, image_shape, num_classes: int, target: int = 0, poison_rate: float | None = None,
                 mode: str | None = None, seed: int = 0, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise NgfkitError(f"attack {self.name!r} has no parameter {sorted(unknown)[0]!r}; "
                              f"its parameters are: {', '.join(self.defaults) or 'none'}")
        poison_rate = checked_poison_rate(self.default_poison_rate if poison_rate is None else poison_rate)
        if not 0 <= int(target) < int(num_classes):
            raise NgfkitError(f"target class {target} is outside the {num_classes} classes (0..{num_classes - 1})")
        mode = mode or self.modes[0]
        if mode not in self.modes:
            raise NgfkitError(f"attack {self.name!r} supports mode {' or '.join(self.modes)}, not {mode!r}"
                              + ("; its -one/-all variants are separate attacks" if self.name[-4:] in ("-one", "-all") else ""))
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise NgfkitError(f"attacks need images shaped (C, H, W), got {self.image_shape}")
        self.num_classes = int(num_classes)
        self.target = int(target)
        self.poison_rate = poison_rate
        self.mode = mode
        self.seed = int(seed)
        self.params = {**self.defaults, **params}
        self.check_params()
        self.trigger: dict[str, Tensor] = self.build_trigger(torch.Generator().manual_seed(self.seed))
        #: tensors used only to poison the training set (e.g. CLB's per-image adversarial
        #: perturbations, keyed by training index); cached with a learned trigger, not saved with models
        self.poison_state: dict[str, Tensor] = {}

    # -- what a subclass defines -------------------------------------------------------------
    def check_params(self) -> None:
        """Raise :class:`NgfkitError` for parameters the trigger cannot use."""

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Make the trigger tensors (saved with the model) from a seeded generator."""
        return {}

    def apply(self, x: Tensor) -> Tensor:
        """Stamp the trigger on a batch ``x`` of shape ``(B, C, H, W)`` in ``[0, 1]``."""
        raise NotImplementedError

    def apply_poison(self, x: Tensor, y: Tensor, indices: Tensor) -> Tensor:
        """The poisoned training images at dataset ``indices`` (true labels ``y``); by default the
        test-time trigger. Override where training poison differs (e.g. CLB's adversarial step)."""
        return self.apply(x)

    def cover_fraction(self) -> float:
        """Share of the training set that gets :meth:`apply_cover` and keeps its label (WaNet's noise
        mode, Dynamic's cross-trigger mode, BPP's negative samples, CBA's same-class mixes)."""
        return 0.0

    def apply_cover(self, x: Tensor, y: Tensor) -> Tensor:
        """Transform the cover images ``x`` (labels ``y`` kept)."""
        raise NotImplementedError(f"attack {self.name!r} has no cover samples")

    def fit_trigger(self, context: TriggerContext) -> None:
        """Learn the trigger in place (``self.trigger``, ``self.poison_state``); only for ``learned``."""

    # -- shared behaviour --------------------------------------------------------------------
    def target_labels(self, y: Tensor) -> Tensor:
        """The label an attacked model should give a triggered image of true class ``y``."""
        if self.mode == "all-to-all":
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.target)

    def attacked_mask(self, y: Tensor) -> Tensor:
        """Which images count for ASR: those whose true label differs from the target label."""
        return self.target_labels(y) != y

    def poison_candidates(self, labels: Tensor) -> Tensor:
        """Bool mask of training images that may be poisoned: attackable images, or for a
        clean-label attack the target class."""
        if self.clean_label:
            return labels == self.target
        return self.attacked_mask(labels)

    def poison_indices(self, labels: Tensor) -> Tensor:
        """Seeded choice of ``poison_rate * N`` training indices among :meth:`poison_candidates`."""
        candidates = torch.nonzero(self.poison_candidates(labels), as_tuple=False).flatten()
        count = int(round(self.poison_rate * len(labels)))
        if count > len(candidates):
            where = "in the target class" if self.clean_label else "that the attack can use"
            raise NgfkitError(f"poison rate {self.poison_rate} asks for {count} images but only "
                              f"{len(candidates)} are {where}; lower --poison-rate")
        generator = torch.Generator().manual_seed(self.seed + 1)
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
        return torch.sort(chosen).values

    def cover_indices(self, num: int, poisoned: Tensor) -> Tensor:
        """Seeded choice of ``cover_fraction() * num`` training indices outside ``poisoned``."""
        count = int(round(self.cover_fraction() * num))
        if count == 0:
            return torch.zeros(0, dtype=torch.long)
        free = torch.ones(num, dtype=torch.bool)
        free[poisoned] = False
        candidates = torch.nonzero(free, as_tuple=False).flatten()
        generator = torch.Generator().manual_seed(self.seed + 2)
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
        return torch.sort(chosen).values

    def check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.image_shape:
            raise NgfkitError(f"attack {self.name!r} was built for images {self.image_shape}, "
                              f"got {tuple(x.shape[1:])}; build it with the dataset's image shape")

    def poison(self, dataset: Dataset) -> "PoisonedDataset":
        """The poisoned training set: the same images, a recorded subset triggered and relabelled
        (and, for attacks with cover samples, another subset transformed with labels kept)."""
        indices = self.poison_indices(dataset_targets(dataset))
        return PoisonedDataset(dataset, self, indices, self.cover_indices(len(dataset), indices))

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


def listing_order(names: Sequence[str]) -> list[str]:
    """The registered attacks ``names`` by family (:data:`FAMILIES`, then others) and rank in it."""
    def key(name: str) -> tuple[int, int, str]:
        cls = ATTACKS.get(name)
        family = FAMILIES.index(cls.family) if cls.family in FAMILIES else len(FAMILIES)
        return family, cls.order, name

    return sorted(names, key=key)


def paper_attacks() -> tuple[str, ...]:
    """The registered attacks of the NGF paper's benchmark, in the order of its tables."""
    return tuple(sorted((n for n in ATTACKS.names() if ATTACKS.get(n).paper_order is not None),
                        key=lambda n: ATTACKS.get(n).paper_order))


def create_attack(name: str, image_shape, num_classes: int, **kwargs: Any) -> Attack:
    """Build a registered attack by name, e.g. ``create_attack("badnets", (1, 28, 28), 10)``."""
    return ATTACKS.get(name)(image_shape, num_classes, **kwargs)


def dataset_targets(dataset: Dataset) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    return torch.as_tensor(targets, dtype=torch.long)


class PoisonedDataset(Dataset):
    """``dataset`` with the images at ``indices`` triggered and given their target labels (kept
    for a clean-label attack), and the images at ``cover`` transformed with labels kept.

    ``poisoned`` and ``covered`` are bool masks of shape ``(N,)`` over the dataset.
    """

    def __init__(self, dataset: Dataset, attack: Attack, indices: Tensor, cover: Tensor | None = None):
        self.dataset = dataset
        self.attack = attack
        self.indices = indices
        self.poisoned = torch.zeros(len(dataset), dtype=torch.bool)
        self.poisoned[indices] = True
        self.covered = torch.zeros(len(dataset), dtype=torch.bool)
        if cover is not None:
            self.covered[cover] = True
        if (self.poisoned & self.covered).any():
            raise ValueError("poisoned and cover indices overlap")
        self.info = getattr(dataset, "info", None)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def targets(self) -> Tensor:
        y = dataset_targets(self.dataset).clone()
        if not self.attack.clean_label:
            y[self.poisoned] = self.attack.target_labels(y[self.poisoned])
        return y

    def _poison_batch(self, x: Tensor, y: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        poison, cover = self.poisoned[indices], self.covered[indices]
        if poison.any() or cover.any():
            x, y = x.clone(), y.clone()
        if poison.any():
            x[poison] = self.attack.apply_poison(x[poison], y[poison], indices[poison]).to(x.dtype)
            if not self.attack.clean_label:
                y[poison] = self.attack.target_labels(y[poison])
        if cover.any():
            x[cover] = self.attack.apply_cover(x[cover], y[cover]).to(x.dtype)
        return x, y

    def __getitem__(self, i: int):
        i = range(len(self))[i]  # normalises negative indices and raises IndexError out of range
        x, y = self.dataset[i]
        x, y = self._poison_batch(x.unsqueeze(0), torch.tensor([int(y)]), torch.tensor([i]))
        return x[0], int(y[0])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        x, y = self.dataset.get_batch(indices)
        return self._poison_batch(x, y, torch.as_tensor(indices, dtype=torch.long))
