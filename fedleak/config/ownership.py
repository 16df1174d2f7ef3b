"""Whose budget is it: the no-silent-override rule for attack options (README, "Budgets").

Attack options written in a config file belong to the attack named in that file. When ``--set attack.name=X``
(or an API override) switches to another attack, the file's attack options are dropped, each named in one
notice, and only the ``attack.*`` options given as overrides are kept: ``configs/demo.yaml`` pins
``iterations: 100`` for ``rog``, and ``--set attack.name=inverting-gradients`` then runs that preset's own 1000
iterations, not rog's 100. (The sign budget is the other half of the rule and lives with the presets:
``iterations`` never replaces a preset's ``sign_iterations``, see :mod:`fedleak.attacks.presets`.)
"""
from __future__ import annotations

from typing import Any

#: the attack of a config that names none (``fedleak run`` with no config, the README demo)
DEFAULT_ATTACK = "rog-refine"


def attack_name(section: Any) -> str:
    """The attack a raw ``attack:`` section names (a name, a mapping, or nothing: the default)."""
    if isinstance(section, str):
        return section
    if isinstance(section, dict) and isinstance(section.get("name"), str):
        return section["name"]
    return DEFAULT_ATTACK


def _override_keys(overrides: list[str]) -> tuple[set[str], bool]:
    """The top-level ``attack`` option names the overrides set, and whether one replaced the whole section."""
    keys, whole = set(), False
    for ov in overrides:
        key = str(ov).partition("=")[0].strip()
        if key == "attack":
            whole, keys = True, set()
        elif key.startswith("attack."):
            keys.add(key.split(".")[1])
    return keys, whole


def drop_foreign_attack_options(raw: dict, file_attack: Any, overrides: list[str]) -> list[str]:
    """Apply the rule to ``raw`` (the config after ``overrides``; ``file_attack`` is its attack section before
    them) in place; returns the notices (empty when nothing was dropped)."""
    section = raw.get("attack")
    keys, whole = _override_keys(overrides)
    if whole or not isinstance(section, dict) or not isinstance(file_attack, dict):
        return []
    old, new = attack_name(file_attack), attack_name(section)
    dropped = {k: v for k, v in file_attack.items() if k != "name" and k not in keys}
    if old == new or not dropped:
        return []
    raw["attack"] = {k: v for k, v in section.items() if k == "name" or k in keys}
    given = ", ".join(f"{k}={v!r}" for k, v in dropped.items())
    return [f"attack.name={new}: the config's attack options {given} were written for {old} and are not used "
            f"({new} runs its own defaults; give an option with --set attack.KEY=VALUE to keep it)"]
