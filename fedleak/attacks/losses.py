"""Gradient-matching losses, by name (the engine option ``loss``).

A loss combines the four sums that :class:`~fedleak.attacks.matching.Matcher` accumulates over the compared
coordinates of the simulated update ``g`` and the received one ``t``: ``dot = <g, t>``, ``gg = |g|^2``,
``tt = |t|^2`` and ``l2 = |g - t|^2``. A loss that needs only ``l2`` declares ``direct=True``: dense layers then
compute ``l2`` as the sum of squared differences (no cancellation between large terms) and skip ``dot``/``gg``.

Adding a loss is one registration::

    LOSSES.register("mine", doc="...")(MatchLoss(lambda dot, gg, tt, l2: ...))

A loss that is not a function of those sums declares ``coordinate(r, levels)``: the summed loss of one tensor and its
gradient, from its simulated entries and the received ones, both in units of the received tensor's quantisation
step (``qsgd-likelihood``); the matcher sums it over the compared tensors and divides by their number of entries. It
evaluates it on whole tensors, and on large factorised layers block by block, without forming their gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fedleak.registry import Registry

#: combine(dot, gg, tt, l2) -> scalar loss; ``tt`` is a float, the others 0-d tensors
Combine = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor], torch.Tensor]
#: coordinate(r, levels) -> (the summed loss of one tensor's entries, its gradient w.r.t. r): ``r`` holds the simulated
#: entries in units of the received tensor's quantisation step (float32, the function may overwrite it) and
#: ``levels`` the received entries in the same units
Coordinate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MatchLoss:
    combine: Combine
    direct: bool = False  # only ``l2`` is used: dense layers compute it directly
    coordinate: Optional[Coordinate] = None  # a per-entry loss, given the received tensor's quantisation step


LOSSES: Registry[MatchLoss] = Registry("loss")


def _l2(dot, gg, tt, l2):
    return l2


def _cosine(dot, gg, tt, l2):
    return 1.0 - dot / (gg.clamp_min(1e-30).sqrt() * max(tt, 1e-30) ** 0.5)


def _l2_relative(dot, gg, tt, l2):
    return l2 / max(tt, 1e-30)


#: the kernel's floor: a received level more than 1 - QSGD_FLOOR steps from the simulated value (impossible under
#: stochastic rounding) costs -log(QSGD_FLOOR) plus a linear continuation, so it still has a gradient
QSGD_FLOOR = 0.05


def qsgd_nll_steps(r: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood of the received QSGD ``levels`` (signed whole numbers of steps) given the simulated
    entries ``r`` in steps, summed, and its gradient with respect to ``r`` (``r`` is overwritten).

    Stochastic rounding sends ``r`` as the signed integer ``L`` with probability ``max(0, 1 - |L - r|)`` (a triangle
    kernel: ``floor(r) + 1`` with probability ``frac(r)``, ``floor(r)`` with ``1 - frac(r)``, any other level never),
    so the likelihood is exact for QSGD with a known step. Where ``1 - |L - r| < QSGD_FLOOR`` the cost continues
    linearly with the slope it has there.
    """
    diff = r.sub_(levels)
    sign = torch.sign(diff)
    d = diff.abs_()
    edge = 1.0 - QSGD_FLOOR
    past = (d - edge).clamp_min_(0).sum() if float(d.max()) > edge else 0.0  # rare: levels the kernel rules out
    kept = d.clamp_max_(edge).neg_().add_(1.0)  # 1 - |L - r|, at least QSGD_FLOOR
    return past / QSGD_FLOOR - _sum_log(kept), sign.div_(kept)


def _sum_log(x: torch.Tensor) -> torch.Tensor:
    """``log(x).sum()`` for a tensor of values in ``[QSGD_FLOOR, 1]``, with one logarithm per 8 entries: products of
    8 such values stay above ``QSGD_FLOOR ** 8``, a normal float32, and a logarithm costs several multiplications."""
    v = x.reshape(-1)
    if v.numel() % 8:
        return torch.log(v).sum()
    for _ in range(3):
        v = v[:v.numel() // 2] * v[v.numel() // 2:]
    return torch.log(v).sum()


def qsgd_nll(g: torch.Tensor, levels: torch.Tensor, step: float) -> torch.Tensor:
    """:func:`qsgd_nll_steps` of the simulated entries ``g`` for a received tensor quantised with ``step``."""
    return coordinate_loss(qsgd_nll_steps, g, levels, step)


def coordinate_loss(kernel: Coordinate, g: torch.Tensor, levels: torch.Tensor, step: float) -> torch.Tensor:
    """The summed per-entry loss ``kernel`` of ``g`` against the received ``levels``, differentiable in ``g``."""
    return _CoordinateLoss.apply(g, levels, step, kernel)


class _CoordinateLoss(torch.autograd.Function):
    """The loss and its gradient computed in one pass (few full-size temporaries: the loss runs on gradients of
    tens of millions of entries at every iteration)."""

    @staticmethod
    def forward(ctx, g, levels, step, kernel):
        loss, grad = kernel(g.float() / step, levels)
        ctx.save_for_backward(grad)
        ctx.step, ctx.dtype = step, g.dtype
        return loss

    @staticmethod
    def backward(ctx, out):
        (grad,) = ctx.saved_tensors
        return (grad * (out / ctx.step)).to(ctx.dtype), None, None, None


LOSSES.register("l2", doc="sum of squared differences (DLG, ROG)")(MatchLoss(_l2, direct=True))
LOSSES.register("cosine", doc="1 - cosine similarity over the whole update (Inverting Gradients)")(
    MatchLoss(_cosine))
LOSSES.register("l2-relative", doc="squared distance over the received update's squared norm |t|^2: free of the "
                "update's scale, so a prior's weight means the same for a FedAvg pseudo-gradient, a trained model "
                "or a noisy update")(MatchLoss(_l2_relative, direct=True))
LOSSES.register("qsgd-likelihood", doc="mean negative log-likelihood of the received QSGD levels under stochastic "
                "rounding of the simulated update (needs an update whose last obfuscation is qsgd)")(
    MatchLoss(_l2, direct=True, coordinate=qsgd_nll_steps))
