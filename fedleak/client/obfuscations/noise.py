"""Additive noise without a privacy claim: Gaussian and Laplace, at a fixed scale or a target SNR.

SNR convention (as in the ROG code): for a tensor ``g`` and ``snr_db``, the noise *power* (variance) is
``mean(g^2) / 10^(snr_db / 10)``, computed per tensor, i.e. ``std = sqrt(mean(g^2) * 10^(-snr_db / 10))``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fedleak.client.obfuscations.base import ObfContext, Obfuscation, Tensors, register
from fedleak.client.obfuscations.basic import as_float, dense_bits, exactly_one


def snr_std(t: torch.Tensor, snr_db: float) -> float:
    """Noise standard deviation giving signal-to-noise ratio ``snr_db`` (dB) for tensor ``t``."""
    if t.numel() == 0:
        return 0.0
    power = float((t.double() ** 2).mean())
    return math.sqrt(power * 10.0 ** (-snr_db / 10.0))


def _dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def gaussian_noise(t: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    return std * torch.randn(t.shape, generator=gen, dtype=_dtype(t))


def laplace_noise(t: torch.Tensor, b: float, gen: torch.Generator) -> torch.Tensor:
    """Laplace(0, b) noise as ``b * (E1 - E2)`` with two independent Exp(1) draws (std ``b * sqrt(2)``)."""
    e1 = torch.empty(t.shape, dtype=_dtype(t)).exponential_(1.0, generator=gen)
    e2 = torch.empty(t.shape, dtype=_dtype(t)).exponential_(1.0, generator=gen)
    return b * (e1 - e2)


@register("gaussian")
class Gaussian(Obfuscation):
    """Add i.i.d. Gaussian noise of std `sigma`, or at a per-tensor SNR `snr_db` (no privacy accounting).

    Give exactly one of ``sigma`` (>= 0, same std for every entry) or ``snr_db`` (per tensor,
    ``std = sqrt(mean(g^2) * 10^(-snr_db/10))``). For a DP guarantee use ``ldp`` or ``dpsgd``.

    Bit cost: the output is dense, so 32 bits per entry (it re-densifies a sparse input).
    """

    def __init__(self, sigma: Optional[float] = None, snr_db: Optional[float] = None):
        exactly_one(sigma=sigma, snr_db=snr_db)
        self.sigma = None if sigma is None else as_float("sigma", sigma, lo=0.0)
        self.snr_db = None if snr_db is None else as_float("snr_db", snr_db)

    def std(self, t: torch.Tensor) -> float:
        return self.sigma if self.sigma is not None else snr_std(t, self.snr_db)

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        return {k: t + gaussian_noise(t, self.std(t), ctx.generator) for k, t in tensors.items()}

    def bits(self, numels: list[int]) -> float:
        return dense_bits(numels)


@register("laplace")
class Laplace(Obfuscation):
    """Add i.i.d. Laplace noise of scale `scale` (b), or at a per-tensor SNR `snr_db` (no privacy accounting).

    Give exactly one of ``scale`` (b >= 0; std = b * sqrt(2)) or ``snr_db`` (per tensor the std is
    ``sqrt(mean(g^2) * 10^(-snr_db/10))``, i.e. ``b = std / sqrt(2)``). For pure epsilon-DP use
    ``ldp(mechanism=laplace)``.

    Bit cost: dense output, 32 bits per entry.
    """

    def __init__(self, scale: Optional[float] = None, snr_db: Optional[float] = None):
        exactly_one(scale=scale, snr_db=snr_db)
        self.scale = None if scale is None else as_float("scale", scale, lo=0.0)
        self.snr_db = None if snr_db is None else as_float("snr_db", snr_db)

    def b(self, t: torch.Tensor) -> float:
        return self.scale if self.scale is not None else snr_std(t, self.snr_db) / math.sqrt(2.0)

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        return {k: t + laplace_noise(t, self.b(t), ctx.generator) for k, t in tensors.items()}

    def bits(self, numels: list[int]) -> float:
        return dense_bits(numels)
