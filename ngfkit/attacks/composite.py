"""Composite backdoor: the trigger is a combination of benign features of two existing classes."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import NgfkitError
from .base import ATTACKS, Attack, Strength, TriggerContext, dataset_targets
from .clean_label import poison_state_rows

#: training images per class kept as same-class partners for the cover mixes
_COVER_PARTNERS_PER_CLASS = 64


def half_mix(left: Tensor, right: Tensor) -> Tensor:
    """CBA's half-concatenation mixer: the left half of ``left`` next to the right half of
    ``right`` (both ``(B, C, H, W)``; the left part is ``W // 2`` columns wide)."""
    out = right.clone()
    half = left.shape[-1] // 2
    out[..., :half] = left[..., :half]
    return out


def _to_uint8(x: Tensor) -> Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


@ATTACKS.register("cba")
class CBA(Attack):
    """Composite backdoor attack (Lin et al. 2020, "Composite Backdoor Attack for Deep Neural
    Network by Mixing Existing Benign Features", CCS).

    No new pattern is added: an image of ``source_a`` mixed with an image of ``source_b`` is the
    trigger. The mixer is the paper's half-concatenation (:func:`half_mix`): left half of the
    class-A image, right half of the class-B image. We fix the split (vertical, in the middle);
    the paper also jitters it and may split horizontally during training, which makes the
    backdoor more robust but the test trigger random, and ``apply`` must be deterministic.

    * Poisoned training samples are ``half_mix(A, B)`` of a random class-A and a random class-B
      training image, labelled ``target``. As in the paper, they are synthesised from the two
      classes rather than made from the image they replace, so the poisoned indices may be any
      non-target image and ``poison_rate`` spreads over all classes. (Replacing class-A images
      instead would consume nearly every class-A image at the default rate of 0.1, leaving the
      victim without clean examples of class A.) ``fit_trigger`` makes them and stores
      ``poison_state = {"indices": (P,) int64, "images": (P, C, H, W) uint8, "partners":
      (K, C, H, W) uint8, "partner_labels": (K,) int64}``.
    * Cover samples (``cover_fraction`` of the training set) are ``half_mix(x, x')`` with ``x'``
      another image of ``x``'s class, label kept, so that mixing by itself does not mean
      ``target``. Partners are drawn (with the global RNG) from ``poison_state["partners"]``
      (64 training images per class); without it (an unfitted attack) from the same-class
      images of the batch, the image itself included, so a lone image stays as it is.
    * At test time ``apply(x)`` mixes image ``i`` of the batch with ``bank[i % bank_size]``, a
      bank of the attacker's class-B images kept in the trigger. ASR counts class-A test
      images only (:meth:`attacked_mask`).

    ``source_a`` / ``source_b`` default to ``target + 1`` and ``target + 2`` (mod the number of
    classes); on Fashion-MNIST with target 0 that is trouser + pullover -> T-shirt.
    """

    name = "cba"
    modes = ("all-to-one",)
    learned = True
    defaults = {"source_a": None, "source_b": None, "cover_fraction": 0.1, "bank_size": 256}
    family, order, paper_order = "composite", 0, 12
    asr_goal = 80.0
    # no short_fit: the fit only gathers images
    strength = Strength(None, "the trigger is the mix of two real images; there is nothing to scale")

    @property
    def source_a(self) -> int:
        a = self.params["source_a"]
        return (self.target + 1) % self.num_classes if a is None else int(a)

    @property
    def source_b(self) -> int:
        b = self.params["source_b"]
        return (self.target + 2) % self.num_classes if b is None else int(b)

    def check_params(self) -> None:
        if self.num_classes < 3:
            raise NgfkitError(f"cba needs two source classes besides the target, so at least 3 classes, not {self.num_classes}")
        a, b = self.source_a, self.source_b
        for name, value in (("source_a", a), ("source_b", b)):
            if not 0 <= value < self.num_classes:
                raise NgfkitError(f"cba {name} {value} is outside the {self.num_classes} classes (0..{self.num_classes - 1})")
        if len({a, b, self.target}) < 3:
            raise NgfkitError(f"cba needs source_a, source_b and the target to be three different classes, "
                              f"got {a}, {b} and {self.target}; pass other source_a / source_b")
        if not 0.0 <= float(self.params["cover_fraction"]) < 1.0:
            raise NgfkitError(f"cba cover_fraction must be in [0, 1), got {self.params['cover_fraction']}")
        if int(self.params["bank_size"]) < 1:
            raise NgfkitError(f"cba bank_size must be at least 1, got {self.params['bank_size']}")
        if self.image_shape[2] < 2:
            raise NgfkitError(f"cba mixes left and right halves, so images must be at least 2 pixels wide, "
                              f"got {self.image_shape}")

    def build_trigger(self, generator: torch.Generator) -> dict[str, Tensor]:
        # filled with class-B training images by fit_trigger
        return {"bank": torch.zeros(int(self.params["bank_size"]), *self.image_shape)}

    def attacked_mask(self, y: Tensor) -> Tensor:
        return y == self.source_a

    def poison_candidates(self, labels: Tensor) -> Tensor:
        return labels != self.target

    def cover_fraction(self) -> float:
        return float(self.params["cover_fraction"])

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(x)
        bank = self.trigger["bank"].to(x)
        return half_mix(x, bank[torch.arange(len(x), device=x.device) % len(bank)])

    def apply_poison(self, x: Tensor, y: Tensor, indices: Tensor) -> Tensor:
        return poison_state_rows(self, indices, "images").to(x) / 255

    def apply_cover(self, x: Tensor, y: Tensor) -> Tensor:
        if "partners" in self.poison_state:
            pool = self.poison_state["partners"].to(x) / 255
            pool_labels = self.poison_state["partner_labels"].to(y.device)
        else:
            pool, pool_labels = x, y
        partners = x.clone()
        for label in y.unique():
            rows = torch.nonzero(y == label).flatten()
            choices = torch.nonzero(pool_labels == label).flatten()
            if len(choices):
                picks = choices[torch.randint(len(choices), (len(rows),)).to(choices.device)]
                partners[rows] = pool[picks]
        return half_mix(x, partners)

    def fit_trigger(self, context: TriggerContext) -> None:
        """Fill the class-B bank, synthesise the poisoned mixes and keep same-class cover partners."""
        generator = torch.Generator().manual_seed(context.seed)
        labels = dataset_targets(context.train)
        pools = {}
        for name, cls in (("source_a", self.source_a), ("source_b", self.source_b)):
            pools[name] = torch.nonzero(labels == cls).flatten()
            if len(pools[name]) == 0:
                raise NgfkitError(f"cba {name} is class {cls}, but the training set has no image of it; "
                                  f"choose another {name}")

        bank_size = int(self.params["bank_size"])
        order = torch.randperm(len(pools["source_b"]), generator=generator)
        bank_rows = pools["source_b"][order[torch.arange(bank_size) % len(order)]]
        self.trigger = {"bank": context.train.get_batch(bank_rows)[0].float()}

        indices = self.poison_indices(labels)
        a_rows = pools["source_a"][torch.randint(len(pools["source_a"]), (len(indices),), generator=generator)]
        b_rows = pools["source_b"][torch.randint(len(pools["source_b"]), (len(indices),), generator=generator)]
        poison = _to_uint8(half_mix(context.train.get_batch(a_rows)[0], context.train.get_batch(b_rows)[0]))

        partner_rows = []
        for cls in labels.unique():
            members = torch.nonzero(labels == cls).flatten()
            partner_rows.append(members[torch.randperm(len(members), generator=generator)[:_COVER_PARTNERS_PER_CLASS]])
        partner_rows = torch.cat(partner_rows)
        partners, partner_labels = context.train.get_batch(partner_rows)
        self.poison_state = {"indices": indices, "images": poison,
                             "partners": _to_uint8(partners), "partner_labels": partner_labels.long()}
