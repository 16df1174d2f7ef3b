"""Typed run configuration, validated at the edge.

A config is YAML (safe loader only) or a dict. ``--set a.b=v`` overrides are applied to the raw dict before
validation; the value is parsed as a YAML scalar/flow value. Every problem becomes a one-line
:class:`ConfigError`.
"""
from __future__ import annotations

import copy
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from fedleak.config.ownership import DEFAULT_ATTACK
from fedleak.config.pipeline import parse_pipeline as _parse_pipeline
from fedleak.errors import ConfigError
from fedleak.metrics.options import MetricOptions, metric_options


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, v):
        """``true`` is not an integer/number here (pydantic's lax mode would take it as 1)."""
        if isinstance(v, dict):
            for k, val in v.items():
                f = cls.model_fields.get(k) if isinstance(k, str) else None
                kinds = _scalar_types(f.annotation) if f is not None else set()
                if isinstance(val, bool) and bool not in kinds and kinds & {int, float}:
                    raise ValueError(f"{k} must be a number, got {str(val).lower()}")
        return v


def _scalar_types(ann) -> set:
    import typing

    args = typing.get_args(ann)
    return set(args) if args else {ann}


class DataConfig(_Strict):
    source: str = Field("builtin", description="'builtin' (scikit-image photos), 'digits', a folder, a .npz file "
                        "or 'import:module:attr' (a dataset object; importing runs that module); see docs/data.md")
    size: int = Field(64, ge=4, le=1024, description="square image size after resizing")
    batch_size: int = Field(4, ge=1, le=4096, description="images in the client's batch")
    start: int = Field(0, ge=0, description="index of the first image in the source's (sampling) order")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the sampling order (class-folder trees, shuffle); "
                      "independent of the run seed")
    shuffle: Optional[bool] = Field(None, description="None: class-folder trees interleaved across classes, other "
                                    "sources in their own order; true: every source shuffled; false: none")
    labels: Literal["auto", "none"] = Field("auto", description="'none': the images are unlabelled (attacks must "
                                            "recover labels; label metrics are not computed)")

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        if v.startswith("import:") and not all(v[len("import:"):].partition(":")[::2]):
            raise ValueError(f"an import source must look like 'import:package.module:attr', got {v!r}")
        return v
    resize: Literal["crop", "stretch"] = "crop"
    subject_only: bool = False
    segmenter: str = "none"
    sam_checkpoint: Optional[str] = None


class ModelConfig(_Strict):
    name: str = "lenet"
    num_classes: int = Field(1000, ge=2, le=100_000)
    width: float = Field(1.0, gt=0, le=64)
    activation: str = "relu"
    seed: Optional[int] = Field(None, description="init seed (defaults to the run seed)")
    options: dict[str, Any] = Field(default_factory=dict)
    weights: Optional[str] = Field(None, description="safetensors / state_dict file loaded into the model (round k)")


class ProtocolConfig(_Strict):
    name: Literal["fedsgd", "fedavg"] = "fedsgd"
    lr: float = Field(0.003, gt=0, le=100)
    local_steps: int = Field(1, ge=1, le=10_000)
    local_batch_size: Optional[int] = Field(None, ge=1)
    epochs: int = Field(1, ge=1, le=1000)
    share_labels: bool = True
    send: Literal["pseudo-gradient", "delta"] = "pseudo-gradient"
    #: rounds the client takes part in with the same data and model, fresh noise each (fedleak/client/rounds.py)
    rounds: int = Field(1, ge=1, le=10_000)
    #: per-round Poisson participation rate of the client (enters the accountant; rounds are drawn with it)
    participation: float = Field(1.0, gt=0, le=1)


class OutputConfig(_Strict):
    dir: str = "experiments"
    name: Optional[str] = None
    save_update: bool = False


