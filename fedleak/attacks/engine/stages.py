"""Multi-stage attacks: a sequence of engine stages, each starting from the images the previous one ended with.

A stage is one set of engine options (:class:`StageOptions`: an :class:`EngineConfig` plus two kinds of
update-dependent settings). ``sign_iterations`` is the stage's budget for sign-compressed updates
(``iterations`` is the budget for every other update; ``sign_iterations: null`` means the same as
``iterations``; ``sign_iterations: 0`` skips the stage for a sign-compressed update, so the next stage starts from
the images of the one before it). ``sparse`` holds engine options (any but the budget) that replace the stage's own when the
update is sparsified (top-k, random-k, pruning: :data:`~fedleak.attacks.matching.SPARSIFIERS`), for example
``{loss: cosine}``, and ``sparse_mild`` (applied after ``sparse``) for one that kept at least ``sparse_kept`` of its
entries (an option of the attack, default 0.05: top-k 90 % keeps 0.1, top-k 99 % 0.01; the fraction of non-zero
received entries); ``signsgd`` likewise for a sign-compressed update (for example its own ``tv``), ``qsgd_any``
for an update whose last obfuscation is QSGD with any number of levels, and ``qsgd`` (applied after ``qsgd_any``)
for one with at most ``qsgd_levels`` levels (an option of the attack, default 4; for example
``{loss: qsgd-likelihood}``): the attacker
reads the obfuscation off the update's metadata and picks the stage that works for it. Options that describe the
attacked problem or the run rather than the optimisation (:data:`SHARED`: labels, ``aware``, seed, precision,
checkpointing, ...) are set once, on the attack, and hold for every stage. A stage with ``init: previous``
starts from the best images of the stage before it, encoded by its parameterisation (``pixels``: the images
themselves, upsampled bicubically where the resolution differs; ``lowres``: area-downsampled).

Setting stage options (stages are numbered from 0):

* ``--set attack.stages.2.iterations=300`` (or ``stages: {2: {iterations: 300}}`` in a config, or
  ``fedleak.attack("rog-refine", view, update, stages={1: {"lr": 0.02}})``): a mapping of stage index ->
  options, merged into the preset's stages. A stage's ``iterations`` does not change its sign budget: set
  ``stages.1.sign_iterations`` for that (the no-silent-override rule, README "Budgets").
* ``stages: [{...}, {...}]``: a full list of stage definitions (each over the engine defaults), replacing the
  preset's.

:func:`run_stages` is one loop over the stages around :func:`~fedleak.attacks.engine.loop.optimise`: the attacked
problem (model, update, labels, precision) is prepared once; the checkpoint records the stage, the settings of
every stage and the results of the finished ones, so a killed run resumes in the stage it was in; Ctrl-C returns
the current stage's best images; the progress callback's state gains ``stage`` and ``stages``.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import ConfigDict, Field, create_model, field_validator, model_validator

from fedleak.attacks.base import Reconstruction
from fedleak.attacks.engine.checkpoint import config_key
from fedleak.attacks.engine.loop import Problem, optimise, prepare, reconstruction, resolve_labels, _layer_weights
from fedleak.attacks.engine.options import EngineConfig
from fedleak.attacks.engine.parts import Parts, resolve_parts
from fedleak.attacks.matching import SPARSIFIERS, Matcher, quantiser_of
from fedleak.errors import ConfigError
from fedleak.io import torch_load_safely
from fedleak.options import Options

#: engine options set once for all stages (on the attack, not on a stage)
SHARED = ("labels", "aware", "fast", "big_threshold", "seed", "threads", "checkpoint", "checkpoint_every", "resume",
          "on_nan", "max_nan_restarts", "callback_every", "dtype", "precision")


def _declared(update) -> set[str]:
    """The names of the obfuscations ``update`` declares (none for no update)."""
    return set() if update is None else {str(s.get("name")) for s in update.obfuscation or []}


def is_sign_compressed(update) -> bool:
    return "sign" in _declared(update)


def is_sparsified(update) -> bool:
    return bool(_declared(update) & SPARSIFIERS)


def kept_fraction(update) -> float:
    """The fraction of the received entries that are non-zero (what a sparsified update kept), over all tensors."""
    tensors = list(update.tensors.values())
    total = sum(t.numel() for t in tensors)
    return sum(int(torch.count_nonzero(t)) for t in tensors) / total if total else 0.0


def is_mildly_sparsified(update, min_kept: float) -> bool:
    """A sparsified update that kept at least ``min_kept`` of its entries (top-k 90 % keeps 0.1)."""
    return update is not None and is_sparsified(update) and kept_fraction(update) >= min_kept


def is_qsgd_quantised(update, max_levels: Optional[int] = None) -> bool:
    """The update's last obfuscation is QSGD (what ``qsgd-likelihood`` models), with at most ``max_levels`` levels
    if given."""
    q = quantiser_of(update) if update is not None else None
    if not q or q["name"] != "qsgd":
        return False
    return max_levels is None or int(q["levels"]) <= max_levels


#: a stage's update-dependent option sets, in the order they are applied over its own options
OVERRIDES = ("qsgd_any", "qsgd", "sparse", "sparse_mild", "signsgd")


class StageOptions(EngineConfig):
    """One stage: engine options, its iterations for sign-compressed updates and the options that replace its
    own for sparsified (``sparse``), sign-compressed (``signsgd``) and QSGD-quantised (``qsgd_any``; ``qsgd`` for
    at most ``qsgd_levels`` levels) updates."""

    sign_iterations: Optional[int] = Field(None, ge=0, le=10_000_000)  # 0: skipped for sign-compressed updates
    sparse: dict[str, Any] = Field(default_factory=dict)
    sparse_mild: dict[str, Any] = Field(default_factory=dict)  # over sparse, when at least sparse_kept was kept
    signsgd: dict[str, Any] = Field(default_factory=dict)
    qsgd_any: dict[str, Any] = Field(default_factory=dict)
    qsgd: dict[str, Any] = Field(default_factory=dict)

    @field_validator(*OVERRIDES)
    @classmethod
    def _override_keys(cls, v: dict, info) -> dict:
        unknown = sorted(k for k in v if k not in EngineConfig.model_fields or k in SHARED)
        if unknown:
            valid = sorted(k for k in EngineConfig.model_fields if k not in SHARED)
            raise ValueError(f"{info.field_name}.{unknown[0]}: not a stage option; valid: {', '.join(valid)}")
        if "iterations" in v:  # one budget rule: iterations, and sign_iterations for sign-compressed updates
            raise ValueError(f"{info.field_name}.iterations: a stage's budget is its iterations (sign_iterations "
                             "for sign-compressed updates)")
        return v


def _stage(i: int, raw: Any) -> StageOptions:
    if isinstance(raw, StageOptions):
        return raw
    if not isinstance(raw, dict):
        raise ValueError(f"stages.{i} must be a mapping of engine options, got {type(raw).__name__}")
    shared = sorted(set(raw) & set(SHARED))
    if shared:
        raise ValueError(f"stages.{i}.{shared[0]}: {shared[0]!r} holds for all stages; set it on the attack")
    try:
        return StageOptions(**raw)
    except ConfigError as e:
        raise ValueError(f"stages.{i}: {e}") from None


def merge_stages(preset: list[dict], given: Any) -> list[dict]:
    """The stage definitions: ``given`` as a full list, or a mapping of stage index -> options merged into
    ``preset``."""
    if isinstance(given, (list, tuple)):
        return list(given)
    if not isinstance(given, dict):
        raise ValueError("stages must be a list of stage mappings or a mapping of stage index -> options, "
                         f"got {type(given).__name__}")
    out = copy.deepcopy(list(preset))
    for key, over in given.items():
        idx = key if isinstance(key, int) and not isinstance(key, bool) else (int(key) if str(key).isdigit() else -1)
        if not 0 <= idx < len(out):
            raise ValueError(f"stages.{key}: no such stage (stages are numbered 0 to {len(out) - 1})")
        if not isinstance(over, dict):
            raise ValueError(f"stages.{key} must be a mapping of options, got {type(over).__name__}")
        out[idx] = _merge_stage(out[idx], over)
    return out


def _merge_stage(stage: dict, over: dict) -> dict:
    """``stage`` with the options of ``over``; a mapping option (one of :data:`OVERRIDES`) is merged key by
    key, so ``stages.2.sparse.loss`` sets one option of it."""
    merged = dict(stage)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(stage.get(key), dict)
        merged[key] = {**stage[key], **value} if both else value
    return merged


def split_budget(stages: list[dict], total: int, keep: set[int] = frozenset()) -> list[dict]:
    """``stages`` with ``total`` iterations in all: the stages in ``keep`` keep theirs, the rest is split over
    the others in proportion to their own budgets, each at least 1 (so a total below the number of stages
    runs one iteration per stage)."""
    free = [i for i in range(len(stages)) if i not in keep]
    if not free:
        return stages
    left = max(len(free), total - sum(int(stages[i].get("iterations") or 0) for i in keep))  # >= 1 per stage
    own = [max(1, int(stages[i].get("iterations") or EngineConfig.model_fields["iterations"].default)) for i in free]
    shares = [max(1, round(left * o / sum(own))) for o in own]
    shares[-1] = max(1, shares[-1] + left - sum(shares))
    for j in reversed(range(len(shares))):  # rounding up to 1 went over: take it back, later stages first
        shares[j] -= min(shares[j] - 1, max(0, sum(shares) - left))
    out = [dict(st) for st in stages]
    for i, n in zip(free, shares):
        out[i]["iterations"] = n
    return out


def _shared_fields() -> dict:
    fields = {}
    for key in SHARED:
        info = copy.deepcopy(EngineConfig.model_fields[key])
        fields[key] = (info.annotation, info)
    return fields


class _Shared(Options):
    model_config = ConfigDict(strict=True, allow_inf_nan=False)


class StagedConfig(create_model("_SharedEngineOptions", __base__=_Shared, **_shared_fields())):
    """Options of a multi-stage attack: the shared options and ``stages`` (see the module docstring)."""

    stages: list[StageOptions] = Field(default_factory=list, validate_default=True)
    #: a total budget over all stages, split in the stages' own proportions (a stage's explicit ``iterations``
    #: wins; sign budgets are not changed by it, as everywhere)
    iterations: Optional[int] = Field(None, ge=1, le=10_000_000)
    #: the stages' ``qsgd`` options apply to QSGD updates with at most this many levels: coarse quantisation,
    #: where the exact likelihood pays; finer QSGD is close to its input and is matched as the stage says
    qsgd_levels: int = Field(4, ge=2, le=1 << 16)
    #: the stages' ``sparse_mild`` options apply (over ``sparse``) to sparsified updates that kept at least this
    #: fraction of their entries: mild sparsification (top-k 90 %), which needs a lighter prior than top-k 99 %
    sparse_kept: float = Field(0.05, gt=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _total_budget(cls, data):
        if not isinstance(data, dict) or data.get("iterations") is None or isinstance(data["iterations"], bool):
            return data
        total = data["iterations"]
        if not isinstance(total, int):
            return data  # the field's own check gives the one-line error
        given = data.get("stages")
        preset = cls.model_fields["stages"].default_factory()
        stages = merge_stages(preset, {} if given is None else given)
        explicit = {int(k) for k, v in given.items() if isinstance(v, dict) and "iterations" in v} \
            if isinstance(given, dict) else set()
        return {**data, "stages": split_budget(stages, total, explicit)}

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, v):
        preset = cls.model_fields["stages"].default_factory()
        raw = merge_stages(preset, preset if v is None else v)
        if not raw:
            raise ValueError("stages: a multi-stage attack needs at least one stage")
        return [_stage(i, s) for i, s in enumerate(raw)]

    @model_validator(mode="after")
    def _valid_stages(self):
        variants = ((), ("sparse",), ("sparse", "sparse_mild"), ("signsgd",), ("qsgd_any",), ("qsgd_any", "qsgd"))
        for applied in variants:  # every variant's engine options check
            configs = self._configs(frozenset(applied))
            if not configs:
                raise ValueError("stages: every stage has sign_iterations 0, so a sign-compressed update would "
                                 "run none")
            if configs[0].init == "previous":
                first = "the first stage with sign_iterations > 0" if "signsgd" in applied else "stages.0"
                raise ValueError(f"{first}: init: previous needs a previous stage")
        return self

    def stage_configs(self, update=None) -> list[EngineConfig]:
        """The engine options of each stage run for ``update`` if given (its sign budget and options, its sparse
        options and, when it kept at least ``sparse_kept`` of its entries, its ``sparse_mild`` options, its QSGD
        options: ``qsgd_any``, then ``qsgd`` if it has at most ``qsgd_levels`` levels); for a
        sign-compressed update the stages with ``sign_iterations: 0`` are left out."""
        applies = {"qsgd_any": is_qsgd_quantised(update), "qsgd": is_qsgd_quantised(update, self.qsgd_levels),
                   "sparse": is_sparsified(update), "sparse_mild": is_mildly_sparsified(update, self.sparse_kept),
                   "signsgd": is_sign_compressed(update)}
        return self._configs(frozenset(k for k, on in applies.items() if on))

    def _configs(self, applied: frozenset[str]) -> list[EngineConfig]:
        """Each stage's engine options with the :data:`OVERRIDES` named in ``applied`` laid over its own."""
        shared = {k: getattr(self, k) for k in SHARED}
        sign = "signsgd" in applied
        out = []
        for i, st in enumerate(self.stages):
            if sign and st.sign_iterations == 0:
                continue
            d = st.model_dump(exclude={"sign_iterations", *OVERRIDES, *SHARED})
            for name in OVERRIDES:
                if name in applied:
                    d.update(getattr(st, name))
            if sign and st.sign_iterations:
                d["iterations"] = st.sign_iterations
            try:
                out.append(EngineConfig(**d, **shared))
            except ConfigError as e:
                raise ValueError(f"stages.{i}: {e}") from None
        return out


