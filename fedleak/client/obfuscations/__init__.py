"""Gradient obfuscations (compression, noise, differential privacy), composable into a pipeline.

Each obfuscation is a small object registered by name:

* ``apply(tensors, ctx) -> tensors`` transforms the whole update (a dict ``name -> Tensor``), using only
  ``ctx.generator`` for randomness, so a seed fixes the result;
* ``bits(numels)`` is the number of bits the step's output puts on the wire (``None`` = leaves it as is);
* ``privacy(ctx)`` returns ``(epsilon, delta)`` for DP steps, ``None`` otherwise;
* steps with ``per_example = True`` (DP-SGD) act inside the client's gradient computation instead:
  ``aggregate(per_example_grads, ctx)`` turns per-example gradients into the batch gradient.

``build_pipeline([{name: clip, max_norm: 1}, {name: gaussian, sigma: 0.01}, {name: qsgd, levels: 16}])``
validates the steps (unknown names/options list the valid ones) and returns a :class:`Pipeline`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from fedleak.errors import ConfigError, NumericalError
from fedleak.registry import Registry

Tensors = dict[str, torch.Tensor]


@dataclass
class ObfContext:
    """What an obfuscation may know about the client round."""

    generator: torch.Generator
    batch_size: int = 1  # examples per local step
    num_examples: int = 1  # client's dataset size this round
    local_steps: int = 1  # optimiser steps this round (FedAvg tau * epochs)
    dataset_size: Optional[int] = None  # population size for sampling-rate accounting (None: batch = dataset)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_rate(self) -> float:
        n = self.dataset_size or self.num_examples
        return min(1.0, self.batch_size / max(1, n))


class Obfuscation:
    """Base class. Subclasses set ``name`` via the registry and override ``apply``."""

    per_example: bool = False
    #: True for steps whose output is sparse/quantised so that later noise steps would make no sense
    compresses: bool = False

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:  # pragma: no cover - interface
        raise NotImplementedError

    def bits(self, numels: list[int]) -> Optional[float]:
        return None

    def privacy(self, ctx: ObfContext) -> Optional[tuple[float, float]]:
        return None

    def describe(self) -> dict:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"name": getattr(self, "registered_name", type(self).__name__.lower()), **params}

    def __repr__(self):
        d = self.describe()
        args = ", ".join(f"{k}={v!r}" for k, v in d.items() if k != "name")
        return f"{d['name']}({args})"


OBFUSCATIONS: Registry[Obfuscation] = Registry("obfuscation")


def register(name: str):
    def deco(cls):
        cls.registered_name = name
        return OBFUSCATIONS.register(name)(cls)

    return deco


def first_param(factory) -> str:
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    if not params:
        raise ConfigError(f"{factory.__name__} takes no arguments")
    return params[0].name


def check_finite(tensors: Tensors, what: str = "update") -> None:
    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).sum().item()
            raise NumericalError(f"{what}: tensor {k!r} has {bad} NaN/Inf values")


class Pipeline:
    """An ordered list of obfuscations applied one after another."""

    def __init__(self, steps: list[Obfuscation]):
        self.steps = steps
        per_ex = [s for s in steps if s.per_example]
        if len(per_ex) > 1:
            raise ConfigError("at most one per-example (DP-SGD) step is allowed")
        if per_ex and steps.index(per_ex[0]) != 0:
            raise ConfigError("the per-example (DP-SGD) step must come first in the obfuscation pipeline")
        self.per_example = per_ex[0] if per_ex else None
        self.update_steps = [s for s in steps if not s.per_example]

    def __len__(self):
        return len(self.steps)

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        check_finite(tensors, "client update before obfuscation")
        out = dict(tensors)
        for s in self.update_steps:
            out = s.apply(out, ctx)
        check_finite(out, "client update after obfuscation")
        return out

    def bits(self, numels: list[int]) -> float:
        """Bits on the wire for the whole update (32 bits per float if no compressing step)."""
        bits = 32.0 * sum(numels)
        for s in self.update_steps:
            b = s.bits(numels)
            if b is not None:
                bits = b
        return float(bits)

    def privacy(self, ctx: ObfContext) -> Optional[dict]:
        """(epsilon, delta) of the DP steps of this round, or None if none is a DP step."""
        res = None
        for s in self.steps:
            p = s.privacy(ctx)
            if p is not None:
                eps, delta = p
                if res is None:
                    res = {"epsilon": eps, "delta": delta, "mechanism": s.describe()["name"]}
                else:  # basic composition of several DP steps
                    res = {"epsilon": res["epsilon"] + eps, "delta": res["delta"] + delta, "mechanism": "composed"}
        return res

    def describe(self) -> list[dict]:
        return [s.describe() for s in self.steps]

    def __repr__(self):
        return " -> ".join(map(repr, self.steps)) or "identity"


def build_pipeline(steps: list[dict] | None) -> Pipeline:
    built = []
    for i, step in enumerate(steps or []):
        if not isinstance(step, dict) or "name" not in step:
            raise ConfigError(f"obfuscation.{i}: must be a mapping with a 'name', got {step!r}")
        kwargs = {k: v for k, v in step.items() if k != "name"}
        try:
            built.append(OBFUSCATIONS.build(step["name"], **kwargs))
        except ConfigError as e:
            raise ConfigError(f"obfuscation.{i}: {e}") from None
    return Pipeline(built)


from fedleak.client.obfuscations import basic  # noqa: E402,F401  (registration)
from fedleak.client.obfuscations import quantization, sparsification, noise, dp  # noqa: E402,F401  (registration)
