"""Backdoor defences behind one interface: :func:`purify` and the ``DEFENCES`` registry.

Classifier-only defences follow the protocol of :mod:`ngfkit.defences.classifier_only` (:class:`HeadDefence`,
:class:`FeatureCache`); every defence's strength is chosen by the one rule of
:mod:`ngfkit.defences.selection`.
"""
from . import distillation, finetune, fip, fst, ngf, nft, pruning, sau, shift, unlearning  # noqa: F401  (each registers its defences)
from .base import DEFENCES, Defence, purify
from ..models import find_classifier
from .classifier_only import FeatureCache, HeadDefence
from .selection import select_and_purify

__all__ = ["DEFENCES", "Defence", "FeatureCache", "HeadDefence", "find_classifier", "purify", "select_and_purify"]
