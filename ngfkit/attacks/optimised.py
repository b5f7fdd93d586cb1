"""Attacks whose trigger is optimised against a clean reference model before poisoning.

* TrojanNN (``trojan-one``, ``trojan-all``): a patch at a fixed place whose pixel values drive a
  few strongly connected internal neurons to a high activation;
* LF (``lf``): a universal, L∞-bounded perturbation that contains only low spatial frequencies and
  pushes images towards the target class.

Both optimise against ``context.reference_model()`` (a clean model of the victim's architecture)
in :meth:`fit_trigger`; the victim is then trained by ngfkit's ordinary loop on the training set
poisoned with the fixed, optimised trigger.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..batches import iterate_batches
from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength, TriggerContext
from .patch import BadNets

# --- helpers shared by both methods -----------------------------------------------------------


def _frozen_reference(context: TriggerContext) -> nn.Module:
    """A private eval-mode copy of the clean reference model with gradients off for its weights
    (the trigger is optimised; the model must stay exactly as cached)."""
    model = copy.deepcopy(context.reference_model()).to(context.device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _training_batches(context: TriggerContext, batch_size: int, steps: int, desc: str
                      ) -> Iterator[tuple[Tensor, Tensor]]:
    """``steps`` shuffled batches ``(x (B, C, H, W), y (B,))`` of ``context.train``, starting a new
    epoch as often as needed; the order is seeded by ``context.seed``."""
    if len(context.train) == 0:
        raise NgfkitError("the attacker's training set is empty; a learned trigger needs training images")
    generator = torch.Generator().manual_seed(context.seed)
    with tqdm(total=steps, desc=desc, disable=not context.progress, unit="step", leave=False) as bar:
        done = 0
        while True:
            for batch in iterate_batches(context.train, batch_size, shuffle=True, generator=generator,
                                         device=context.device):
                yield batch
                done += 1
                bar.update(1)
                if done == steps:
                    return


def _check_positive(params: dict, integers: tuple[str, ...] = (), reals: tuple[str, ...] = ()) -> None:
    for key in integers:
        value = params[key]
        if not isinstance(value, (int, float)) or value != int(value) or value < 1:
            raise NgfkitError(f"{key} must be a whole number >= 1, got {value!r}")
    for key in reals:
        value = params[key]
        if not isinstance(value, (int, float)) or not value > 0:  # `not > 0` also rejects NaN
            raise NgfkitError(f"{key} must be a number > 0, got {value!r}")


# --- TrojanNN -----------------------------------------------------------------------------------


def trojan_layer(model: nn.Module) -> tuple[nn.Module, Tensor]:
    """The internal layer whose neurons TrojanNN drives, and the connectivity ``(D,)`` of each neuron.

    The layer is the one feeding the classifier head (``model.features``, ``D`` neurons). Where
    the body makes those features with a hidden ``nn.Linear`` (smallcnn: ``Linear -> ReLU``), that
    Linear's output is hooked (before the ReLU, so that a neuron silent at the start still gets a
    gradient) and the connectivity is the sum of absolute *incoming* weights, as in the paper
    (the neuron most strongly connected to the previous layer). Bodies without such a Linear
    (ResNets: features pooled from conv channels) hook the body's output and use the sum of
    absolute *outgoing* weights into the head instead, the only weights every
    :class:`~ngfkit.models.Classifier` has for that layer.
    """
    head, body = getattr(model, "head", None), getattr(model, "body", None)
    if not isinstance(head, nn.Linear) or not isinstance(body, nn.Module):
        raise NgfkitError("TrojanNN needs a reference model with a body and a Linear head "
                          "(an ngfkit.models.Classifier); build it with ngfkit.models")
    hidden = [m for m in body.modules() if isinstance(m, nn.Linear)]
    if hidden and hidden[-1].out_features == head.in_features:
        return hidden[-1], hidden[-1].weight.detach().abs().sum(dim=1)
    return body, head.weight.detach().abs().sum(dim=0)


class TrojanNN(BadNets):
    """TrojanNN (Liu et al., NDSS 2018): a square patch stamped at a fixed place (bottom-right,
    ``margin`` pixels from the edges, like BadNets) whose pixel values are optimised so that the
    ``neurons`` most connected neurons of an internal layer of the clean reference model reach
    ``target_activation`` (see :func:`trojan_layer`). Triggered training images are relabelled and
    the victim is trained on them (TrojanNN retrains the model on such data).

    Trigger tensors: ``pattern`` ``(C, H, W)`` (zero outside the patch) and ``mask`` ``(1, H, W)``.
    The patch starts from seeded uniform noise (the paper starts from a random patch) and takes
    ``steps`` Adam steps of size ``lr`` on the paper's cost ``mean (activation - target)²``, with
    pixel values clamped to ``[0, 1]`` after each step.

    ``target_activation`` is set far above what the neurons reach on clean images (at most ~13
    on the reference smallcnn), as in the paper, so the patch is pushed as far as it can go.

    Deviations: the paper's square or logo triggers cover several percent of a 224×224 face
    image; a 5×5 square is ~3% of a 28×28 image, big enough for the optimised pixels to excite
    the neurons and for a 1-epoch victim to learn, while leaving the garment visible. The paper
    optimises the trigger alone on a blank image; here it is stamped on training batches, so the
    neurons fire on the images the trigger is actually used on (on Fashion-MNIST's black
    background the two hardly differ).
    """

    name = "trojannn"  # not registered: use trojan-one or trojan-all
    defaults: ClassVar[dict[str, Any]] = {"patch_size": 5, "margin": 1, "neurons": 1, "target_activation": 20.0,
                                          "steps": 200, "lr": 0.1, "batch_size": 32}
    learned = True
    family = "optimised"
    # the patch saturates long before its 200 steps (about 4 s of CPU at 40)
    short_fit: ClassVar[dict[str, Any]] = {"steps": 40}
    strength = Strength(None, "the patch's pixels were optimised at its size; another size needs a new fit")

    def check_params(self) -> None:
        super().check_params()
        _check_positive(self.params, integers=("neurons", "steps", "batch_size"), reals=("target_activation", "lr"))

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        stamp = super().build_trigger(generator)
        mask = stamp["mask"]
        return {"pattern": torch.rand(self.image_shape, generator=generator) * mask, "mask": mask}

    def fit_trigger(self, context: TriggerContext) -> None:
        model = _frozen_reference(context)
        layer, connectivity = trojan_layer(model)
        count = int(self.params["neurons"])
        if count > connectivity.numel():
            raise NgfkitError(f"TrojanNN asks for {count} neurons but the layer it drives has only "
                              f"{connectivity.numel()}; lower neurons")
        neurons = connectivity.topk(count).indices.to(context.device)
        target = float(self.params["target_activation"])
        mask = self.trigger["mask"].to(context.device)
        pattern = self.trigger["pattern"].to(context.device).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([pattern], lr=float(self.params["lr"]))
        captured: dict[str, Tensor] = {}

        def keep_output(module: nn.Module, inputs, output: Tensor) -> None:
            # a copy: smallcnn's next ReLU is in place and would overwrite the pre-activation
            captured["layer"] = output.clone()

        handle = layer.register_forward_hook(keep_output)
        try:
            for x, _ in _training_batches(context, int(self.params["batch_size"]), int(self.params["steps"]),
                                          f"{self.name} trigger"):
                model.features(x * (1 - mask) + pattern * mask)
                activation = captured["layer"].flatten(1)[:, neurons]
                loss = (activation - target).pow(2).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                with torch.no_grad():
                    pattern.clamp_(0.0, 1.0)
        finally:
            handle.remove()
        self.trigger = {"pattern": (pattern.detach() * mask).cpu(), "mask": self.trigger["mask"]}

    def apply(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return super().apply(x)


@ATTACKS.register("trojan-one")
class TrojanOne(TrojanNN):
    """TrojanNN, all-to-one: every triggered image goes to the target class (see :class:`TrojanNN`)."""

    name = "trojan-one"
    modes = ("all-to-one",)
    order, paper_order = 0, 2


@ATTACKS.register("trojan-all")
class TrojanAll(TrojanNN):
    """TrojanNN, all-to-all: a triggered image of class ``y`` goes to ``(y + 1) mod C`` (see :class:`TrojanNN`)."""

    name = "trojan-all"
    modes = ("all-to-all",)
    order, paper_order = 1, 3


# --- LF ------------------------------------------------------------------------------------------


def low_frequency_window(height: int, width: int, cutoff: float) -> Tensor:
    """Bool ``(H, W)`` mask over the 2-D DFT (``torch.fft.fft2`` layout) keeping the frequencies
    ``(ky, kx)`` (in cycles per image) with ``ky² + kx² <= cutoff²``: an ideal circular low-pass.
    It is symmetric under ``k -> -k``, so filtering a real image gives a real image."""
    ky = torch.fft.fftfreq(height) * height
    kx = torch.fft.fftfreq(width) * width
    return ky.view(-1, 1) ** 2 + kx.view(1, -1) ** 2 <= float(cutoff) ** 2


def low_pass(images: Tensor, window: Tensor) -> Tensor:
    """Keep only the DFT coefficients of ``images`` ``(..., H, W)`` inside ``window`` ``(H, W)``."""
    return torch.fft.ifft2(torch.fft.fft2(images) * window.to(images.device)).real


@ATTACKS.register("lf")
class LowFrequency(Attack):
    """LF, the low-frequency attack (Zeng et al., ICCV 2021, "Rethinking the backdoor attacks'
    triggers: a frequency perspective"): ``x' = clamp(x + delta, 0, 1)`` with one universal
    perturbation ``delta`` ``(C, H, W)`` that holds only spatial frequencies of at most ``cutoff``
    cycles per image and has ``|delta| <= eps`` everywhere.

    ``delta`` is a targeted universal adversarial perturbation of the clean reference model: from
    zero, ``steps`` signed-gradient steps of size ``step_size`` lower the cross-entropy of
    ``clamp(x + delta, 0, 1)`` towards the target class over shuffled training batches. After
    every step the low-pass constraint is enforced with an ideal circular window on the 2-D DFT
    (:func:`low_frequency_window`), and the bound by *scaling* ``delta`` down to ``eps`` where it
    exceeds it; scaling, unlike clipping, adds no high frequencies, so the trigger satisfies both
    constraints exactly.

    Defaults for Fashion-MNIST and a 1-epoch victim: ``eps = 0.1`` (about 25/255) and ``cutoff =
    4`` of the 14 cycles per image a 28×28 image holds; with them the victim learns the trigger
    (ASR 99.7%, clean accuracy 0.9 points below the clean model). Smaller bounds were not tried.

    Deviations: the paper builds the perturbation with DeepFool-style universal-perturbation
    updates; we use the targeted signed-gradient form. The bound is set for learnability at this
    small scale rather than taken from the paper. All-to-one only: the perturbation targets one
    class.
    """

    name = "lf"
    defaults: ClassVar[dict[str, Any]] = {"eps": 0.1, "cutoff": 4.0, "steps": 200, "step_size": 0.01, "batch_size": 32}
    modes = ("all-to-one",)
    learned = True
    family, order, paper_order = "optimised", 2, 14
    # the perturbation saturates long before its 200 steps (about 4 s of CPU at 40)
    short_fit: ClassVar[dict[str, Any]] = {"steps": 40}
    strength = Strength(None, "the perturbation was optimised within its bound eps (which apply does not use); "
                        "another bound needs a new fit")

    def check_params(self) -> None:
        _check_positive(self.params, integers=("steps", "batch_size"), reals=("step_size", "eps", "cutoff"))
        eps, cutoff = float(self.params["eps"]), float(self.params["cutoff"])
        if eps > 1.0:
            raise NgfkitError(f"lf eps (the L-infinity bound in [0, 1] pixel units) must be in (0, 1], got {eps}")
        _, h, w = self.image_shape
        nyquist = min(h, w) // 2  # the highest frequency, in cycles per image, along the shorter side
        if not 1.0 <= cutoff < nyquist:
            raise NgfkitError(f"lf cutoff must be in [1, {nyquist}) cycles per image for {h}x{w} images, got {cutoff}")

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {"perturbation": torch.zeros(self.image_shape)}

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        with torch.no_grad():
            return (x + self.trigger["perturbation"].to(x)).clamp(0.0, 1.0)

    def fit_trigger(self, context: TriggerContext) -> None:
        model = _frozen_reference(context)
        eps, step_size = float(self.params["eps"]), float(self.params["step_size"])
        _, h, w = self.image_shape
        window = low_frequency_window(h, w, float(self.params["cutoff"])).to(context.device)
        delta = self.trigger["perturbation"].to(context.device).clone()
        for x, _ in _training_batches(context, int(self.params["batch_size"]), int(self.params["steps"]),
                                      "lf trigger"):
            delta.requires_grad_(True)
            logits = model((x + delta).clamp(0.0, 1.0))
            loss = F.cross_entropy(logits, torch.full_like(logits[:, 0], self.target, dtype=torch.long))
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = low_pass(delta - step_size * grad.sign(), window)
                delta = delta * (eps / delta.abs().max().clamp_min(eps))
        self.trigger = {"perturbation": delta.detach().cpu()}
