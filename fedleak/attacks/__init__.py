"""Reconstruction attacks, selected by name.

Every attack is a function ``fn(view: ServerView, update: Update, *, callback=None, **options) ->
Reconstruction`` registered in :data:`ATTACKS`. It may use only the server's view, the update and the
options (declared prior knowledge) — never the client's images.

``callback(state: dict)`` is called during long attacks with at least ``iteration``, ``iterations``,
``loss`` and ``elapsed``; it may raise to abort. Attacks catch ``KeyboardInterrupt`` and return the best
result so far with ``info['interrupted'] = True``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from fedleak.errors import ConfigError
from fedleak.registry import Registry, check_kwargs


@dataclass
class Reconstruction:
    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    labels: Optional[torch.Tensor] = None  # labels used / recovered by the attack
    loss_history: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    #: optional extra per-iteration series, e.g. {"psnr": [(iteration, value), ...]}
    series: dict[str, list] = field(default_factory=dict)


AttackFn = Callable[..., Reconstruction]
ATTACKS: Registry[AttackFn] = Registry("attack")


def attack(name: str | dict, view, update, callback=None, **options) -> Reconstruction:
    """Run attack ``name`` (or a config dict ``{name: ..., **options}``) on what the server saw."""
    if isinstance(name, dict):
        options = {**{k: v for k, v in name.items() if k != "name"}, **options}
        name = name["name"]
    fn = ATTACKS.get(name)
    check_kwargs(fn, {**options, "callback": callback}, f"attack {ATTACKS.resolve(name)!r}")
    validator = getattr(fn, "validate", None)
    if validator is not None:
        validator(**options)
    return fn(view, update, callback=callback, **options)


def check_attack_config(cfg: dict) -> None:
    """Validate an ``attack:`` config section without running it."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ConfigError("attack must be a mapping with a 'name'")
    fn = ATTACKS.get(cfg["name"])
    opts = {k: v for k, v in cfg.items() if k != "name"}
    check_kwargs(fn, opts, f"attack {ATTACKS.resolve(cfg['name'])!r}")
    validator = getattr(fn, "validate", None)
    if validator is not None:
        validator(**opts)


from fedleak.attacks import presets  # noqa: E402,F401  (registration)
from fedleak.attacks import readout  # noqa: E402,F401  (registration: imprint, ldp-imprint)
