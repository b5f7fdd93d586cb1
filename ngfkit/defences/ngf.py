"""NGF as a defence: natural-gradient fine-tuning of one (or a few) linear layers, with its
strength chosen from clean data alone."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..batches import subset_of
from ..curvature.fisher import FISHER_TYPES
from ..errors import NgfkitError
from .. import validation as check
from ..metrics import evaluate, predict
from ..models import classifier_layer, find_classifier
from ..train import CombinedHooks, TrainConfig, frozen_except, train_model
from .base import DEFENCES, Defence
from .classifier_only import FeatureDataset, HeadDefence, head_predictions, layer_matrix, set_layer_matrix
from .batched_heads import fit_heads
from .feature_shift import FeatureShift
from .natural_gradient import FisherRegulariser, NaturalGradient, layer_statistics
from .selection import accuracy_drop, selection_record

BODY_MODES = ("frozen", "sgd")


@dataclass
class NGFConfig:
    """Options of :class:`NGF`. ``lr=None`` means: choose it on ``lr_grid`` from clean data."""

    layers: tuple[str, ...] | None = None  # Linear layers to precondition; None: the classifier
    body: str = "frozen"  # "frozen": strictly those layers; "sgd": the rest take plain SGD steps
    steps: int = 500
    batch_size: int = 128
    lr: float | None = None
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    final_lr_ratio: float = 0.1
    damping: float = 1e-4
    kl_clip: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    fisher: str = "empirical"  # or "sampled": labels drawn from the model (true Fisher)
    ekfac: bool = True
    factor_every: int = 10
    eigen_every: int = 100
    decay: float = 0.95
    # "diag" or "kfac" Fisher penalty. Once the optimiser's EKFAC eigenbasis exists (after the
    # first factor update) both take the same proximal step in that basis, so the choice only
    # matters for the first steps; strength 0 switches the regulariser off
    regulariser: str = "diag"
    reg_strength: float = 10.0  # η; 0 switches the regulariser off
    acc_budget: float = 3.0  # most clean-accuracy points the chosen setting may cost (held out)
    folds: int = 5  # cross-fitting folds of the clean set for choosing lr
    eval_every: int = 25
    augment: int = 8  # randomly cropped + flipped views of each clean image, besides the image itself
    # the reference code's training details (generic path only): lr x 0.1 at each milestone step instead
    # of the cosine schedule, weight decay only from this step on, batches drawn with replacement, and a
    # freshly initialised classifier (its second script)
    lr_milestones: tuple[int, ...] = ()
    weight_decay_from: int = 0
    sample_with_replacement: bool = False
    reinit_head: bool = False
    # FST's head term α⟨W, W_orig⟩ with ‖W‖ kept at ‖W_orig‖ (generic path; with body="sgd" the body shifts)
    feature_shift: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.body not in BODY_MODES:
            raise NgfkitError(f"NGF body must be one of {', '.join(BODY_MODES)}, got {self.body!r}")
        if self.fisher not in FISHER_TYPES:
            raise NgfkitError(f"NGF fisher must be one of {', '.join(FISHER_TYPES)}, got {self.fisher!r}")
        if self.regulariser not in ("diag", "kfac"):
            raise NgfkitError(f"NGF regulariser must be diag or kfac, got {self.regulariser!r}")
        if not (self.reg_strength >= 0 and self.reg_strength < float("inf")):  # also rejects NaN
            raise NgfkitError(f"NGF reg_strength (η) must be a finite number >= 0, got {self.reg_strength!r}; "
                              f"0 switches the regulariser off")
        if self.lr is None and not self.lr_grid:
            raise NgfkitError("give NGF a learning rate or a non-empty lr_grid")
        for name in ("steps", "batch_size", "factor_every", "eigen_every", "eval_every"):
            setattr(self, name, check.whole(getattr(self, name), f"ngf {name}", least=1))
        for name in ("augment", "weight_decay_from", "seed"):
            setattr(self, name, check.whole(getattr(self, name), f"ngf {name}", least=0))
        self.folds = check.whole(self.folds, "ngf folds", least=2, fix="choosing lr cross-fits on the clean set")
        if self.lr is not None:
            self.lr = check.positive(self.lr, "ngf lr", "or leave it out to choose it from clean data")
        self.lr_grid = tuple(sorted(check.positive(v, "every ngf lr_grid value") for v in self.lr_grid))
        self.acc_budget = check.number(self.acc_budget, "ngf acc_budget", low=0.0,
                                       fix="it is a number of clean-accuracy points, e.g. 3")
        for name in ("damping", "kl_clip"):
            setattr(self, name, check.positive(getattr(self, name), f"ngf {name}"))
        for name in ("final_lr_ratio", "weight_decay", "feature_shift"):
            setattr(self, name, check.number(getattr(self, name), f"ngf {name}", low=0.0))
        self.momentum = check.number(self.momentum, "ngf momentum", low=0.0, high=1.0, high_open=True)
        self.decay = check.number(self.decay, "ngf decay", low=0.0, high=1.0)
        if self.layers is not None:
            self.layers = tuple(self.layers)
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)

    def reference_details(self) -> bool:
        """Whether a training detail of the reference code is on (these run on the generic path only)."""
        return bool(self.lr_milestones or self.weight_decay_from or self.sample_with_replacement or self.reinit_head
                    or self.feature_shift)


def milestone_factor(milestones: tuple[int, ...]):
    """The learning-rate multiplier of a step schedule: x 0.1 at each milestone step."""
    return lambda step: 0.1 ** sum(step >= m for m in milestones)


@DEFENCES.register("ngf")
class NGF(HeadDefence):
    """Natural Gradient Fine-tuning (Karim et al. 2023).

    By default only the final classifier is trained, the body frozen in eval mode; its inputs on
    the clean set are then computed once and every step runs on those cached features (all the
    runs that choosing the learning rate needs train at once, as one batch of heads). The
    learning rate is the strongest on ``lr_grid`` whose cross-fitted clean accuracy (each clean
    image predicted by a model fine-tuned without it) falls by at most ``acc_budget`` points
    (:mod:`ngfkit.defences.selection`). With ``body="sgd"`` or other ``layers``, NGF runs as
    hooks inside the shared training loop on images.
    """

    name = "ngf"
    Config = NGFConfig
    strength = "lr"
    strength_grid = NGFConfig.lr_grid

    def layer_names(self, model: nn.Module) -> tuple[str, ...]:
        """The layers NGF preconditions: ``layers``, or the model's classifier."""
        return self.config.layers or (find_classifier(model)[0],)

    def head_only(self, model: nn.Module) -> bool:
        return self.config.body == "frozen" and self.layer_names(model) == (find_classifier(model)[0],)

    def on_cached_features(self, model: nn.Module) -> bool:
        """Whether the batched heads on cached features apply: only a biased classifier is trained."""
        return (self.head_only(model) and not self.config.reference_details()
                and classifier_layer(model, self.layer_names(model)[0]).bias is not None)

    def fit_heads(self, data: FeatureDataset, head: nn.Linear, values, *, on_step=None) -> list[torch.Tensor]:
        every = torch.arange(len(data.labels))
        fit = fit_heads(data.features, data.labels, layer_matrix(head), [every] * len(values), list(values),
                        self.config, on_step=on_step)
        return list(fit["weight"])

    def path(self, model, clean_data, values, *, device, progress, features=None):
        if self.on_cached_features(model):
            yield from super().path(model, clean_data, values, device=device, progress=progress, features=features)
        else:
            yield from Defence.path(self, model, clean_data, values, device=device, progress=progress,
                                    features=features)

    def run(self, model: nn.Module, clean_data: Dataset, *, device: torch.device, progress: bool, features=None):
        cfg = self.config
        model = copy.deepcopy(model).to(device).eval()
        names = self.layer_names(model)
        for name in names:
            classifier_layer(model, name)  # clear error for a wrong name
        history: dict = {"layers": list(names), "num_clean": len(clean_data)}
        lr = cfg.lr
        if self.on_cached_features(model):
            head = classifier_layer(model, names[0])
            data = self.head_features(model, clean_data, device=device, features=features)
            if lr is None:
                history["selection"] = self.cross_fit_selection(data, head, progress=progress)
                lr = history["selection"]["chosen"]
            fit = fit_heads(data.features, data.labels, layer_matrix(head), [torch.arange(len(data.labels))], [lr], cfg)
            set_layer_matrix(head, fit["weight"][0])
            history["loss"] = fit["loss"][:, 0].tolist()
        else:
            if lr is None:
                reference = predict(model, clean_data, device=device)
                history["selection"] = self._cross_fit(
                    reference["labels"], self._generic_grid(model, names, clean_data, device), progress,
                    before=reference["clean"])
                lr = history["selection"]["chosen"]
            model, fit = self.finetune_layers(model, names, clean_data, lr, device, progress, desc="ngf")
            history["loss"] = fit["loss"]
        history["setting"] = {"lr": lr, "damping": cfg.damping, "steps": cfg.steps, "augment": cfg.augment}
        return model.eval(), history

    def cross_fit_selection(self, data: FeatureDataset, head: nn.Linear, *, progress: bool = False) -> dict:
        """Choose the learning rate on cached features ``data`` of the clean set: the selection record
        (:func:`~ngfkit.defences.selection.selection_record`, ``estimate="cross-fit"``) with each
        value's cross-fitted accuracy and its held-out accuracy curve."""
        weight = layer_matrix(head)
        return self._cross_fit(data.labels, self._head_grid(data, weight), progress,
                               before=head_predictions(weight, data.features[0]))

    def _head_grid(self, data: FeatureDataset, weight: torch.Tensor):
        """Held-out predictions for every (lr, fold) at once, with the batched heads."""
        cfg = self.config

        def grid(folds: list[torch.Tensor]):
            train_sets, held_out, lrs = [], [], []
            for lr in cfg.lr_grid:
                for k, fold in enumerate(folds):
                    train_sets.append(torch.cat([f for j, f in enumerate(folds) if j != k]))
                    held_out.append(fold)
                    lrs.append(lr)
            fit = fit_heads(data.features, data.labels, weight, train_sets, lrs, cfg, held_out=held_out)
            predictions = head_predictions(fit["weight"], data.features[0]).cpu()
            results = []
            for g, lr in enumerate(cfg.lr_grid):
                rows = range(g * len(folds), (g + 1) * len(folds))
                predicted = torch.empty(len(data.labels), dtype=torch.long)
                for r, fold in zip(rows, folds):
                    predicted[fold] = predictions[r, fold]
                curve = [(step, sum(float(acc[r]) * len(folds[r % len(folds)]) for r in rows) / len(data.labels))
                         for step, acc in fit["curve"]]
                results.append((predicted, curve))
            return results

        return grid

    def _generic_grid(self, model: nn.Module, names, clean_data: Dataset, device):
        """Held-out predictions for every (lr, fold), one full fine-tuning run each."""

        def grid(folds: list[torch.Tensor]):
            results = []
            for lr in self.config.lr_grid:
                predicted = torch.empty(len(clean_data), dtype=torch.long)
                curve: dict[int, float] = {}
                for k, fold in enumerate(folds):
                    train = subset_of(clean_data, torch.cat([f for j, f in enumerate(folds) if j != k]))
                    held = subset_of(clean_data, fold)
                    tuned, fit = self.finetune_layers(model, names, train, lr, device, False, desc="select", held_out=held)
                    predicted[fold] = predict(tuned, held, device=device)["clean"]
                    for step, acc in fit["val_curve"]:
                        curve[step] = curve.get(step, 0.0) + acc * len(fold) / len(clean_data)
                results.append((predicted, sorted(curve.items())))
            return results

        return grid

    def finetune_layers(self, net: nn.Module, layer_names, data: Dataset, lr: float, device, progress: bool,
                  desc: str, held_out: Dataset | None = None) -> tuple[nn.Module, dict]:
        """NGF's generic path: fine-tune a copy of ``net``'s ``layer_names`` (and, with ``body="sgd"``, every
        other parameter by plain SGD) at base learning rate ``lr``, as hooks inside the shared training
        loop on ``data`` (images, or a :class:`FeatureDataset`); with ``held_out``, record its accuracy
        every ``eval_every`` steps. Returns ``(tuned copy, fit)``; ``fit["val_curve"]`` holds that curve."""
        cfg = self.config
        net = copy.deepcopy(net)
        curve: list[tuple[int, float]] = []

        def on_step(step: int, loss: float) -> None:
            if held_out is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                curve.append((step, evaluate(net, held_out, device=device)["acc"]))

        modules = dict(net.named_modules())
        layers = {name: modules[name] for name in layer_names}
        head = find_classifier(net)[1]
        original_head = head.weight.detach().clone()
        if cfg.reinit_head:
            generator = torch.Generator().manual_seed(cfg.seed)
            with torch.no_grad():  # Xavier-uniform weights and a zero bias, as the reference's second script
                bound = (6.0 / (head.in_features + head.out_features)) ** 0.5
                head.weight.copy_(torch.rand(head.weight.shape, generator=generator) * 2 * bound - bound)
                if head.bias is not None:
                    head.bias.zero_()
        layer_params = [p for layer in layers.values() for p in layer.parameters()]
        params = list(net.parameters()) if cfg.body == "sgd" else layer_params
        natural = NaturalGradient(layers, damping=cfg.damping, kl_clip=cfg.kl_clip, decay=cfg.decay,
                                  factor_every=cfg.factor_every, eigen_every=cfg.eigen_every,
                                  fisher=cfg.fisher, ekfac=cfg.ekfac, seed=cfg.seed)
        regulariser = None
        if cfg.reg_strength > 0:
            # the backdoored model's Fisher on the clean images themselves, not their augmented views
            clean_images = data.original() if isinstance(data, FeatureDataset) else data
            stats = layer_statistics(net, layers, clean_images, fisher=cfg.fisher, seed=cfg.seed, device=device)
            regulariser = FisherRegulariser(layers, stats, cfg.reg_strength, cfg.regulariser).use_metric(natural)
        shift = FeatureShift(head, original_head, cfg.feature_shift) if cfg.feature_shift > 0 else None
        train_cfg = TrainConfig(steps=cfg.steps, lr=lr, final_lr_ratio=cfg.final_lr_ratio, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, batch_size=min(cfg.batch_size, len(data)),
                                augment=bool(cfg.augment) and not isinstance(data, FeatureDataset))
        try:
            with frozen_except(net, params):
                fit = train_model(net, data, train_cfg, seed=cfg.seed, device=device, progress=progress,
                                  desc=desc, params=params, train_mode=cfg.body == "sgd",
                                  hooks=CombinedHooks(natural, regulariser, shift), on_step=on_step,
                                  extra_loss=shift.loss if shift is not None else None,
                                  lr_factor=milestone_factor(cfg.lr_milestones) if cfg.lr_milestones else None,
                                  weight_decay_from=cfg.weight_decay_from, replacement=cfg.sample_with_replacement)
        finally:
            natural.close()
        fit["val_curve"] = curve
        return net.eval(), fit

    def _cross_fit(self, labels: torch.Tensor, grid_predictions, progress: bool, *, before: torch.Tensor) -> dict:
        """Apply the one rule to cross-fitted clean accuracies (each clean image predicted by a model
        fine-tuned without it) of every lr on ``lr_grid``; returns the selection record."""
        cfg = self.config
        n = len(labels)
        if n < 2 * cfg.folds:
            raise NgfkitError(f"the clean set has {n} images, too few for {cfg.folds}-fold selection; "
                              f"give more clean data or a fixed learning rate (lr)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
        folds = list(torch.chunk(order, cfg.folds))
        with tqdm(total=1, desc=f"ngf: {len(cfg.lr_grid)} lr x {cfg.folds} folds on clean data",
                  disable=not progress, leave=False) as bar:
            results = grid_predictions(folds)
            bar.update(1)
        tried = [{"value": lr, **accuracy_drop(labels, before, predicted),
                  "val_curve": [(int(step), float(acc)) for step, acc in curve]}
                 for lr, (predicted, curve) in zip(cfg.lr_grid, results)]
        val_acc_before = 100.0 * float((before.cpu() == labels.cpu()).double().mean())
        return selection_record("lr", tried, cfg.acc_budget, "cross-fit", val_acc_before, folds=cfg.folds)


def _register_variant(name: str, doc: str, **defaults) -> type[NGF]:
    """An NGF ablation as its own registry entry: NGF with other defaults (options still apply)."""
    config = dataclasses.make_dataclass(
        f"{name.title().replace('-', '')}Config",
        [(key, type(value), dataclasses.field(default=value)) for key, value in defaults.items()],
        bases=(NGFConfig,))
    config.__doc__ = f"Options of ``{name}``: :class:`NGFConfig` with {defaults}."
    variant = type(name.title().replace("-", ""), (NGF,), {
        "__doc__": doc, "name": name, "Config": config,
        "strength_grid": defaults.get("lr_grid", NGF.strength_grid)})
    return DEFENCES.register(name)(variant)


# The ablations the book compares; each changes one thing about "ngf".
_register_variant(
    "ngf-sgd-body",
    "NGF on the classifier plus plain SGD on every other layer, BatchNorm in train mode: what the "
    "public reference code does. Runs on images, not cached features, so it is far slower; it takes "
    "200 steps of 64 images instead of 500 of 128, and a fixed learning rate of 0.01 by default (the "
    "cross-fitted choice would cost 25 full runs), to stay affordable on a CPU.",
    body="sgd", steps=200, batch_size=64, augment=1, lr=0.01)
_register_variant("ngf-noreg", "NGF without the Fisher regulariser (η = 0).", reg_strength=0.0)
_register_variant("ngf-sampled", "NGF with the sampled (true) Fisher: labels drawn from the model's "
                  "predictive distribution instead of the clean labels.", fisher="sampled")
_register_variant("ngf-kfac", "NGF preconditioned with plain K-FAC instead of EKFAC.", ekfac=False)
_register_variant(
    "ngf-reference",
    "The authors' public reference code, as its main script runs it: EKFAC natural gradient on the final "
    "linear layer and plain SGD (momentum 0.9) on every other parameter, BatchNorm in train mode, empirical "
    "Fisher, damping 1e-3, no regulariser, 500 steps of 128 images drawn with replacement (random crop + "
    "flip), lr 1e-3 for steps 0-199 and 1e-4 after, weight decay 1e-4 from step 200 on.",
    body="sgd", damping=1e-3, reg_strength=0.0, steps=500, batch_size=128, lr=1e-3, lr_milestones=(200,),
    weight_decay_from=200, sample_with_replacement=True, augment=1, final_lr_ratio=1.0)
_register_variant(
    "ngf-reference-reinit",
    "The reference code's second script: the classifier re-initialised (Xavier), the sampled (true) Fisher, "
    "a constant lr 0.01, every parameter trained (natural gradient on the classifier, SGD elsewhere).",
    body="sgd", damping=1e-3, reg_strength=0.0, steps=500, batch_size=128, lr=1e-2, fisher="sampled",
    reinit_head=True, sample_with_replacement=True, weight_decay_from=200, augment=1, final_lr_ratio=1.0)
