"""Backdoor defences behind one interface: :func:`purify` and the ``DEFENCES`` registry."""
from . import ngf  # noqa: F401  (registers "ngf")
from .base import DEFENCES, Defence, purify

__all__ = ["DEFENCES", "Defence", "purify"]
