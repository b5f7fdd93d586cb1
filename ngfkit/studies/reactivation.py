"""Does the purification last? Re-tuning a model on a few poisoned images and measuring how far
its ASR climbs back (PAM's post-purification robustness, at ngfkit's scale).

PAM (Min et al., "Uncovering, Explaining, and Mitigating the Superficial Safety of Backdoor
Defense", NeurIPS 2024) showed that a purified model with a low ASR can regain its backdoor when
it is fine-tuned further on a small set that holds only a few poisoned samples (their *retuning
attack*), or reactivated by queries alone: ASR measured right after purification overstates how
much of the backdoor is gone. Their retuning attack fine-tunes every parameter of CIFAR-scale
networks (ResNet-18 and others, trained for 100 epochs) with SGD for a few epochs on a small
reactivation set mixing poisoned and clean training images, and compares the ASR after it (their
P-ASR) with the ASR right after the defence (O-ASR); the exact counts, epochs and learning rates
are the paper's own (its experimental section), which this module does not copy.

:func:`reactivate` runs the same experiment, smaller, so that it fits a 2-core CPU in seconds on
ngfkit's ``smallcnn`` on Fashion-MNIST:

- **the mix**: ``poisoned`` images (default 10) drawn from ``clean_data`` among those the attack
  targets (:meth:`~ngfkit.attacks.base.Attack.attacked_mask`: not already of the target class),
  stamped with the attack's own test-time trigger (:meth:`~ngfkit.attacks.base.Attack.apply`)
  and relabelled with :meth:`~ngfkit.attacks.base.Attack.target_labels`, plus ``clean`` images
  (default 90) drawn from the rest of ``clean_data`` with their labels kept: 10 % poisoned. The
  relabelling is the attacker's choice here, so a clean-label attack is re-tuned dirty-label too
  (its test trigger, the target label);
- **the re-tuning**: a copy of the model, every parameter trained, BatchNorm in train mode,
  through the project's one loop :func:`ngfkit.train.train_model` with SGD (momentum 0.9, weight
  decay 5e-4) at a constant learning rate ``lr`` (default 0.01, the rate of the ``ft`` defence and
  of BackdoorBench's training) for ``steps`` steps (default 20) of ``batch_size`` images (default
  32, at most the mix's size), no augmentation: about 6 passes over the 100-image mix, against
  PAM's epochs over a set of thousands of CIFAR images on networks 100 times larger;
- **the measurement**: :func:`ngfkit.metrics.evaluate` on ``test_data`` before and after (C-ACC,
  ASR, RA in percent), the ASR climb ``after - before`` and the C-ACC change.

Everything is seeded by ``seed`` (the choice of the mix, the batch order, the initial state of
the loop), so the same seed gives the same numbers on the same device. Without poisoned images
(``poisoned=0``) the run is plain fine-tuning on clean images: the control for how much of a
climb is the poison's.

:func:`reactivate_models` re-tunes several named models on the one mix with the one protocol,
so the purified model's climb can be read beside the backdoored model's and a clean model's; the
clean model's climb is the reference: how much these few poisoned steps plant a backdoor from
scratch. A purification that lasts lets the backdoor climb back no faster than that.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .. import validation as check
from ..attacks.base import Attack, dataset_targets
from ..batches import iterate_batches, subset_of
from ..errors import NgfkitError
from ..metrics import evaluate
from ..train import TrainConfig, train_model

#: the defaults of :func:`reactivate` (see the module docstring)
DEFAULTS: dict[str, Any] = {"poisoned": 10, "clean": 90, "steps": 20, "lr": 0.01, "batch_size": 32,
                            "momentum": 0.9, "weight_decay": 5e-4}


class ReactivationSet(Dataset):
    """The re-tuning mix in memory: ``images`` float32 ``(N, C, H, W)`` in ``[0, 1]``, ``labels``
    int64 ``(N,)``, ``triggered`` bool ``(N,)`` (which images carry the trigger and the attacker's
    label) and ``source`` int64 ``(N,)`` (each image's index in the ``clean_data`` it came from).
    The poisoned images come first."""

    def __init__(self, images: Tensor, labels: Tensor, triggered: Tensor, source: Tensor):
        self.images, self.labels, self.triggered, self.source = images, labels, triggered, source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def get_batch(self, indices) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]

    @property
    def targets(self) -> Tensor:
        return self.labels


def check_options(*, poisoned: Any, clean: Any, steps: Any, lr: Any, batch_size: Any, seed: Any,
                  momentum: Any = DEFAULTS["momentum"], weight_decay: Any = DEFAULTS["weight_decay"]) -> dict:
    """The re-tuning options, checked (one :class:`NgfkitError` naming the option) and normalised."""
    options = {
        "poisoned": check.whole(poisoned, "reactivation poisoned"),
        "clean": check.whole(clean, "reactivation clean"),
        "steps": check.whole(steps, "reactivation steps", least=1),
        "lr": check.positive(lr, "reactivation lr"),
        "batch_size": check.whole(batch_size, "reactivation batch_size", least=1),
        "momentum": check.number(momentum, "reactivation momentum", low=0.0, high=1.0, high_open=True),
        "weight_decay": check.number(weight_decay, "reactivation weight_decay", low=0.0),
        "seed": check.whole(seed, "reactivation seed"),
    }
    if options["poisoned"] + options["clean"] == 0:
        raise NgfkitError("reactivation poisoned and clean are both 0: the re-tuning set would be empty; "
                          "give at least one image")
    return options


def _images(dataset: Dataset, indices: Tensor) -> tuple[Tensor, Tensor]:
    """The images ``(K, C, H, W)`` and labels ``(K,)`` of ``dataset`` at ``indices``, on the CPU."""
    if len(indices) == 0:
        x, _ = next(iter(iterate_batches(subset_of(dataset, torch.zeros(1, dtype=torch.long)), 1)))
        return x[:0].float(), torch.zeros(0, dtype=torch.long)
    x, y = next(iter(iterate_batches(subset_of(dataset, indices), len(indices))))
    return x.float().cpu(), torch.as_tensor(y, dtype=torch.long).cpu()


def reactivation_set(attack: Attack, clean_data: Dataset, *, poisoned: int = DEFAULTS["poisoned"],
                     clean: int = DEFAULTS["clean"], seed: int = 0) -> ReactivationSet:
    """The seeded re-tuning mix of :func:`reactivate`: ``poisoned`` images of ``clean_data`` that
    ``attack`` targets, triggered with ``attack.apply`` and given ``attack.target_labels``, then
    ``clean`` other images of ``clean_data`` as they are. Raises :class:`NgfkitError` when
    ``clean_data`` has too few images for either count."""
    poisoned = check.whole(poisoned, "reactivation poisoned")
    clean = check.whole(clean, "reactivation clean")
    seed = check.whole(seed, "reactivation seed")
    labels = dataset_targets(clean_data)
    attackable = torch.nonzero(attack.attacked_mask(labels), as_tuple=False).flatten()
    if poisoned > len(attackable):
        raise NgfkitError(f"reactivation poisoned={poisoned} asks for more images than clean_data has outside "
                          f"the attack's target class ({len(attackable)}); lower poisoned or give more clean data")
    generator = torch.Generator().manual_seed(seed)
    chosen = attackable[torch.randperm(len(attackable), generator=generator)[:poisoned]].sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[chosen] = False
    others = torch.nonzero(rest, as_tuple=False).flatten()
    if clean > len(others):
        raise NgfkitError(f"reactivation clean={clean} asks for more images than clean_data has besides the "
                          f"{poisoned} poisoned ones ({len(others)}); lower clean or give more clean data")
    kept = others[torch.randperm(len(others), generator=generator)[:clean]].sort().values
    x_poison, y_poison = _images(clean_data, chosen)
    x_clean, y_clean = _images(clean_data, kept)
    if poisoned:
        x_poison = attack.apply(x_poison).to(torch.float32).clamp_(0.0, 1.0)
        y_poison = attack.target_labels(y_poison)
    triggered = torch.cat([torch.ones(poisoned, dtype=torch.bool), torch.zeros(clean, dtype=torch.bool)])
    return ReactivationSet(torch.cat([x_poison, x_clean]).contiguous(), torch.cat([y_poison, y_clean]),
                           triggered, torch.cat([chosen, kept]))


def _measure(model: nn.Module, test_data: Dataset, attack: Attack, device) -> dict[str, float]:
    metrics = evaluate(model, test_data, attack, device=device)
    return {key: float(metrics[key]) for key in ("acc", "asr", "ra")}


def _check_test_data(attack: Attack, test_data: Dataset) -> None:
    if not bool(attack.attacked_mask(dataset_targets(test_data)).any()):
        raise NgfkitError("test_data has no image outside the attack's target class, so ASR is undefined; "
                          "give a test set with other classes")


def _retune(model: nn.Module, mix: ReactivationSet, attack: Attack, test_data: Dataset, options: dict, *,
            device, progress: bool, desc: str) -> dict:
    """Re-tune a copy of ``model`` on ``mix`` and measure it before and after."""
    start = time.perf_counter()
    net = copy.deepcopy(model).to(device)  # the input model is never touched, not even moved
    before = _measure(net, test_data, attack, device)
    config = TrainConfig(steps=options["steps"], lr=options["lr"], final_lr_ratio=1.0,
                         momentum=options["momentum"], weight_decay=options["weight_decay"],
                         batch_size=min(options["batch_size"], len(mix)), augment=False)
    fit = train_model(net, mix, config, seed=options["seed"], device=device, progress=progress, desc=desc)
    check.finite_model(net, "the re-tuned model", f"lower the reactivation lr (it was {options['lr']:g})")
    after = _measure(net, test_data, attack, device)
    return {
        "before": before,
        "after": after,
        "asr_climb": after["asr"] - before["asr"],
        "acc_change": after["acc"] - before["acc"],
        "loss": [float(v) for v in fit["loss"]],
        "train_seconds": float(fit["seconds"]),
        "seconds": time.perf_counter() - start,
    }


def _protocol(attack: Attack, mix: ReactivationSet, options: dict, device) -> dict:
    return {
        "attack": attack.name,
        "mode": attack.mode,
        "target": attack.target,
        "poisoned": int(mix.triggered.sum()),
        "clean": int((~mix.triggered).sum()),
        "steps": options["steps"],
        "lr": options["lr"],
        "schedule": "constant",
        "optimiser": "sgd",
        "momentum": options["momentum"],
        "weight_decay": options["weight_decay"],
        "batch_size": min(options["batch_size"], len(mix)),
        "trained": "all parameters",
        "augment": False,
        "seed": options["seed"],
        "device": str(device),
    }


def reactivate(model: nn.Module, attack: Attack, clean_data: Dataset, test_data: Dataset, *,
               poisoned: int = DEFAULTS["poisoned"], clean: int = DEFAULTS["clean"],
               steps: int = DEFAULTS["steps"], lr: float = DEFAULTS["lr"],
               batch_size: int = DEFAULTS["batch_size"], momentum: float = DEFAULTS["momentum"],
               weight_decay: float = DEFAULTS["weight_decay"], seed: int = 0,
               device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """Re-tune a copy of ``model`` on ``poisoned`` triggered + ``clean`` clean images of
    ``clean_data`` (:func:`reactivation_set`) and measure it on ``test_data`` before and after.

    Returns a JSON-safe dict: ``before`` and ``after`` (``{"acc", "asr", "ra"}`` in percent),
    ``asr_climb`` (``after["asr"] - before["asr"]``, percentage points), ``acc_change``,
    ``loss`` (per step), ``train_seconds``, ``seconds`` (all of it, both evaluations included) and
    ``protocol`` (attack, target, the counts actually used, steps, lr, batch, optimiser, seed,
    device). ``model`` is left unchanged. Bad options raise one :class:`NgfkitError` naming the
    option; so does a re-tuned model with NaN weights (lower ``lr``).
    """
    options = check_options(poisoned=poisoned, clean=clean, steps=steps, lr=lr, batch_size=batch_size,
                            seed=seed, momentum=momentum, weight_decay=weight_decay)
    if not isinstance(model, nn.Module):
        raise NgfkitError(f"reactivate needs a torch nn.Module, got {type(model).__name__}")
    _check_test_data(attack, test_data)
    mix = reactivation_set(attack, clean_data, poisoned=options["poisoned"], clean=options["clean"],
                           seed=options["seed"])
    result = _retune(model, mix, attack, test_data, options, device=device, progress=progress, desc="reactivate")
    result["protocol"] = _protocol(attack, mix, options, device)
    return result


def reactivate_models(models: Mapping[str, nn.Module], attack: Attack, clean_data: Dataset,
                      test_data: Dataset, *, reference: str | None = None,
                      poisoned: int = DEFAULTS["poisoned"], clean: int = DEFAULTS["clean"],
                      steps: int = DEFAULTS["steps"], lr: float = DEFAULTS["lr"],
                      batch_size: int = DEFAULTS["batch_size"], momentum: float = DEFAULTS["momentum"],
                      weight_decay: float = DEFAULTS["weight_decay"], seed: int = 0,
                      device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """:func:`reactivate` on every model of ``models`` (e.g. ``{"backdoored": m0, "purified by ngf":
    m1, "clean": m2}``), all on the one mix with the one protocol and seed.

    Returns ``{"protocol": {...}, "reference": reference, "models": {name: result}}`` in the order
    of ``models``, each result as :func:`reactivate` gives it without its ``protocol``. With
    ``reference`` (the name of a clean model among ``models``), each result also has
    ``climb_beyond_reference``: its ASR climb minus the reference's, the part of the climb that the
    few poisoned steps alone do not explain.
    """
    options = check_options(poisoned=poisoned, clean=clean, steps=steps, lr=lr, batch_size=batch_size,
                            seed=seed, momentum=momentum, weight_decay=weight_decay)
    if not isinstance(models, Mapping) or not models:
        raise NgfkitError("reactivate_models needs a non-empty mapping of names to models, "
                          "e.g. {'backdoored': m0, 'purified': m1, 'clean': m2}")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise NgfkitError(f"reactivate_models: model {name!r} is a {type(model).__name__}, not a torch nn.Module")
    if reference is not None and reference not in models:
        raise NgfkitError(f"reactivation reference {reference!r} is not one of the models "
                          f"({', '.join(map(repr, models))})")
    _check_test_data(attack, test_data)
    mix = reactivation_set(attack, clean_data, poisoned=options["poisoned"], clean=options["clean"],
                           seed=options["seed"])
    results = {str(name): _retune(model, mix, attack, test_data, options, device=device, progress=progress,
                                  desc=f"reactivate {name}")
               for name, model in models.items()}
    if reference is not None:
        base = results[str(reference)]["asr_climb"]
        for result in results.values():
            result["climb_beyond_reference"] = result["asr_climb"] - base
    return {"protocol": _protocol(attack, mix, options, device),
            "reference": None if reference is None else str(reference), "models": results}