@dataclass(frozen=True)
class Sections:
    """The named sections of a config, each validated once by its stage's public entry point
    (:func:`resolve_sections`); the stages use these and never validate them again."""

    #: the attack section as run: the user's options, plus the run seed when the attack declares ``seeds``
    #: and the section gives none (a plain mapping: it is written to the run folder's config.yaml)
    attack: dict[str, Any]
    #: what :func:`fedleak.attacks.check_attack_config` returned for :attr:`attack`
    attack_options: Any
    #: :func:`fedleak.enhance.check_config`'s normalised ``enhancer:`` section
    enhancer: dict[str, Any]
    #: what :func:`fedleak.server.scenarios.check_server_config` returned for the ``server:`` section
    server: Any
    metrics: MetricOptions

    @property
    def enhancer_enabled(self) -> bool:
        return self.enhancer["name"] != "none"


#: fields whose assignment invalidates the resolved :class:`Sections` (the attack seed follows ``seed``)
_SECTION_FIELDS = {"seed", "attack", "enhancer", "server", "metrics"}


class RunConfig(_Strict):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    threads: Optional[int] = Field(None, ge=1, le=1024)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    obfuscation: list[dict[str, Any]] = Field(default_factory=list)
    attack: dict[str, Any] = Field(default_factory=lambda: {"name": DEFAULT_ATTACK})
    enhancer: dict[str, Any] = Field(default_factory=lambda: {"name": "none"})
    metrics: dict[str, Any] = Field(default_factory=dict)
    server: dict[str, Any] = Field(default_factory=lambda: {"name": "honest"})
    output: OutputConfig = Field(default_factory=OutputConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N, resolved once by fedleak.device.resolve_device

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v):
        if not (isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v.strip().lower())):
            raise ValueError("must be auto, cpu or cuda (or cuda:N)")
        return v.strip().lower()

    @field_validator("obfuscation", mode="before")
    @classmethod
    def _steps(cls, v):
        if v is None:
            return []
        if isinstance(v, (str, dict)):
            v = [v]
        if not isinstance(v, list):
            raise ValueError("must be a list of steps like {name: qsgd, levels: 16}")
        out = []
        for step in v:
            if isinstance(step, str):
                out.extend(parse_pipeline(step))
            elif isinstance(step, dict):
                if "name" not in step:
                    raise ValueError(f"step {step!r} has no 'name'")
                out.append(dict(step))
            else:
                raise ValueError(f"step {step!r} must be a name or a mapping")
        return out

    @field_validator("attack", "enhancer", "server", mode="before")
    @classmethod
    def _named(cls, v, info):
        default = {"attack": DEFAULT_ATTACK, "enhancer": "none", "server": "honest"}[info.field_name]
        if isinstance(v, str):
            return {"name": v}
        if v is None:
            return {"name": default}
        if not isinstance(v, dict):
            raise ValueError("must be a name or a mapping with a 'name'")
        return {"name": default, **v}

    @model_validator(mode="after")
    def _check(self):
        p = self.protocol
        if p.local_batch_size is not None and p.local_batch_size > self.data.batch_size:
            raise ValueError(
                f"protocol.local_batch_size={p.local_batch_size} exceeds data.batch_size={self.data.batch_size}"
            )
        return self

    _sections: Optional[Sections] = PrivateAttr(default=None)
    _notices: list[str] = PrivateAttr(default_factory=list)

    @property
    def notices(self) -> list[str]:
        """What loading decided for the user (:mod:`fedleak.config.ownership`), for ``run.log``."""
        return self._notices

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _SECTION_FIELDS:
            super().__setattr__("_sections", None)

    @property
    def sections(self) -> Sections:
        """The validated named sections (resolved by :func:`validate`, or on first use)."""
        if self._sections is None:
            self._sections = resolve_sections(self)
        return self._sections

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def resolved_dict(self) -> dict:
        """:meth:`to_dict` with the attack section as run (seed filled in): what a run folder's config.yaml
        holds, so that ``--resume`` re-reads exactly the run."""
        return {**self.to_dict(), "attack": dict(self.sections.attack)}


