"""Poisoning attacks. ``ATTACKS`` maps each name to its class; see :class:`Attack`.

Importing a module registers its attacks:

* ``patch``: badnets, blend (fixed stamped or blended images)
* ``clean_label``: sig, clb (target-class images triggered, labels kept)
* ``composite``: cba (a mix of two source classes is the trigger)
* ``warp``: wanet; ``quantise``: bpp; ``style``: fba (image transformations as triggers)
* ``generative``: dynamic-one, dynamic-all, lira (trigger generators trained with a classifier)
* ``issba``: issba (a steganographic encoder embeds a code)
* ``optimised``: trojan-one, trojan-all, lf (triggers optimised against a clean reference model)
"""
from . import clean_label, composite, generative, issba, optimised, patch, quantise, style, warp  # noqa: F401
from .base import ATTACKS, Attack, PoisonedDataset, TriggerContext, create_attack

__all__ = ["ATTACKS", "Attack", "PoisonedDataset", "TriggerContext", "create_attack"]
