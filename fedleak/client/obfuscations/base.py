"""The pieces every obfuscation module shares: the context, the base class and the registry."""
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