def parse_pipeline(text: str) -> list[dict]:
    """Parse ``"clip(1.0) -> gaussian(0.01) -> qsgd(16)"`` into steps (see :mod:`fedleak.config.pipeline`)."""
    from fedleak.client.obfuscations import OBFUSCATIONS, first_param

    return _parse_pipeline(text, lambda name: first_param(OBFUSCATIONS.get(name)))


def _fmt_validation(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "config"
    msg = err["msg"]
    inp = err.get("input")
    extra = f" (got {inp!r})" if not isinstance(inp, dict) and len(repr(inp)) < 80 else ""
    more = f" [+{len(e.errors()) - 1} more]" if len(e.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        parent = err["loc"][:-1]
        model = RunConfig
        for part in parent:
            f = model.model_fields.get(part) if isinstance(part, str) else None
            ann = getattr(f, "annotation", None) if f else None
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        valid = f"; valid: {', '.join(model.model_fields)}" if model else ""
        return f"config: unknown key {loc!r}{valid}{more}"
    return f"config: {loc}: {msg}{extra}{more}"


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML; ``1e-3`` (a string to YAML 1.1) as a number; too deep or too big refused."""
    from fedleak.config.pipeline import _NUMBER

    if _NUMBER.fullmatch(text.strip()):
        t = text.strip()
        if len(t) > 400:
            raise ConfigError(f"--set: number {t[:20]}... has more than 400 digits")
        return float(t) if any(c in t for c in ".eE") else int(t)
    try:
        return _safe_load_unique(text)
    except yaml.YAMLError:
        return text
    except ConfigError as e:
        raise ConfigError(f"--set: {str(e).removeprefix('config: ')}") from None
    except (RecursionError, ValueError) as e:
        if "integer string conversion" in str(e):
            raise ConfigError(f"--set: an integer has more than {sys.get_int_max_str_digits()} digits") from None
        raise ConfigError(f"--set: value cannot be read ({type(e).__name__}: {str(e)[:80]})") from None


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict (lists indexed by integers)."""
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, _, text = assignment.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set: bad key {key!r}")
    value = parse_value(text)
    node: Any = raw
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(p)]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {key}: {p!r} is not a valid index (list has {len(node)} items)") from None
        elif isinstance(node, dict):
            if p not in node or node[p] is None:
                node[p] = {}
            elif isinstance(node[p], str) and parts[i + 1] != "name":
                node[p] = {"name": node[p]}
            node = node[p]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])!r} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: {last!r} is not a valid index") from None
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: parent is not a mapping")


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if isinstance(key, (str, int, float, bool, type(None))) and key in seen:  # scalar keys (null too)
            raise ConfigError(f"config: key {key!r} is given twice (line {k.start_mark.line + 1})")
        seen.add(key) if isinstance(key, (str, int, float, bool, type(None))) else None
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# YAML 1.2 floats that the YAML 1.1 resolver reads as strings: an exponent without a dot or without a sign (1e-3, 1e3)
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _flow_depth(text: str) -> int:
    """The deepest nesting of flow brackets (``[`` ``{``) outside quotes: a cheap look before parsing, because
    PyYAML recurses once per level (5000 levels: a RecursionError after seconds)."""
    depth = top = 0
    quote = None
    for c in text:
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[{":
            depth += 1
            top = max(top, depth)
        elif c in "]}":
            depth -= 1
    return top


def _safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (the loader is a SafeLoader: no Python tags) and flow
    values nested more than ``2 * MAX_DEPTH`` brackets deep (before parsing them)."""
    if _flow_depth(text) > 2 * MAX_DEPTH:
        raise ConfigError(f"config: a value is nested more than {2 * MAX_DEPTH} levels deep")
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_raw(path: str | Path | None, what: str = "config") -> dict:
    """The mapping in the YAML file ``path`` (``{}`` for None), through the safe loader that refuses duplicate
    keys; every problem (missing file, symlink loop, bad YAML, too deep, an integer too long) is one line
    naming ``what`` and the file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        from fedleak.io import path_problem

        raise ConfigError(f"{what} file {str(p)!r} {path_problem(p, 'not found')}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {str(p)!r}: {e}") from None
    try:
        raw = _safe_load_unique(text)
    except RecursionError:
        raise ConfigError(f"{what} {str(p)!r} is nested too deeply") from None
    except ConfigError as e:  # a key given twice, flow values nested too deeply
        raise ConfigError(f"{what} {str(p)!r}: {str(e).removeprefix('config: ')}") from None
    except ValueError as e:
        if "integer string conversion" in str(e):
            raise ConfigError(f"{what} {str(p)!r}: an integer has more than {sys.get_int_max_str_digits()} "
                              "digits") from None
        raise ConfigError(f"{what} {str(p)!r}: {str(e).splitlines()[0][:120]}") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {' '.join(first[:3])}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {str(p)!r} must be a mapping at top level, got {type(raw).__name__}")
    return raw


#: limits on the shape of a raw config: YAML anchors can make a small file describe a self-referential or
#: exponentially large structure ("billion laughs"); both are refused before anything walks it
MAX_DEPTH = 50
MAX_NODES = 100_000


def _check_structure(raw: Any) -> None:
    sizes: dict[int, int] = {}  # expanded size per container id (shared anchors are counted per use)
    active: set[int] = set()

    def size(node: Any, where: str, depth: int) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        i = id(node)
        if i in sizes:
            return sizes[i]
        if i in active:
            raise ConfigError(f"config: {where or 'config'} contains itself (a recursive YAML anchor)")
        if depth > MAX_DEPTH:
            raise ConfigError(f"config: {where} is nested more than {MAX_DEPTH} levels deep")
        active.add(i)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        n = 1
        for k, v in items:
            n += size(v, f"{where}.{k}" if where else str(k), depth + 1)
            if n > MAX_NODES:
                raise ConfigError(f"config: {where or 'config'} is too large (more than {MAX_NODES} values once "
                                  "YAML anchors are expanded)")
        active.discard(i)
        sizes[i] = n
        return n

    size(raw, "", 0)


def validate(raw: dict) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping, got {type(raw).__name__}")
    _check_structure(raw)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_fmt_validation(e)) from None
    except (ValueError, TypeError, RecursionError) as e:
        raise ConfigError(f"config: {e}") from None
    _check_finite(cfg.to_dict(), "")
    _check_names(cfg)
    cfg.sections  # noqa: B018 - resolve (validate) the named sections now, before any work
    return cfg


def resolve_sections(cfg: RunConfig) -> Sections:
    """Validate the ``server``, ``attack``, ``metrics`` and ``enhancer`` sections, once each, through their
    stage's public entry point; fill in the attack seed from the run seed when the attack declares ``seeds``."""
    from fedleak.attacks import ATTACKS, check_attack_config
    from fedleak.enhance import check_config as check_enhancer
    from fedleak.server.scenarios import check_server_config

    server = check_server_config(cfg.server)
    attack = dict(cfg.attack)
    if "seed" not in attack and ATTACKS.caps(attack["name"]).seeds:
        attack["seed"] = cfg.seed
    attack_options = check_attack_config(attack)
    _check_known_labels(cfg, attack_options)
    metrics = metric_options(cfg.metrics)
    enhancer = check_enhancer(cfg.enhancer)
    return Sections(attack=attack, attack_options=attack_options, enhancer=enhancer, server=server,
                    metrics=metrics)


def _check_known_labels(cfg: RunConfig, attack_options: Any) -> None:
    """With ``data.labels: none`` nobody knows the true labels: refuse an attack that needs them."""
    from fedleak.attacks import ATTACKS
    from fedleak.attacks.labels import METHODS

    name = cfg.attack["name"]
    if cfg.data.labels != "none":
        return
    recover = ", ".join(m for m in METHODS if m != "known")
    if ATTACKS.caps(name).needs_labels:
        raise ConfigError(f"attack {name} needs the client's true labels but data.labels is none; use an attack "
                          f"with a labels option that recovers them ({recover})")
    if "labels" in type(attack_options).model_fields and attack_options.labels == "known":
        raise ConfigError(f"attack {name}: labels: known needs the client's true labels but data.labels is none; "
                          f"use labels: {recover} (auto recovers them from the update)")


def _check_finite(node: Any, where: str) -> None:
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config: {where.lstrip('.')} must be finite, got {node}")
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{where}.{i}")


def _check_names(cfg: RunConfig) -> None:
    """Resolve every registry name early so typos fail before any work starts."""
    from fedleak.client.models import MODELS, ACTIVATIONS
    from fedleak.client.obfuscations import build_pipeline

    if not cfg.model.name.startswith("import:"):
        MODELS.resolve(cfg.model.name)
    else:
        _check_import_model(cfg)
    if cfg.model.activation.lower().replace("_", "-") not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {cfg.model.activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    _check_dp_budgets(cfg, build_pipeline(cfg.obfuscation))


def _check_dp_budgets(cfg: RunConfig, pipeline) -> None:
    """Calibrate a ``dpsgd`` step given an ``epsilon`` for the round this config describes (the client's batch,
    its local steps), so that an unreachable budget is refused at ``--check`` and before the run, not after it
    has started (``ldp`` calibrates when it is built)."""
    from fedleak.client.obfuscations import ObfContext
    from fedleak.client.obfuscations.dp import DPSGD

    steps = [s for s in pipeline.steps if isinstance(s, DPSGD) and s.noise_multiplier is None]
    if not steps:
        return
    p, n = cfg.protocol, cfg.data.batch_size
    ctx = ObfContext(generator=None, batch_size=n if p.name == "fedsgd" else (p.local_batch_size or n),
                     num_examples=n, local_steps=1 if p.name == "fedsgd" else p.local_steps * p.epochs)
    for step in steps:
        try:
            step.effective_noise_multiplier(ctx)
        except ConfigError as e:
            raise ConfigError(f"obfuscation: {e}") from None


def _check_import_model(cfg: RunConfig) -> None:
    """Build an ``import:`` model on PyTorch's meta device (no memory, no compute) before any work, so that a name
    that is not an ``nn.Module`` subclass, or a factory that does not return one, is refused at ``--check`` and
    before a run starts. Importing the module runs its code (docs/robustness.md: only name trusted modules)."""
    import torch

    from fedleak.client.models import build_model, model_kwargs

    with torch.device("meta"):
        build_model(cfg.model.name, **model_kwargs(cfg.model, cfg.data.size))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """``overrides`` follow the no-silent-override rule (:mod:`fedleak.config.ownership`); its notices are
    logged (``fedleak.config``) and kept in :attr:`RunConfig.notices`."""
    from fedleak.config.ownership import drop_foreign_attack_options

    raw = copy.deepcopy(base) if base is not None else load_raw(path)
    file_attack = copy.deepcopy(raw.get("attack"))
    for ov in overrides or []:
        apply_override(raw, ov)
    notices = drop_foreign_attack_options(raw, file_attack, list(overrides or []))
    cfg = validate(raw)
    for n in notices:
        logging.getLogger("fedleak.config").warning(n)
    cfg._notices = notices
    return cfg


def as_config(config: Any = None, overrides: list[str] | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from what the API accepts: None (all defaults), a YAML path, a dict or a
    RunConfig (returned as is when there are no overrides), with ``overrides`` applied."""
    if isinstance(config, RunConfig):
        return load_config(base=config.to_dict(), overrides=overrides) if overrides else config
    if isinstance(config, dict):
        return load_config(base=config, overrides=overrides)
    return load_config(config, overrides)
