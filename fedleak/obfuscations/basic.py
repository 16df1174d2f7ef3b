"""Placeholder module: the full set of obfuscations is implemented in the modules imported below."""
from __future__ import annotations

import math

import torch

from . import ObfContext, Obfuscation, Tensors, register


def global_norm(tensors: Tensors) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values()))


@register("clip")
class Clip(Obfuscation):
    """Clip the whole update to L2 norm <= max_norm (no noise)."""

    def __init__(self, max_norm: float = 1.0):
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)

    def apply(self, tensors, ctx):
        n = global_norm(tensors).item()
        f = min(1.0, self.max_norm / (n + 1e-12))
        return {k: t * f for k, t in tensors.items()}


@register("gaussian")
class Gaussian(Obfuscation):
    """Add i.i.d. Gaussian noise of std sigma."""

    def __init__(self, sigma: float = 0.01):
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def apply(self, tensors, ctx):
        return {
            k: t + self.sigma * torch.randn(t.shape, generator=ctx.generator, dtype=t.dtype)
            for k, t in tensors.items()
        }
