"""Feature-shift tuning's head term (FST; Min et al., NeurIPS 2023), as a piece other defences add.

FST's observation: tuning on clean data fails to remove a backdoor when the backdoor and clean
features stay entangled, and the classifier's compromised weights keep the features where they
are. Its remedy is a term ``α ⟨W, W_orig⟩`` in the loss, which pushes the classifier's weight
``W`` ``(C, D)`` away from the compromised ``W_orig``, with ``‖W‖`` projected back to
``‖W_orig‖`` after every step so the push cannot be won by shrinking ``W``. The body, tuned at
the same time, must then move its features to fit the new head.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..train import StepHooks


class FeatureShift(StepHooks):
    """``α ⟨W, W_orig⟩`` (:meth:`loss`, added to the cross-entropy) and the norm projection of ``W``
    after every step, for the classifier ``head`` (its weight, not its bias)."""

    def __init__(self, head: nn.Linear, original_weight: Tensor, strength: float):
        self.head = head
        self.original = original_weight.detach().clone()
        self.norm = self.original.norm()
        self.strength = float(strength)

    def loss(self, x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        return self.strength * (self.head.weight * self.original).sum()

    @torch.no_grad()
    def after_step(self, lr: float) -> None:
        self.head.weight.mul_(self.norm / self.head.weight.norm().clamp_min(1e-12))
