"""Sparsification: top-k, random-k and DLG-style gradient pruning.

Every step here keeps an exact number of entries (ties are broken by ``torch.topk`` / the random
permutation, never by a threshold, so the count is exact) and zeroes the rest.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fedleak.client.obfuscations.base import ObfContext, Obfuscation, Tensors, register
from fedleak.client.obfuscations.basic import as_bool, as_choice, as_float, as_int, exactly_one, sparse_bits


def kept_count(n: int, sparsity: Optional[float], k: Optional[int]) -> int:
    """Entries kept out of ``n``: ``ceil((1 - sparsity) * n)`` (float noise below 1e-9 ignored), or ``min(k, n)``."""
    if n <= 0:
        return 0
    if k is not None:
        return min(k, n)
    x = (1.0 - sparsity) * n
    return min(n, max(1, math.ceil(x - 1e-9 * max(1.0, x))))


class _Sparsifier(Obfuscation):
    """Shared logic: choose positions (tensor-wise or over the whole update), zero the others."""

    compresses = True
    scope: str

    def _counts(self, numels: list[int]) -> list[int]:
        raise NotImplementedError

    def _select(self, flat: torch.Tensor, k: int, ctx: ObfContext) -> torch.Tensor:
        """Indices of the ``k`` entries of 1-D ``flat`` to keep."""
        raise NotImplementedError

    def _scale(self, kept: int, n: int) -> float:
        return 1.0

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        if self.scope == "global":
            names = list(tensors)
            flats = [tensors[k].reshape(-1) for k in names]
            if not flats:
                return {}
            dtype = torch.promote_types(flats[0].dtype, torch.float32)
            for f in flats[1:]:
                dtype = torch.promote_types(dtype, f.dtype)
            allv = torch.cat([f.to(dtype) for f in flats])
            (k,) = self._counts([allv.numel()])
            mask = torch.zeros(allv.numel(), dtype=torch.bool)
            mask[self._select(allv, k, ctx)] = True
            f = self._scale(k, allv.numel())
            out, start = {}, 0
            for name, flat in zip(names, flats):
                m = mask[start:start + flat.numel()].view(tensors[name].shape)
                start += flat.numel()
                t = tensors[name]
                out[name] = torch.where(m, t * f if f != 1.0 else t, torch.zeros_like(t))
            return out
        out = {}
        for name, t in tensors.items():
            (k,) = self._counts([t.numel()])
            flat = t.reshape(-1)
            mask = torch.zeros(flat.numel(), dtype=torch.bool)
            mask[self._select(flat, k, ctx)] = True
            f = self._scale(k, flat.numel())
            out[name] = torch.where(mask.view(t.shape), t * f if f != 1.0 else t, torch.zeros_like(t))
        return out

    def bits(self, numels: list[int]) -> float:
        if self.scope == "global":
            total = sum(numels)
            return float(sparse_bits(self._counts([total])[0], total))
        return float(sum(sparse_bits(k, n) for k, n in zip(self._counts(numels), numels)))


def _check_sparsity_k(sparsity, k):
    exactly_one(sparsity=sparsity, k=k)
    s = None if sparsity is None else as_float("sparsity", sparsity, lo=0.0, hi=1.0, hi_open=True)
    kk = None if k is None else as_int("k", k, lo=1)
    return s, kk


@register("topk")
class TopK(_Sparsifier):
    """Top-k sparsification: keep exactly the k largest-magnitude entries (per tensor or global).

    Give ``sparsity`` p in [0, 1) (keep ``k = ceil((1 - p) n)`` of the ``n`` entries of each tensor, or of the
    whole update with ``scope="global"``) or ``k`` directly (``min(k, n)`` kept). Deterministic.

    Bit cost: each kept value as a 32-bit float plus its position, coded as the cheaper of a list of
    ``ceil(log2 n)``-bit indices and an ``n``-bit bitmap (``n`` = tensor size, or update size for global).
    """

    def __init__(self, sparsity: Optional[float] = None, k: Optional[int] = None, scope: str = "tensor"):
        self.sparsity, self.k = _check_sparsity_k(sparsity, k)
        self.scope = as_choice("scope", scope, ("tensor", "global"))

    def _counts(self, numels):
        return [kept_count(n, self.sparsity, self.k) for n in numels]

    def _select(self, flat, k, ctx):
        return torch.topk(flat.abs(), k, sorted=False).indices


@register("randk")
class RandK(_Sparsifier):
    """Random-k sparsification: keep k uniformly random entries (per tensor or global), optionally rescaled.

    ``sparsity``/``k``/``scope`` as for ``topk``; positions come from ``torch.randperm`` on ``ctx.generator``.
    With ``rescale=True`` kept entries are multiplied by ``n / k`` so the output is unbiased.

    Bit cost: as ``topk`` (positions are sent, no shared-seed trick assumed).
    """

    def __init__(self, sparsity: Optional[float] = None, k: Optional[int] = None, scope: str = "tensor",
                 rescale: bool = False):
        self.sparsity, self.k = _check_sparsity_k(sparsity, k)
        self.scope = as_choice("scope", scope, ("tensor", "global"))
        self.rescale = as_bool("rescale", rescale)

    def _counts(self, numels):
        return [kept_count(n, self.sparsity, self.k) for n in numels]

    def _select(self, flat, k, ctx):
        return torch.randperm(flat.numel(), generator=ctx.generator)[:k]

    def _scale(self, kept, n):
        return n / kept if self.rescale and kept else 1.0


@register("prune")
class Prune(_Sparsifier):
    """Gradient pruning (DLG defence, Zhu et al. 2019): zero the `percent`% smallest magnitudes per tensor.

    ``percent`` is a percentage in [0, 100]: ``floor(percent / 100 * n)`` entries of each tensor are zeroed
    (exactly that many; ties broken by ``torch.topk``), the rest are kept unchanged.

    Bit cost: as ``topk`` with ``k = n - pruned`` per tensor.
    """

    scope = "tensor"

    def __init__(self, percent: float = 10.0):
        self.percent = as_float("percent", percent, lo=0.0, hi=100.0)

    def _counts(self, numels):
        return [n - min(n, math.floor(self.percent / 100.0 * n + 1e-9)) for n in numels]

    def _select(self, flat, k, ctx):
        return torch.topk(flat.abs(), k, sorted=False).indices