def staged_options(name: str, stages: list[dict], doc: str, **shared) -> type[StagedConfig]:
    """The typed options model of a multi-stage preset: ``stages`` and the ``shared`` option defaults."""
    fields: dict[str, Any] = {"stages": (list[StageOptions], Field(default_factory=lambda: copy.deepcopy(stages),
                                                                   validate_default=True))}
    for key, value in shared.items():
        info = copy.deepcopy(StagedConfig.model_fields[key])
        info.default = value
        fields[key] = (info.annotation, info)
    return create_model(name, __base__=StagedConfig, __doc__=doc, __module__=__name__, **fields)


def _stage_problem(problem: Problem, cfg: EngineConfig, parts: Parts, first: EngineConfig,
                   start: Optional[torch.Tensor]) -> Problem:
    """The problem as one stage sees it: its own matching loss (if it differs) and its start images."""
    matcher = problem.matcher

    def weighting(c: EngineConfig) -> tuple:
        return c.loss, c.layer_weights, c.big_weight, c.input_weight

    if weighting(cfg) != weighting(first):
        m = problem.matcher
        matcher = Matcher(m.target, parts.loss, problem.mode, _layer_weights(cfg, problem.fwd, problem.shape[1:]),
                          tuple(problem.fwd.big), m.quantiser)
    return dataclasses.replace(problem, matcher=matcher, start=start)


