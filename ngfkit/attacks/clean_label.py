"""Clean-label attacks: only images of the target class are triggered, and no label changes.

The victim learns the trigger because, on the poisoned target-class images, the trigger is an
easier cue for the (correct) label than the image itself. ``poison_rate`` is still the share of
the whole training set, so it can be at most the target class's share (about 0.1 on balanced
ten-class data, and a little under 0.1 once the defender's clean split is held out).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength, TriggerContext, dataset_targets

#: images perturbed at once by CLB's PGD (the reference model is in eval mode, so this changes
#: only speed and memory, not the result)
_PGD_BATCH = 256


def poison_state_rows(attack: Attack, indices: Tensor, key: str) -> Tensor:
    """Rows of ``attack.poison_state[key]`` that belong to the training ``indices``.

    ``poison_state["indices"]`` holds the sorted training indices the tensors were made for (by
    :meth:`Attack.fit_trigger`); every requested index must be one of them.
    """
    stored = attack.poison_state.get("indices")
    if stored is None or key not in attack.poison_state:
        raise NgfkitError(f"attack {attack.name!r} makes its poisoned images in fit_trigger; "
                          f"call attack.fit_trigger(context) before poisoning (load_or_train does)")
    indices = torch.as_tensor(indices, dtype=torch.long).cpu()
    stored = stored.cpu()
    rows = torch.searchsorted(stored, indices).clamp(max=max(len(stored) - 1, 0))
    if len(stored) == 0 or not torch.equal(stored[rows], indices):
        raise NgfkitError(f"attack {attack.name!r} was fitted for other poisoned images than the ones "
                          f"requested; fit its trigger on the same training set and poison rate")
    return attack.poison_state[key][rows]


class CleanLabelAttack(Attack):
    """Shared behaviour of the clean-label attacks: all-to-one only, and a poison-rate error that
    says how many target-class images there are."""

    modes = ("all-to-one",)
    clean_label = True
    family = "clean-label"
    # half the target class: 0.1 would ask for every target-class image (and more, after the
    # defender's clean split), leaving the victim no unmodified examples of that class
    default_poison_rate = 0.05

    def poison_indices(self, labels: Tensor) -> Tensor:
        available = int(self.poison_candidates(labels).sum())
        wanted = int(round(self.poison_rate * len(labels)))
        if wanted > available:
            most = math.floor(available / max(len(labels), 1) * 1000) / 1000
            raise NgfkitError(f"{self.name} poisons only target-class images: poison rate {self.poison_rate} asks for "
                              f"{wanted} but class {self.target} has {available} of the {len(labels)} training "
                              f"images; lower --poison-rate to at most {most}")
        return super().poison_indices(labels)


@ATTACKS.register("sig")
class SIG(CleanLabelAttack):
    """SIG (Barni et al. 2019, "A new backdoor attack in CNNs by training set corruption without
    label poisoning"): a horizontal sinusoid ``v(i, j) = delta * sin(2 pi j frequency / W)``, the
    same in every row and channel, is added to target-class training images (labels kept) and to
    test images; the result is clipped to ``[0, 1]``.

    The paper trains with ``delta = 20/255`` and triggers test images with a stronger signal. We
    use one strength for both (the test image carries exactly the training trigger), and a
    much larger default, ``delta = 80/255``: on Fashion-MNIST with one epoch of training,
    ``20/255`` gave no backdoor at all (ASR about 7% in a 20k-image trial) and ``40/255`` a
    weak one (38%). The black background also clips the negative half of the wave away.
    """

    name = "sig"
    defaults = {"delta": 80 / 255, "frequency": 6}
    order, paper_order = 0, 4
    strength = Strength("delta", "amplitude δ of the sine (pixel value, 0–1)", 0.0, 0.6, 0.05)

    def check_params(self) -> None:
        delta, frequency = float(self.params["delta"]), float(self.params["frequency"])
        width = self.image_shape[2]
        if not 0.0 < delta <= 1.0:
            raise NgfkitError(f"sig delta (signal amplitude) must be in (0, 1], got {delta}")
        if not 0.0 < frequency < width / 2:
            # at width / 2 cycles the sampled sine is zero at every pixel
            raise NgfkitError(f"sig frequency must be in (0, {width / 2:g}) cycles across {width}-pixel-wide images, "
                              f"got {frequency}")

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        c, h, w = self.image_shape
        columns = torch.arange(w, dtype=torch.float64)
        wave = float(self.params["delta"]) * torch.sin(2 * math.pi * columns * float(self.params["frequency"]) / w)
        return {"signal": wave.float().view(1, 1, w).expand(c, h, w).contiguous()}

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return (x + self.trigger["signal"].to(x)).clamp(0.0, 1.0)


@ATTACKS.register("clb")
class CLB(CleanLabelAttack):
    """Label-consistent backdoor (Turner et al. 2019, "Label-Consistent Backdoor Attacks").

    Each poisoned target-class training image is first made hard to classify with an untargeted
    L∞ PGD attack (``steps`` steps of ``step_size``, radius ``eps``) against a clean reference
    model, so the victim has to lean on the trigger to get its (unchanged) label right; then the
    trigger is stamped: a ``patch_size``² checkerboard in each of the four corners, mirrored so
    the outer corner pixel is always white. ``amplitude`` is the paper's reduced-visibility
    variant: pixels of the pattern move by ``+amplitude`` (white) or ``-amplitude`` (black);
    ``1`` stamps pure black and white. At test time only the trigger is stamped.

    ``fit_trigger`` stores the perturbations in ``poison_state`` as ``{"indices": (P,) int64
    sorted training indices, "delta": (P, C, H, W) float16}``.

    The paper uses ``eps = 8/255`` (up to 32/255) on CIFAR-10 and more PGD steps. We take the
    paper's largest radius, ``eps = 32/255``: the perturbation is computed on the reference
    model but must make the images hard for a different victim trained one epoch from scratch,
    and larger perturbations transfer better. Five steps of ``10/255`` already fool the
    reference model on all of a 256-image sample of the target class (ten steps only raise the
    loss a little more) and keep ``fit_trigger`` short.
    """

    name = "clb"
    learned = True
    defaults = {"eps": 32 / 255, "steps": 5, "step_size": 10 / 255, "patch_size": 3, "amplitude": 1.0}
    order, paper_order = 1, 5
    # the PGD steps only harden the *training* images; the test-time trigger (four corner
    # checkerboards) does not depend on them
    short_fit = {"steps": 0}
    strength = Strength("amplitude", "amplitude of the corner checkerboards (1: pure black and white)", 0.0, 1.0, 0.1)

    def check_params(self) -> None:
        p = self.params
        _, h, w = self.image_shape
        if not 0.0 <= float(p["eps"]) <= 1.0:
            raise NgfkitError(f"clb eps (L-infinity radius of the adversarial perturbation) must be in [0, 1], got {p['eps']}")
        if int(p["steps"]) < 0 or float(p["step_size"]) <= 0.0:
            raise NgfkitError(f"clb needs steps >= 0 and step_size > 0, got steps={p['steps']}, step_size={p['step_size']}")
        if not 0.0 < float(p["amplitude"]) <= 1.0:
            raise NgfkitError(f"clb amplitude must be in (0, 1], got {p['amplitude']}")
        size = int(p["patch_size"])
        if size < 1 or 2 * size > min(h, w):
            raise NgfkitError(f"four {size}x{size} corner patterns do not fit {h}x{w} images; lower patch_size")

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        c, h, w = self.image_shape
        size = int(self.params["patch_size"])
        rows, cols = torch.arange(h).view(-1, 1), torch.arange(w).view(1, -1)
        # distance to the nearest edge: the same checkerboard, mirrored into each corner
        from_top, from_left = torch.minimum(rows, h - 1 - rows), torch.minimum(cols, w - 1 - cols)
        mask = ((from_top < size) & (from_left < size)).float()
        white = ((from_top + from_left) % 2 == 0).float()
        return {"pattern": (white * mask).expand(c, h, w).contiguous(), "mask": mask.unsqueeze(0)}

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        signs = 2 * self.trigger["pattern"].to(x) - 1
        return (x + float(self.params["amplitude"]) * signs * self.trigger["mask"].to(x)).clamp(0.0, 1.0)

    def apply_poison(self, x: Tensor, y: Tensor, indices: Tensor) -> Tensor:
        delta = poison_state_rows(self, indices, "delta").to(x)
        return self.apply((x + delta).clamp(0.0, 1.0))

    def fit_trigger(self, context: TriggerContext) -> None:
        """Compute the PGD perturbation of every poisoned image against ``context.reference_model()``."""
        indices = self.poison_indices(dataset_targets(context.train))
        model = context.reference_model().eval()
        deltas = torch.zeros((len(indices), *self.image_shape), dtype=torch.float16)
        for start in tqdm(range(0, len(indices), _PGD_BATCH), desc="clb: adversarial poison", disable=not context.progress,
                          leave=False):
            x, y = context.train.get_batch(indices[start : start + _PGD_BATCH])
            x, y = x.to(context.device), y.to(context.device)
            deltas[start : start + len(x)] = self._untargeted_pgd(model, x, y).cpu().half()
        self.poison_state = {"indices": indices, "delta": deltas}

    def _untargeted_pgd(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``delta`` with ``|delta| <= eps`` and ``x + delta`` in ``[0, 1]`` that raises the loss on ``y``."""
        eps, step = float(self.params["eps"]), float(self.params["step_size"])
        delta = torch.zeros_like(x)
        for _ in range(int(self.params["steps"])):
            delta.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x + delta), y)
                # grad w.r.t. delta only: the reference model's parameters get no .grad
                (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0.0, 1.0) - x
        return delta.detach()
