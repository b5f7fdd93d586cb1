"""Poisoning attacks. ``ATTACKS`` maps each name to its class; see :class:`Attack`.

Each class also says where it is listed (:attr:`Attack.family`, :attr:`~Attack.order`,
:attr:`~Attack.paper_order`), its benchmark goal (:attr:`~Attack.asr_goal`), the short-budget fit of
a learned trigger (:attr:`~Attack.short_fit`) and the explorer's knob (:attr:`~Attack.strength`).

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
from .base import (ATTACKS, FAMILIES, NO_STRENGTH, Attack, PoisonedDataset, Strength, TriggerContext, create_attack,
                   listing_order, paper_attacks)

__all__ = ["ATTACKS", "FAMILIES", "NO_STRENGTH", "Attack", "PoisonedDataset", "Strength", "TriggerContext",
           "create_attack", "listing_order", "paper_attacks"]
