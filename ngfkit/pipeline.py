"""The spine: dataset -> attack -> train (cached) -> checkpoint -> defence -> metrics.

:class:`Experiment` names one backdoored model completely; :func:`load_or_train` returns it from
the cache (keyed by the full config) or trains and caches it; :func:`run_defence` purifies it
and measures before and after. The CLI and the book call these and nothing deeper.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import ATTACKS, Attack, TriggerContext, create_attack
from .attacks.base import checked_poison_rate
from .checkpoint import (
    check_trigger,
    load_checkpoint,
    load_tensors,
    load_weights,
    save_checkpoint,
    save_tensors,
)
from .data import DatasetInfo, dataset_info, defender_split, load_dataset
from .defences import FeatureCache, purify
from .errors import NgfkitError
from . import validation as check
from .metrics import defence_effectiveness_rating, evaluate, evaluate_layer, predict
from .models import MODELS, Classifier, build_model, classifier_layer
from .train import TrainConfig, train_model
from .utils import cache_dir, resolve_device, seed_everything, versions, write_json

#: the fix when a defence returns NaN or infinite weights (they would score as a real result)
PURIFIED_NOT_FINITE = "nothing was saved; lower the defence's learning rate or strength and run it again"

#: part of every cache key: bump it when a registered model or attack changes shape or meaning
CACHE_VERSION = 1


def _source_digest(cls: type) -> str:
    """Hash of the source file that defines ``cls`` (empty when the source is unavailable)."""
    try:
        return hashlib.sha256(Path(inspect.getfile(cls)).read_bytes()).hexdigest()[:12]
    except (OSError, TypeError):
        return ""


@dataclass
class Experiment:
    """Everything that determines a backdoored model and its defender's clean set."""

    dataset: str = "fashion-mnist"
    arch: str | None = None  # None: the dataset's default architecture
    attack: str | None = "badnets"  # None: a clean (benign) model
    attack_params: dict[str, Any] = field(default_factory=dict)
    target: int = 0
    poison_rate: float | None = None  # None: the attack's default (0.1; 0.05 for clean-label attacks)
    mode: str | None = None  # None: the attack's own mode (all-to-one, or all-to-all for *-all)
    clean_fraction: float = 0.01
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        self.info: DatasetInfo = dataset_info(self.dataset)
        self.arch = self.arch or self.info.default_arch
        MODELS.get(self.arch)  # unknown names fail here, before any data is loaded
        attack_class = ATTACKS.get(self.attack) if self.attack is not None else None
        if self.poison_rate is None:  # a clean model keeps 0.1 in its key, as before this option existed
            self.poison_rate = attack_class.default_poison_rate if attack_class else 0.1
        self.poison_rate = checked_poison_rate(self.poison_rate)
        self.clean_fraction = check.fraction(self.clean_fraction, "clean_fraction (--clean-fraction)",
                                             "it is the share of the training set held out, e.g. 0.01")
        self.seed = check.whole(self.seed, "seed (--seed)")
        if self.attack is not None:
            self.mode = self.mode or attack_class.modes[0]
            check.like_defaults(self.attack_params, attack_class.defaults, f"{self.attack} parameter")
            self.make_attack()  # bad attack parameters fail here, before any data is loaded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """A stable name for the cache: readable prefix plus a hash of the whole config (and of
        :data:`CACHE_VERSION`, bumped whenever a model or attack definition changes)."""
        payload = {"cache_version": CACHE_VERSION, **self.to_dict()}
        if self.attack is not None:
            # resolved parameters and the attack's source: a changed default or trigger code
            # invalidates the models and learned triggers made with the old one
            attack_class = ATTACKS.get(self.attack)
            payload["attack_params"] = {**attack_class.defaults, **self.attack_params}
            payload["attack_source"] = _source_digest(attack_class)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.dataset}-{self.arch}-{self.attack or 'clean'}-s{self.seed}-{digest}"

    def make_attack(self) -> Attack | None:
        if self.attack is None:
            return None
        return create_attack(self.attack, self.info.image_shape, self.info.num_classes, target=self.target,
                             poison_rate=self.poison_rate, mode=self.mode, seed=self.seed, **self.attack_params)

    def make_model(self) -> Classifier:
        return build_model(self.arch, self.info.num_classes, self.info.image_shape, self.info.mean, self.info.std)


@dataclass
class Splits:
    """The attacker's training set, the defender's held-out clean set, and the test set."""

    train: Any
    clean: Any
    test: Any


def load_splits(exp: Experiment, data_root: str | Path | None = None, download: bool = False) -> Splits:
    train = load_dataset(exp.dataset, "train", root=data_root, download=download)
    test = load_dataset(exp.dataset, "test", root=data_root, download=download)
    attacker, clean = defender_split(len(train), exp.clean_fraction, exp.seed)
    return Splits(train.subset(attacker), train.subset(clean), test)


@dataclass
class TrainedModel:
    model: nn.Module
    attack: Attack | None
    meta: dict[str, Any]
    cached: bool
    seconds: float
    #: test-set predictions with the classifier's inputs kept (see :func:`ngfkit.metrics.predict`)
    test_predictions: dict | None = None


def model_from_checkpoint(path: str | Path, arch: str | None = None, dataset: str | None = None,
                          ) -> tuple[nn.Module, Attack | None, dict[str, Any]]:
    """Rebuild a model (and its attack, if it records one) from a safetensors checkpoint.

    ``arch`` and ``dataset`` are needed only for checkpoints without an ngfkit sidecar; when
    both are given and the sidecar disagrees, that is an error rather than a silent choice.
    """
    ckpt = load_checkpoint(path)
    meta = ckpt.meta
    for name, given in (("arch", arch), ("dataset", dataset)):
        stored = meta.get(name)
        if given and stored and given != stored:
            raise NgfkitError(f"{path} was trained with {name} {stored!r}, not {given!r}; "
                              f"drop --{name} or pass --{name} {stored}")
    arch, dataset = arch or meta.get("arch"), dataset or meta.get("dataset")
    if not arch or not dataset:
        raise NgfkitError(f"{path} has no ngfkit sidecar ({Path(path).with_suffix('.json').name}); "
                          f"pass --arch and --dataset")
    info = dataset_info(dataset)
    model = build_model(arch, info.num_classes, info.image_shape, info.mean, info.std)
    load_weights(model, ckpt.weights, source=str(path), arch=arch)
    attack = _attack_of(meta["attack"], ckpt.trigger, info, str(path)) if meta.get("attack") else None
    return model.eval(), attack, meta


def _attack_of(state: dict[str, Any], trigger: dict[str, torch.Tensor], info: DatasetInfo, source: str) -> Attack:
    """The attack a sidecar records (schema-checked by :func:`~ngfkit.checkpoint.check_sidecar`),
    checked against the dataset and with the file's trigger tensors checked against its own."""
    fix = "the sidecar does not belong to this model; re-create the model with ngfkit"
    if tuple(state["image_shape"]) != tuple(info.image_shape) or state["num_classes"] != info.num_classes:
        raise NgfkitError(f"{source}: the attack was built for images {tuple(state['image_shape'])} and "
                          f"{state['num_classes']} classes, but {info.name} has {info.image_shape} and "
                          f"{info.num_classes}; {fix}")
    check.like_defaults(state["params"], ATTACKS.get(state["name"]).defaults, f"{source}: attack parameter")
    built = Attack.from_state(state)
    check_trigger(built.trigger, trigger, source)
    return Attack.from_state(state, trigger)


