"""Neural Attention Distillation (``nad``).

Li, Lyu, Koren, Lyu, Li, Ma: "Neural Attention Distillation: Erasing Backdoor Triggers from Deep
Neural Networks", ICLR 2021 (official code: github.com/bboylyg/NAD, ``main.py`` and ``at.py``).

A *teacher* is the backdoored model fine-tuned on the clean set; the *student*, again the
backdoored model, is then fine-tuned on the clean set with

    CE(f_s(x), y) + Σ_i β_i · MSE(A(F_s^i(x)), A(F_t^i(x)))

where ``F^i`` are feature maps ``(N, C, H, W)`` of a few layers, the teacher's detached, and
``A(F) = Σ_c |F_c|^p`` flattened over ``H × W`` and divided by its L2 norm (+1e-6): the
attention transfer loss of Zagoruyko & Komodakis that NAD's ``at.py`` implements.

Authors' values: p = 2; β = (500, 1000, 1000) on the outputs of WRN-16-1's three groups (the
paper and BackdoorBench; later versions of the repo's ``config.py`` default to (0, 0, 5000)); SGD
momentum 0.9, weight decay 1e-4, batch 64, crop + flip augmentation, student in train mode,
teacher in eval mode.

Deviations:

* The layers: with no ``layers`` option, β applies to the outputs of the **last len(β)
  activation modules** (ReLU and kin) of the model body with 4-D outputs, found by a dry forward
  pass; for smallcnn that is the ReLUs after its last three convolutions. A body with fewer such
  modules (e.g. preact-resnet18, whose blocks call ``F.relu``) falls back to its top-level
  children: the last one at each of its last len(β) output shapes, i.e. the ends of its stages,
  which is what NAD's WRN groups are. ``layers`` names modules explicitly (``model.named_modules()``
  names, one per β).
* Learning rate 0.01, constant, for teacher and student: BackdoorBench's effective value. The
  NAD repo uses 0.1 decayed to 0.01 (and Nesterov momentum; the shared loop has none), teacher
  10 epochs and student 20 epochs on 5 % of CIFAR-10. Here both train for a number of steps
  (``teacher_steps``, ``steps``, default 200 each); the constant rate makes the snapshot after
  ``k`` student steps the ``k``-step run, so :meth:`path` trains the teacher once and the student
  once.
* Teacher and student see the same seeded batches (same ``seed``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch.utils.hooks import RemovableHandle

from ..batches import iterate_batches
from ..errors import NgfkitError
from .. import validation as check
from .base import DEFENCES
from .finetune import FineTuneConfig, StepsDefence, finetune

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Sigmoid, nn.Tanh)


@dataclass
class NADConfig(FineTuneConfig):
    """Options of :class:`NAD`: the student's fine-tuning (``steps``, ``lr``… as for ``ft``), the
    teacher's length and rate, the attention weights ``betas`` and the layers they apply to."""

    lr: float = 0.01
    weight_decay: float = 1e-4
    teacher_steps: int = 200
    teacher_lr: float = 0.01
    betas: tuple[float, ...] = (500.0, 1000.0, 1000.0)
    p: float = 2.0
    layers: tuple[str, ...] | None = None  # one module name per beta; None: found automatically

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.teacher_steps, bool) or not isinstance(self.teacher_steps, int) or self.teacher_steps < 1:
            raise NgfkitError(f"nad teacher_steps must be a whole number of at least 1, got {self.teacher_steps!r}")
        self.teacher_lr = check.positive(self.teacher_lr, "nad teacher_lr")
        self.p = check.positive(self.p, "nad p")
        betas = (self.betas,) if isinstance(self.betas, (int, float)) else tuple(self.betas)
        if not betas:
            raise NgfkitError(f"nad betas must be one or more numbers >= 0, got {self.betas!r}")
        self.betas = tuple(check.number(b, "each of nad betas", low=0.0) for b in betas)
        if self.layers is not None:
            layers = self.layers.split(",") if isinstance(self.layers, str) else self.layers
            self.layers = tuple(str(name).strip() for name in layers)
            if len(self.layers) != len(self.betas):
                raise NgfkitError(f"nad needs one beta per layer: {len(self.layers)} layers, "
                                  f"{len(self.betas)} betas")
            if len(set(self.layers)) != len(self.layers):
                raise NgfkitError(f"nad layers must be different modules, got {', '.join(self.layers)}")


