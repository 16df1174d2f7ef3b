"""The attack registry and its entry points (:data:`ATTACKS`, :func:`attack`, :func:`check_attack_config`).

Kept apart from the package ``__init__`` so that the modules registering attacks (``presets``, ``readout``) import
this module, not the package that imports them (no package <-> submodule import cycle). See
:mod:`fedleak.attacks` for the calling convention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from fedleak.errors import ConfigError
from fedleak.options import Options
from fedleak.progress import AttackProgress, wants_progress
from fedleak.registry import Registry


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


def check_attack_config(section: dict) -> Options:
    """Validate an ``attack:`` config section (``{name: ..., **options}``) without running it; returns the
    attack's typed options (one-line :class:`ConfigError` on any problem)."""
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError("attack must be a mapping with a 'name'")
    return ATTACKS.options(section["name"], {k: v for k, v in section.items() if k != "name"})


def attack(name_or_section: str | dict, view, update, callback=None, progress: Optional[bool] = None,
           **options) -> Reconstruction:
    """Run attack ``name_or_section`` (a name, or a config section ``{name: ..., **options}``) on what the server
    saw; ``options`` override the section's. The attack receives its validated options. ``progress``: show
    the attack's progress on stderr when no ``callback`` is given (default None: only in a Jupyter notebook,
    see :mod:`fedleak.progress`)."""
    if isinstance(name_or_section, str):
        section = {"name": name_or_section, **options}
    elif isinstance(name_or_section, dict):
        section = {**name_or_section, **options}
    else:
        raise ConfigError(f"attack must be a name or a mapping with a 'name', got {type(name_or_section).__name__}")
    opts = check_attack_config(section)
    shown = AttackProgress(desc=section["name"]) if callback is None and wants_progress(progress) else None
    try:
        return ATTACKS.get(section["name"])(view, update, opts, callback=callback or shown)
    finally:
        if shown is not None:
            shown.close()
