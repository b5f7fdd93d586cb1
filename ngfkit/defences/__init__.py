"""Backdoor defences behind one interface: :func:`purify` and the ``DEFENCES`` registry."""
from . import distillation, finetune, ngf, pruning, unlearning  # noqa: F401  (each registers its defences)
from .base import DEFENCES, Defence, purify

__all__ = ["DEFENCES", "Defence", "purify"]