def _resume_point(ckpt: Optional[Path], first: EngineConfig, keys: list[dict]) -> dict:
    """Where to start: stage 0, or the stage a checkpoint of these stages was made in (with the earlier results)."""
    fresh = {"stage": 0, "images": None, "history": [], "stages": []}
    if ckpt is None or not first.resume or not ckpt.is_file():
        return fresh
    where = f"checkpoint {str(ckpt)!r}"
    state = torch_load_safely(ckpt, where, ConfigError, "; delete it to start over")
    if not isinstance(state, dict) or state.get("stages_key") != keys:
        raise ConfigError(f"{where} was made with different attack settings; delete it to start over")
    return {**state["carry"], "stage": state["stage"]}


def _tagged(callback, stage: int, configs: list[EngineConfig]):
    """The callback with the stage added to each state, and ``planned`` set to the iterations of all the stages."""
    if callback is None:
        return None
    tags = {"stage": stage, "stages": len(configs), "planned": sum(c.iterations for c in configs)}
    return lambda state: callback({**state, **tags})


def run_stages(view, update, configs: list[EngineConfig], callback=None) -> Reconstruction:
    """Run the stages in order on what the server saw; each stage starts from the previous one's best images
    (``init: previous``). ``info["stages"]`` records each stage's options and result."""
    if not configs:
        raise ConfigError("a multi-stage attack needs at least one stage")
    t_start = time.perf_counter()
    first = configs[0]
    if first.threads:
        torch.set_num_threads(first.threads)
    parts0 = resolve_parts(first)
    problem = prepare(view, update, first, parts0)
    ckpt = Path(first.checkpoint) if first.checkpoint else None
    keys = [config_key(c) for c in configs]
    carry = _resume_point(ckpt, first, keys)
    resume_stage, interrupted = carry["stage"], False
    try:
        for s in range(resume_stage, len(configs)):
            cfg = configs[s].model_copy(update={"resume": configs[s].resume and s == resume_stage})
            parts = parts0 if s == 0 else resolve_parts(cfg)
            staged = _stage_problem(problem, cfg, parts, first, carry["images"])
            meta = {"stage": s, "stages_key": keys, "carry": {k: carry[k] for k in ("images", "history", "stages")}}
            t_stage = time.perf_counter()
            best, history, interrupted = optimise(staged, cfg, parts, _tagged(callback, s, configs), t_start,
                                                  meta)
            record = {"stage": s, "options": cfg.model_dump(exclude={"resume"}), "best_loss": best["loss"],
                      "iterations_run": len(history), "seconds": time.perf_counter() - t_stage,
                      "interrupted": interrupted}
            carry = {"stage": s + 1, "images": best["images"].detach().clamp(0, 1).float(),
                     "history": carry["history"] + history, "stages": carry["stages"] + [record]}
            if interrupted:
                break
    finally:
        problem.fwd.close()
    rec = reconstruction(problem, cfg, best, carry["history"], interrupted, t_start)
    rec.info.update({"stages": carry["stages"], "stage": carry["stage"] - 1})
    return rec


