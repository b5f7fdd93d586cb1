"""Poisoning attacks. ``ATTACKS`` maps each name to its class; see :class:`Attack`."""
from . import patch  # noqa: F401  (registers badnets and blend)
from .base import ATTACKS, Attack, PoisonedDataset, create_attack

__all__ = ["ATTACKS", "Attack", "PoisonedDataset", "create_attack"]