def load_or_train(exp: Experiment, splits: Splits | None = None, *, device: torch.device | str = "cpu",
                  progress: bool = True, use_cache: bool = True, data_root=None, download: bool = False
                  ) -> TrainedModel:
    """The backdoored model of ``exp``: from the cache if it was trained before, else trained now."""
    path = cache_dir() / "models" / f"{exp.key()}.safetensors"
    if use_cache and path.is_file():
        model, attack, meta = model_from_checkpoint(path)
        return TrainedModel(model.to(device), attack, meta, True, 0.0)
    splits = splits or load_splits(exp, data_root, download)
    seed_everything(exp.seed)
    attack = exp.make_attack()
    trigger_seconds = 0.0
    if attack is not None and attack.learned:
        trigger_seconds = fit_trigger(exp, attack, splits, device=device, progress=progress, use_cache=use_cache)
    seed_everything(exp.seed)
    model = exp.make_model()
    train_set = attack.poison(splits.train) if attack is not None else splits.train
    fit = train_model(model, train_set, exp.train, seed=exp.seed, device=device, progress=progress,
                      desc=f"train {exp.arch} ({exp.attack or 'clean'})")
    test_predictions = predict(model, splits.test, attack=attack, device=device,
                               keep_inputs_of=classifier_layer(model))
    metrics = evaluate_layer(classifier_layer(model), test_predictions)
    meta = {"format": "ngfkit-model", "arch": exp.arch, "dataset": exp.dataset, "experiment": exp.to_dict(),
            "attack": attack.state() if attack else None,
            "poisoned_indices": int(train_set.poisoned.sum()) if attack else 0,
            "metrics": metrics, "train_seconds": fit["seconds"], "trigger_seconds": trigger_seconds,
            "final_loss": fit["loss"][-1],
            "seed": exp.seed, "versions": versions()}
    if use_cache:
        save_checkpoint(path, model, meta, attack.trigger if attack else None)
    return TrainedModel(model, attack, meta, False, fit["seconds"], test_predictions)


