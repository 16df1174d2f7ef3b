"""Quantisation: deterministic uniform levels, QSGD stochastic rounding, signSGD.

Level convention (shared by ``uniform`` and ``qsgd``, as in the ROG code's ``quant_level``): ``levels = s``
is the number of *magnitude* levels including zero, i.e. magnitudes ``{0, 1/(s-1), 2/(s-1), ..., 1} * scale``
with ``s - 1`` equal intervals. The QSGD paper (Alistarh et al., 2017) counts intervals instead: its
parameter is ``s_paper = levels - 1``.
"""
from __future__ import annotations

import math

import torch

from fedleak.client.obfuscations.base import ObfContext, Obfuscation, Tensors, register
from fedleak.client.obfuscations.basic import FLOAT_BITS, as_choice, as_int


def _level_bits(levels: int) -> int:
    """Fixed-length code for a signed level index in {-(s-1), ..., s-1} (2s - 1 values)."""
    return math.ceil(math.log2(2 * levels - 1))


def _quantised_bits(numels: list[int], levels: int) -> float:
    return float(sum(n * _level_bits(levels) + FLOAT_BITS for n in numels))


def _rand_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    dtype = t.dtype if t.is_floating_point() else torch.float32
    return torch.rand(t.shape, generator=gen, dtype=dtype)


def quantize_uniform(t: torch.Tensor, levels: int) -> torch.Tensor:
    """``sign(t) * round(|t| / M * q) / q * M`` with ``M = max|t|`` and ``q = levels - 1`` (round-half-to-even); a
    zero or empty tensor stays zero. The attack's quantisation-aware matching applies the same function."""
    q = levels - 1
    m = t.abs().max() if t.numel() else torch.zeros((), dtype=t.dtype)
    if m == 0:
        return torch.zeros_like(t)
    idx = torch.round((t.abs() / m * q).clamp(0, q))
    return torch.sign(t) * ((idx / q) * m)  # idx/q <= 1 first: never above M, even for subnormal M


@register("uniform")
class Uniform(Obfuscation):
    """Deterministic uniform quantisation to `levels` magnitude levels of max|g| per tensor (sign kept).

    Each tensor ``g`` with ``M = max|g|`` becomes ``sign(g) * round(|g| / M * (s-1)) * M / (s-1)``: at most
    ``s = levels`` distinct magnitudes (0 included), round-half-to-even. A zero tensor stays zero. Biased.

    Bit cost: per entry a fixed-length signed level index of ``ceil(log2(2s - 1))`` bits, plus one 32-bit
    float (M) per tensor.
    """

    compresses = True

    def __init__(self, levels: int = 16):
        self.levels = as_int("levels", levels, lo=2)

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        return {k: quantize_uniform(t, self.levels) for k, t in tensors.items()}

    def bits(self, numels: list[int]) -> float:
        return _quantised_bits(numels, self.levels)


@register("qsgd")
class QSGD(Obfuscation):
    """QSGD stochastic quantisation (unbiased) to `levels` magnitude levels of a per-tensor norm.

    With ``q = levels - 1`` intervals and ``N`` the tensor's norm (``norm="max"``: ``max|g|`` as in the ROG
    code; ``norm="l2"``: ``||g||_2`` as in the QSGD paper), each entry's ``r = |g_i| / N * q`` is rounded to
    ``floor(r) + 1`` with probability ``r - floor(r)`` and to ``floor(r)`` otherwise, and the output is
    ``sign(g_i) * level * N / q``. So ``E[Q(g)] = g``. Rounding uses uniforms from ``ctx.generator`` only.

    Variance: ``E||Q(v) - v||^2 = (N/q)^2 * sum_i p_i (1 - p_i)`` with ``p_i = frac(r_i)``; since
    ``p(1-p) <= min(1/4, r)`` this is ``<= min(n N^2 / (4 q^2), N ||v||_1 / q)``. For ``l2`` (``N = ||v||_2``,
    ``||v||_1 <= sqrt(n) ||v||_2``) that implies the paper's ``min(n / q^2, sqrt(n) / q) * ||v||_2^2``; for
    ``max`` (``N = ||v||_inf``) it reads ``min(n ||v||_inf^2 / (4 q^2), ||v||_inf ||v||_1 / q)``, which is
    at most the paper's bound as well.

    Bit cost: fixed-length signed level index of ``ceil(log2(2 levels - 1))`` bits per entry plus one 32-bit
    float (N) per tensor (no Elias coding).
    """

    compresses = True

    def __init__(self, levels: int = 16, norm: str = "max"):
        self.levels = as_int("levels", levels, lo=2)
        self.norm = as_choice("norm", norm, ("max", "l2"))

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        q = self.levels - 1
        out = {}
        for k, t in tensors.items():
            if t.numel() == 0:
                out[k] = t.clone()
                continue
            n = t.abs().max() if self.norm == "max" else torch.linalg.vector_norm(t)
            u = _rand_like(t, ctx.generator)  # drawn even for a zero tensor so the stream does not depend on data
            if n == 0:
                out[k] = torch.zeros_like(t)
                continue
            r = (t.abs() / n * q).clamp(0, q)
            lower = torch.floor(r)
            level = lower + (u < (r - lower)).to(t.dtype)
            out[k] = torch.sign(t) * level * (n / q)
        return out

    def bits(self, numels: list[int]) -> float:
        return _quantised_bits(numels, self.levels)


@register("sign")
class Sign(Obfuscation):
    """signSGD: every entry becomes +1 or -1 (times the tensor's mean |g| with scale="mean-abs").

    Zeros map to +1 (``g >= 0`` is sent as the positive sign bit, as in the ROG code), so the output is
    always in {-1, +1} (``scale="none"``) or {-a, +a} with ``a = mean|g|`` per tensor (``"mean-abs"``).

    Bit cost: 1 bit per entry, plus one 32-bit float per tensor for ``mean-abs``.
    """

    compresses = True

    def __init__(self, scale: str = "none"):
        self.scale = as_choice("scale", scale, ("none", "mean-abs"))

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        out = {}
        for k, t in tensors.items():
            s = torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))
            if self.scale == "mean-abs" and t.numel():
                s = s * t.abs().mean()
            out[k] = s
        return out

    def bits(self, numels: list[int]) -> float:
        per_tensor = FLOAT_BITS if self.scale == "mean-abs" else 0
        return float(sum(n + per_tensor for n in numels))