def attention_map(features: Tensor, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    """``Σ_c |F_c|^p`` of ``(N, C, H, W)`` features, flattened to ``(N, H·W)``, each row divided by
    its L2 norm (+``eps``, as in NAD's ``at.py``)."""
    am = features.abs().pow(p).sum(1).flatten(1)
    return am / (am.norm(dim=1, keepdim=True) + eps)


def attention_loss(student: list[Tensor], teacher: list[Tensor], betas: tuple[float, ...], p: float) -> Tensor:
    """``Σ_i β_i MSE(A(student_i), A(teacher_i))``, the teacher's maps detached."""
    return sum(beta * F.mse_loss(attention_map(s, p), attention_map(t.detach(), p))
               for beta, s, t in zip(betas, student, teacher))


def _record(modules: dict[str, nn.Module], store: dict[str, Tensor]) -> list[RemovableHandle]:
    """Forward hooks that keep each named module's latest output in ``store``."""
    def hook_for(name: str):
        def hook(module, inputs, output):
            # a copy: a later in-place op (a ReLU after a hooked BatchNorm) would change the output
            store[name] = output.clone()
        return hook
    return [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]


def _strip(handles: list[RemovableHandle], models: list[nn.Module]) -> None:
    """Remove the hooks from the hooked model and from its deep copies (snapshots), which carry
    copies of the hook tables that the handles do not reach."""
    ids = {h.id for h in handles}
    for h in handles:
        h.remove()
    for model in models:
        for module in model.modules():
            for table in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
                hooks = getattr(module, table, None)
                if hooks is not None:
                    for i in ids:
                        hooks.pop(i, None)


def attention_layers(model: nn.Module, data: Dataset, count: int, layers: tuple[str, ...] | None,
                     device: torch.device) -> tuple[str, ...]:
    """Names of the modules whose outputs NAD distils (see the module docstring); checks
    explicit ``layers`` exist and give 4-D outputs."""
    named = dict(model.named_modules())
    if layers is not None:
        missing = [name for name in layers if name not in named or not name]
        if missing:
            raise NgfkitError(f"nad layer {missing[0]!r} is not a module of this model; name modules as in "
                              "model.named_modules(), e.g. body.2")
    root_name = "body" if isinstance(getattr(model, "body", None), nn.Module) else ""
    root = named[root_name]
    prefix = f"{root_name}." if root_name else ""
    probe = copy.deepcopy(model).to(device).eval()
    probe_named = dict(probe.named_modules())
    watched = layers or tuple(prefix + n for n, _ in root.named_modules() if n)
    seen: dict[str, tuple[int, tuple]] = {}  # name -> (order of its last call, output shape)
    counter = [0]

    def hook_for(name: str):
        def hook(module, inputs, output):
            counter[0] += 1
            shape = tuple(output.shape) if isinstance(output, Tensor) else ()
            seen[name] = (counter[0], shape)
        return hook

    handles = [probe_named[n].register_forward_hook(hook_for(n)) for n in watched]
    try:
        x, _ = next(iter(iterate_batches(data, min(2, len(data)), device=device)))
        with torch.no_grad():
            probe(x)
    finally:
        for h in handles:
            h.remove()
    if layers is not None:
        for name in layers:
            if name not in seen:
                raise NgfkitError(f"nad layer {name!r} is not used in the model's forward pass")
            if len(seen[name][1]) != 4:
                raise NgfkitError(f"nad layer {name!r} gives {len(seen[name][1])}-D outputs; attention needs "
                                  "(N, C, H, W) feature maps")
        return layers

    def spatial(name: str) -> bool:
        shape = seen[name][1]
        return len(shape) == 4 and shape[2] * shape[3] > 1

    by_order = sorted((n for n in seen if spatial(n)), key=lambda n: seen[n][0])
    activations = [n for n in by_order if isinstance(named[n], ACTIVATIONS)]
    if len(activations) >= count:
        return tuple(activations[-count:])
    children = [n for n in by_order if n.count(".") == prefix.count(".")]
    stage_ends = [n for i, n in enumerate(children)
                  if i + 1 == len(children) or seen[children[i + 1]][1][1:] != seen[n][1][1:]]
    if len(stage_ends) >= count:
        return tuple(stage_ends[-count:])
    raise NgfkitError(f"nad could not find {count} layers with spatial feature maps in this model; "
                      "name them with the layers option (one per beta)")


@DEFENCES.register("nad")
class NAD(StepsDefence):
    """NAD: fine-tune a teacher on the clean set, then fine-tune the backdoored model again while
    matching the teacher's attention maps (see the module docstring for the paper and every
    deviation). The strength is the number of student steps."""

    name = "nad"
    Config = NADConfig

    def _train(self, model, data, *, device, progress, snapshot_at=()):
        cfg = self.config
        names = attention_layers(model, data, len(cfg.betas), cfg.layers, device)
        teacher_cfg = FineTuneConfig(steps=cfg.teacher_steps, lr=cfg.teacher_lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                                     augment=cfg.augment, seed=cfg.seed)
        teacher, teacher_fit, _ = finetune(model, data, teacher_cfg, device=device, progress=progress,
                                           desc="nad teacher")
        teacher.requires_grad_(False)
        teacher_maps: dict[str, Tensor] = {}
        student_maps: dict[str, Tensor] = {}
        teacher_handles = _record({n: dict(teacher.named_modules())[n] for n in names}, teacher_maps)
        student_handles: list[RemovableHandle] = []
        attention: list[float] = []

        # finetune() trains a deep copy, so the student's hooks go on that copy when it is made
        def hooks_for(net: nn.Module, params: list[Tensor]) -> None:
            student_handles.extend(_record({n: dict(net.named_modules())[n] for n in names}, student_maps))

        extra = self._extra_loss(teacher, names, teacher_maps, student_maps, attention)
        try:
            student, fit, snapshots = finetune(model, data, cfg, device=device, progress=progress, desc="nad",
                                               hooks_for=hooks_for, extra_loss=extra, snapshot_at=snapshot_at)
        finally:
            _strip(teacher_handles, [teacher])
            teacher_maps.clear()
            student_maps.clear()
        _strip(student_handles, [student, *snapshots.values()])
        fit = {**fit, "attention_loss": attention, "teacher_loss": teacher_fit["loss"], "layers": list(names)}
        return student, fit, snapshots

    def _extra_loss(self, teacher: nn.Module, names: tuple[str, ...], teacher_maps: dict, student_maps: dict,
                    record: list[float]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        betas, p = self.config.betas, self.config.p

        def extra_loss(x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
            with torch.no_grad():
                teacher(x)
            loss = attention_loss([student_maps[n] for n in names], [teacher_maps[n] for n in names], betas, p)
            record.append(loss.item())
            return loss
        return extra_loss

    def run(self, model, clean_data, *, device, progress, features=None):
        purified, fit, _ = self._train(model, clean_data, device=device, progress=progress)
        return purified, {key: fit[key] for key in ("loss", "attention_loss", "teacher_loss", "layers")}
