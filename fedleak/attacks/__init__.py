"""Reconstruction attacks, selected by name.

Every attack is a function registered in :data:`ATTACKS` with its typed options model (``options=``) and
capabilities (``caps=``), called as ``fn(view: ServerView, update: Update, options, *, callback=None) ->
Reconstruction`` with ``options`` validated by :func:`check_attack_config`; every attack declares its model.
It may use only the server's view, the update and the options (declared prior knowledge) — never the client's
images.

``callback(state: dict)`` is called during long attacks with at least ``iteration``, ``iterations``,
``loss`` and ``elapsed``; it may raise to abort. Attacks catch ``KeyboardInterrupt`` and return the best
result so far with ``info['interrupted'] = True``.
"""
from __future__ import annotations

from fedleak.attacks.base import ATTACKS, AttackFn, Reconstruction, attack, check_attack_config

from fedleak.attacks import presets  # noqa: E402,F401  (registration: dlg, idlg, inverting-gradients, rog)
from fedleak.attacks import readout  # noqa: E402,F401  (registration: imprint, ldp-imprint)

__all__ = ["ATTACKS", "AttackFn", "Reconstruction", "attack", "check_attack_config"]