def clean_reference(exp: Experiment) -> Experiment:
    """The benign twin of ``exp``: same data, architecture, seed and training, no attack."""
    return replace(exp, attack=None, attack_params={}, mode=None, poison_rate=None, target=0)


def fit_trigger(exp: Experiment, attack: Attack, splits: Splits, *, device: torch.device | str = "cpu",
                progress: bool = True, use_cache: bool = True) -> float:
    """Learn ``attack``'s trigger in place, or load it from the trigger cache; returns the seconds
    it took to learn (including the clean reference model, if that was trained now).

    The cache key is the experiment's key: the trigger depends on the attack, its parameters,
    the data, the architecture and the seed (and on the clean reference model, itself keyed by
    the same config without the attack).
    """
    path = cache_dir() / "triggers" / f"{exp.key()}.safetensors"
    if use_cache and path.is_file():
        tensors = load_tensors(path)
        missing = set(attack.trigger) - {k.removeprefix("trigger.") for k in tensors}
        if not missing:
            attack.trigger = {k: tensors[f"trigger.{k}"] for k in attack.trigger}
            attack.poison_state = {k.removeprefix("poison."): v for k, v in tensors.items() if k.startswith("poison.")}
            return float(json.loads(path.with_suffix(".json").read_text()).get("seconds", 0.0)) \
                if path.with_suffix(".json").is_file() else 0.0
    start = time.perf_counter()

    def reference_model() -> nn.Module:
        return load_or_train(clean_reference(exp), splits, device=device, progress=progress,
                             use_cache=use_cache).model

    context = TriggerContext(train=splits.train, make_model=exp.make_model, reference_model=reference_model,
                             device=device, progress=progress, seed=exp.seed)
    attack.fit_trigger(context)
    seconds = time.perf_counter() - start
    if use_cache:
        save_tensors(path, {**{f"trigger.{k}": v for k, v in attack.trigger.items()},
                            **{f"poison.{k}": v for k, v in attack.poison_state.items()}})
        write_json(path.with_suffix(".json"), {"experiment": exp.to_dict(), "attack": attack.state(),
                                               "seconds": seconds, "versions": versions()})
    return seconds


def run_defence(model: nn.Module, attack: Attack | None, splits: Splits, defense: str = "ngf", *,
                device: torch.device | str = "auto", progress: bool = True, before: dict | None = None,
                test_predictions: dict | None = None, features: FeatureCache | None = None,
                **options: Any) -> dict[str, Any]:
    """Purify ``model`` with ``splits.clean`` and measure it on ``splits.test`` before and after.

    ``test_predictions`` (from :func:`load_or_train`) lets a defence that changed only the
    classifier be measured from the cached classifier inputs instead of a second pass; ``features``
    (a :class:`~ngfkit.defences.FeatureCache`) shares the clean set's classifier inputs between runs.
    """
    device = resolve_device(device)
    before = before or evaluate(model, splits.test, attack, device=device)
    purified, history = purify(model, splits.clean, defense, device=device, progress=progress, features=features,
                               **options)
    check.finite_model(purified, f"the model purified by {defense!r}", PURIFIED_NOT_FINITE)
    if test_predictions is not None and history["changed"] == "head":
        after = evaluate_layer(classifier_layer(purified), test_predictions)
    else:
        after = evaluate(purified, splits.test, attack, device=device)
    result = {"defense": defense, "before": before, "after": after, "history": history, "model": purified}
    if attack is not None:
        result["der"] = defence_effectiveness_rating(before, after)
    return result