@dataclasses.dataclass(frozen=True)
class Score:
    """A candidate's objective (:func:`attack_objective`): the total, and the matching loss of each compared
    parameter on its own (in the matcher's parameter order; no priors)."""

    total: float
    layers: tuple[float, ...]


def attack_objective(view, update, attack_config: dict, labels: Optional[torch.Tensor] = None, priors: bool = True):
    """The server-side objective of a finished attack, for judging candidate images after it (the enhancer's
    acceptance test, :mod:`fedleak.enhance.stage`): ``(score, close)`` where ``score(images)`` is a
    :class:`Score`: the matching loss of ``images`` against ``update`` -- plus the last stage's weighted priors
    when ``priors`` -- and each parameter's matching loss, with the attack's loss, matching mode and labels
    (``labels``: the reconstruction's, else recovered as the attack did). ``attack_config`` is a
    reconstruction's ``info["attack_config"]``. Uses only the server's view."""
    keep = {k: v for k, v in attack_config.items() if k in EngineConfig.model_fields}
    # float32: candidates differ little, and bfloat16 rounding of the simulated update would decide between them
    cfg = EngineConfig(**{**keep, "checkpoint": None, "precision": "float32",
                          "init": "uniform" if keep.get("init") == "previous" else keep.get("init", "uniform")})
    parts = resolve_parts(cfg)
    problem = prepare(view, update, cfg, parts)
    y = labels.long() if labels is not None else problem.labels
    soft = y is None
    if soft:  # soft labels were optimised: judge with the labels read off the last layer instead
        y = resolve_labels(cfg.model_copy(update={"labels": "llg"}), view, update, problem.fwd.model,
                           problem.matcher.target)[0]
    terms = parts.prior_terms(cfg, max(problem.shape[-2:]), problem.shape[0]) if priors else []

    def score(images: torch.Tensor) -> Score:
        x = images.detach().to(getattr(torch, cfg.dtype))
        with torch.enable_grad():
            rep = problem.simulate(x, y, False)
            total, per_layer = problem.matcher.losses(rep)
            layers = tuple(float(v.detach()) for v in per_layer.values())
            for w, prior in terms:
                total = total + w * prior.penalty(x)
        return Score(float(total.detach()), layers)

    return score, problem.fwd.close
