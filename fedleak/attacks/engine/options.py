"""The typed options of the gradient-matching engine: one :class:`EngineConfig` is one optimisation stage.

Names chosen from a registry (``loss``, ``schedule``, ``param``, the keys of ``priors``) are checked against it
here and resolved to their objects once, in :func:`fedleak.attacks.engine.parts.resolve_parts`. Every problem
is a one-line :class:`~fedleak.errors.ConfigError` that names the option (``callback_every must be >= 1, got 0``,
``loss='x'; valid: cosine, l2, l2-relative``), whether the options come from a config file,
:func:`fedleak.attack` or ``EngineConfig(...)`` directly.
"""
from __future__ import annotations

import difflib
import math
import os
import typing
from typing import Annotated, Any, Literal, Optional

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedleak.attacks.engine.latent import PARAMETERISATIONS
from fedleak.attacks.labels import METHODS as LABEL_METHODS
from fedleak.attacks.losses import LOSSES
from fedleak.attacks.matching import AWARE_CHOICES, matching_mode
from fedleak.attacks.priors import PRIORS
from fedleak.attacks.schedules import SCHEDULES
from fedleak.errors import ConfigError
from fedleak.options import Options
from fedleak.registry import Registry


def _fspath(v: Any) -> Any:
    return os.fspath(v) if isinstance(v, os.PathLike) else v


#: a file-path option: a string, or any ``os.PathLike`` when given from Python
PathOption = Annotated[Optional[str], BeforeValidator(_fspath)]

PRECISIONS = ("float32", "bfloat16", "auto")
_MAX_SEED = 2**31 - 1


def _registered(reg: Registry, key: str, value: Any) -> str:
    if not isinstance(value, str) or value not in reg:
        raise ValueError(f"{key}={value!r}; valid: {', '.join(reg.names())}")
    return reg.resolve(value)


def _weights(key: str, value: Any, what: str) -> Any:
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for k, v in value.items())
    if value is not None and not ok:
        raise ValueError(f"{key} must map {what} to numbers >= 0, got {value!r}"[:300])
    return value


