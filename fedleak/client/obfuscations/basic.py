"""Shared helpers for the obfuscation modules (argument checks, norms, bit counts) and the ``clip`` step.

The other steps live in :mod:`.quantization`, :mod:`.sparsification`, :mod:`.noise` and :mod:`.dp`.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from fedleak.client.obfuscations.base import ObfContext, Obfuscation, Tensors, register

#: bits of one uncompressed value (and of one side-channel scalar such as a per-tensor norm)
FLOAT_BITS = 32


# --------------------------------------------------------------------------------------------------------
# argument validation (ValueError with the option name and the offending value; the registry turns it into a
# ConfigError prefixed with the step's name)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def as_float(name: str, v: Any, *, lo: Optional[float] = None, hi: Optional[float] = None,
             lo_open: bool = False, hi_open: bool = False) -> float:
    """``v`` as a finite float within [lo, hi] (ends excluded when ``*_open``)."""
    if not _is_number(v):
        raise ValueError(f"{name} must be a number, got {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {v!r}")
    if hi is not None and (x > hi or (hi_open and x == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi:g}, got {v!r}")
    return x


def as_int(name: str, v: Any, *, lo: Optional[int] = None) -> int:
    """``v`` as an int >= lo (floats with an integral value are accepted, bools are not)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v!r}")
    return v


def as_choice(name: str, v: Any, choices: Sequence[str]) -> str:
    if not isinstance(v, str) or v.lower() not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v.lower()


def as_bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false, got {v!r}")
    return v


def exactly_one(**given: Any) -> str:
    """Name of the single option that is not None; ValueError if none or several are set."""
    set_ = [k for k, v in given.items() if v is not None]
    if len(set_) != 1:
        opts = ", ".join(given)
        got = f"got {', '.join(set_)}" if set_ else "got none"
        raise ValueError(f"give exactly one of {opts} ({got})")
    return set_[0]


# --------------------------------------------------------------------------------------------------------
# numerics


def global_norm(tensors: Tensors, p: float = 2.0) -> torch.Tensor:
    """L_p norm (p = 1 or 2) of all tensors concatenated, in float64."""
    if p == 1:
        return sum((t.double().abs().sum() for t in tensors.values()), torch.zeros((), dtype=torch.float64))
    return torch.sqrt(sum(((t.double() ** 2).sum() for t in tensors.values()), torch.zeros((), dtype=torch.float64)))


#: relative safety margin so that rounding never leaves a clipped update above the bound
CLIP_MARGIN = 1e-6


def clip_factor(norm: float, max_norm: float) -> float:
    """Scale factor that brings ``norm`` to at most ``max_norm`` (1.0 when it already is)."""
    if norm <= max_norm:
        return 1.0
    return max_norm / (norm * (1.0 + CLIP_MARGIN))


def clip_tensors(tensors: Tensors, max_norm: float, p: float = 2.0) -> Tensors:
    f = clip_factor(global_norm(tensors, p).item(), max_norm)
    if f == 1.0:
        return dict(tensors)
    return {k: t * f for k, t in tensors.items()}


def index_bits(n: int) -> int:
    """Bits of one position index into ``n`` entries."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 0


def sparse_bits(kept: int, n: int) -> float:
    """Wire cost of ``kept`` float32 values out of ``n`` positions: values + the cheaper of a list of
    ``ceil(log2 n)``-bit indices and an ``n``-bit bitmap."""
    return FLOAT_BITS * kept + min(kept * index_bits(n), n)


def dense_bits(numels: list[int]) -> float:
    return float(FLOAT_BITS * sum(numels))


# --------------------------------------------------------------------------------------------------------


@register("clip")
class Clip(Obfuscation):
    """Clip the whole update to global L2 norm <= max_norm (no noise).

    The update is scaled by ``max_norm / norm`` when its norm (all tensors concatenated) exceeds
    ``max_norm`` (with a 1e-6 relative margin so float rounding never overshoots) and is left bit-for-bit
    unchanged otherwise. Bit cost: none of its own (``bits`` returns None, the previous cost stands).
    """

    def __init__(self, max_norm: float = 1.0):
        self.max_norm = as_float("max_norm", max_norm, lo=0, lo_open=True)

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        return clip_tensors(tensors, self.max_norm)
