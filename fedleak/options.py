"""Typed option models for everything chosen by name (attacks, enhancers, server scenarios, metric sets).

Each registry entry may declare an :class:`Options` subclass (pydantic, unknown keys refused) and its
:class:`Capabilities`. :func:`validate_options` turns a raw mapping into that model once, at the edge, and every
problem into a one-line :class:`~fedleak.errors.ConfigError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fedleak.errors import ConfigError

O = TypeVar("O", bound="Options")


class Options(BaseModel):
    """Base of every named component's options: strict keys, validated on assignment, frozen after."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class NoOptions(Options):
    """A component that takes no options."""


@dataclass(frozen=True)
class Capabilities:
    """What a component supports, declared once where it is registered (never probed).

    ``seeds``: takes a ``seed`` option (the run seed is filled in when the config gives none);
    ``checkpoints``: takes ``checkpoint``/``resume`` options and can continue from a checkpoint file;
    ``needs_labels``: cannot run unless the client shares its labels.
    """

    seeds: bool = False
    checkpoints: bool = False
    needs_labels: bool = False


def format_validation_error(e: ValidationError, what: str, model: Optional[type[BaseModel]] = None) -> str:
    """One line for the first error (and a count of the others)."""
    errs = e.errors()
    err = errs[0]
    loc = ".".join(str(x) for x in err["loc"])
    more = f" [+{len(errs) - 1} more]" if len(errs) > 1 else ""
    if err["type"] == "extra_forbidden":
        valid = f"; valid: {', '.join(sorted(model.model_fields))}" if model is not None else ""
        if model is not None and "stages" in model.model_fields and "." not in loc:
            valid += f" (a multi-stage attack: set {loc!r} per stage, e.g. attack.stages.1.{loc}=N)"
        return f"{what}: unknown option {loc!r}{valid}{more}"
    inp = err.get("input")
    got = f" (got {inp!r})" if not isinstance(inp, dict) and len(repr(inp)) < 80 else ""
    return f"{what}: {loc + ': ' if loc else ''}{err['msg']}{got}{more}"


def validate_options(model: type[O], raw: Any, what: str) -> O:
    """``model.model_validate(raw)`` with a one-line :class:`ConfigError` on any problem."""
    if isinstance(raw, model):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what}: options must be a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, what, model)) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what}: {e}") from None