class EngineConfig(Options):
    """Options of :func:`~fedleak.attacks.engine.run_engine` (see the package docstring for their meaning)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    iterations: int = Field(100, ge=1, le=10_000_000)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["adam", "lbfgs"] = "adam"
    signed: bool = False  # use the sign of the gradient in Adam (Inverting Gradients)
    schedule: str = "cosine"  # SCHEDULES: cosine | multistep | none
    final_lr_factor: float = Field(0.1, ge=0)
    param: str = "pixels"  # PARAMETERISATIONS: pixels | lowres
    scale: int = Field(4, ge=1)
    mapping: Literal["box", "sigmoid", "none"] = "box"  # box: projected to [0, 1]; none: output clamped
    init: Literal["uniform", "randn", "gray", "previous"] = "uniform"  # previous: the previous stage's images
    loss: str = "l2"  # LOSSES: l2 | cosine | l2-relative | qsgd-likelihood
    layer_weights: Optional[dict[str, float]] = None
    big_weight: float = Field(1.0, ge=0)  # x the matching weight of linear weights with >= big_threshold entries
    #: x the matching weight of the input layer's parameters (the first layer the images pass through); 0 leaves
    #: them out of the match, and their gradient out of the simulation (its double backward is about a quarter
    #: of an iteration on lenet at 128x128)
    input_weight: float = Field(1.0, ge=0)
    tv: float = Field(0.0, ge=0)  # weight of the `tv` prior
    tv_size: Optional[int] = Field(None, ge=1)  # if set, side-scaled prior weights are x (image side / tv_size)
    tv_batch: Optional[int] = Field(None, ge=1)  # if set, prior weights are x sqrt(batch size / tv_batch)
    tv_batch_cap: bool = False  # if true, that factor is at most 1: only batches below tv_batch get lighter priors
    tv_batch_floor: bool = False  # if true, that factor is at least 1: only batches above tv_batch get heavier priors
    priors: Optional[dict[str, float]] = None  # further PRIORS by name -> weight
    restarts: int = Field(1, ge=1)
    #: which iterate a restart returns: the lowest matching loss (best-loss), the lowest matching loss plus
    #: weighted priors (best-objective) or the final one (last); restarts are compared by the same score
    result: Literal["best-loss", "best-objective", "last"] = "best-loss"
    labels: Literal[LABEL_METHODS] = "auto"
    aware: Any = "auto"  # auto | none | mask | sign | quant
    fast: bool = True  # Gram/low-rank evaluation of large linear layers
    big_threshold: int = Field(1 << 20, ge=1)
    seed: int = Field(0, ge=0, le=_MAX_SEED)
    threads: Optional[int] = Field(None, ge=1)
    checkpoint: PathOption = None
    checkpoint_every: int = Field(50, ge=1)
    resume: bool = True
    on_nan: Literal["error", "restart"] = "error"  # restart: from the last good state
    max_nan_restarts: int = Field(3, ge=0, le=_MAX_SEED)
    callback_every: int = Field(1, ge=1)
    lbfgs_inner: int = Field(1, ge=1)  # L-BFGS iterations per outer iteration
    line_search: Optional[Literal["strong_wolfe"]] = "strong_wolfe"  # None: fixed step lr, as DLG
    dtype: Literal["float32", "float64"] = "float32"  # float64: exact matching for tiny cases / L-BFGS
    precision: Literal[PRECISIONS] = "float32"  # bfloat16: autocast of the simulated update; auto: see engine

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(engine_error(e, type(self))) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> "EngineConfig":
        """A mapping goes through ``__init__`` (pydantic would wrap its one-line error in a ValidationError)."""
        if isinstance(obj, dict) and not kwargs:
            return cls(**obj)
        return super().model_validate(obj, **kwargs)

    @field_validator("schedule", "param", "loss", mode="before")
    @classmethod
    def _names(cls, v, info):
        reg = {"schedule": SCHEDULES, "param": PARAMETERISATIONS, "loss": LOSSES}[info.field_name]
        return _registered(reg, info.field_name, v)

    @field_validator("layer_weights", mode="before")
    @classmethod
    def _layer_weights(cls, v):
        return _weights("layer_weights", v, "parameter-name patterns")

    @field_validator("priors", mode="before")
    @classmethod
    def _priors(cls, v):
        _weights("priors", v, "prior names")
        bad = [k for k in v or {} if k not in PRIORS]
        if bad:
            raise ValueError(f"priors: unknown prior {bad[0]!r}; valid: {', '.join(PRIORS.names())}")
        return None if v is None else {PRIORS.resolve(k): w for k, w in v.items()}

    @field_validator("aware", mode="before")
    @classmethod
    def _aware(cls, v):
        try:
            matching_mode([], v)
        except ConfigError:
            raise ValueError(f"aware={v!r}; valid: {', '.join(AWARE_CHOICES)}") from None
        return v

    @model_validator(mode="after")
    def _one_tv(self):
        if self.tv and self.priors and "tv" in self.priors:
            raise ValueError("tv given twice: as tv and as priors.tv (give the tv weight once)")
        if self.tv_batch_cap and self.tv_batch_floor:
            raise ValueError("tv_batch_cap and tv_batch_floor together fix the batch factor at 1: set one of them, "
                             "or leave tv_batch unset")
        return self

    def prior_weights(self) -> dict[str, float]:
        """Prior name -> weight as configured (``tv`` first), zero weights left out."""
        out = {"tv": self.tv} if self.tv else {}
        out.update({k: w for k, w in (self.priors or {}).items() if w})
        return out


_PHRASES = {
    "int_type": "must be an integer", "int_from_float": "must be an integer", "int_parsing": "must be an integer",
    "float_type": "must be a finite number", "float_parsing": "must be a finite number",
    "finite_number": "must be a finite number", "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "string_type": "must be a string", "none_required": "must be null",
    "dict_type": "must be a mapping",
}


def _choices(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation)]
    flat = []
    for a in args:
        flat.extend(typing.get_args(a) if typing.get_origin(a) is Literal else [a])
    return ", ".join("null" if a is type(None) else str(a) for a in flat)


def engine_error(e: ValidationError, model: type[EngineConfig]) -> str:
    """One line for the first problem of an engine options validation (and a count of the others)."""
    errs = e.errors()
    err, more = errs[0], (f" [+{len(errs) - 1} more]" if len(errs) > 1 else "")
    key = str(err["loc"][0]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        near = difflib.get_close_matches(key, model.model_fields, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"unknown option {key!r}{hint}; valid: {', '.join(model.model_fields)}{more}"
    return f"option {_problem(err, key, model.model_fields.get(key))}{more}"[:300]


def _problem(err: dict, key: str, field: Any) -> str:
    val, kind, ctx = err.get("input"), err["type"], err.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "literal_error" and field is not None:
        return f"{key}={val!r}; valid: {_choices(field.annotation)}"
    if kind in ("greater_than_equal", "less_than_equal") and field is not None:
        bounds = {type(m).__name__: m for m in field.metadata}
        if "Ge" in bounds and "Le" in bounds:
            return f"{key} must be between {bounds['Ge'].ge} and {bounds['Le'].le}, got {val!r}"
        op, bound = (">=", ctx.get("ge")) if kind == "greater_than_equal" else ("<=", ctx.get("le"))
        return f"{key} must be {op} {bound}, got {val!r}"
    if kind == "greater_than":
        return f"{key} must be > {ctx.get('gt')}, got {val!r}"
    if kind in _PHRASES:
        return f"{key} {_PHRASES[kind]}, got {val!r}"
    return f"{key}: {err['msg']}"
