"""Gradient-matching losses, by name (the engine option ``loss``).

A loss combines the four sums that :class:`~fedleak.attacks.matching.Matcher` accumulates over the compared
coordinates of the simulated update ``g`` and the received one ``t``: ``dot = <g, t>``, ``gg = |g|^2``,
``tt = |t|^2`` and ``l2 = |g - t|^2``. A loss that needs only ``l2`` declares ``direct=True``: dense layers then
compute ``l2`` as the sum of squared differences (no cancellation between large terms) and skip ``dot``/``gg``.

Adding a loss is one registration::

    LOSSES.register("mine", doc="...")(MatchLoss(lambda dot, gg, tt, l2: ...))

A loss that is not a function of those sums declares ``coordinate(g, levels, step)``: the loss of one tensor from its
simulated entries, the received entries in units of the received tensor's quantisation step (whole numbers,
computed once by the matcher) and that step (``qsgd-likelihood``); the matcher then sums it over the compared
tensors and divides by their number of entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fedleak.registry import Registry

#: combine(dot, gg, tt, l2) -> scalar loss; ``tt`` is a float, the others 0-d tensors
Combine = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor], torch.Tensor]
#: coordinate(g, levels, step) -> the summed loss of one tensor's entries
Coordinate = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


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


def qsgd_nll(g: torch.Tensor, levels: torch.Tensor, step: float) -> torch.Tensor:
    """Negative log-likelihood of the received QSGD ``levels`` (signed whole numbers of ``step``) given the
    simulated entries ``g``.

    Stochastic rounding sends ``r = g / step`` as the signed integer ``L`` with probability
    ``max(0, 1 - |L - r|)`` (a triangle kernel: ``floor(r) + 1`` with probability ``frac(r)``, ``floor(r)`` with
    ``1 - frac(r)``, any other level never), so the likelihood is exact for QSGD with a known step. Where
    ``1 - |L - r| < QSGD_FLOOR`` the cost continues linearly with the slope it has there.
    """
    return _QSGDNLL.apply(g, levels, step)


class _QSGDNLL(torch.autograd.Function):
    """:func:`qsgd_nll` with its gradient computed in the same pass (few full-size temporaries: the loss runs on
    gradients of tens of millions of entries at every iteration)."""

    @staticmethod
    def forward(ctx, g, levels, step):
        diff = g.float() / step - levels
        d = diff.abs()
        edge = 1.0 - QSGD_FLOOR
        loss = (d - edge).clamp_min_(0).sum() / QSGD_FLOOR
        d = diff.abs().clamp_max_(edge)
        loss = loss - torch.log1p(-d).sum()
        grad = diff.sign_().div_(d.neg_().add_(1.0)).div_(step)  # d(-log(1 - d))/dg, the linear slope past the edge
        ctx.save_for_backward(grad)
        ctx.dtype = g.dtype
        return loss

    @staticmethod
    def backward(ctx, out):
        (grad,) = ctx.saved_tensors
        return (grad * out).to(ctx.dtype), None, None


LOSSES.register("l2", doc="sum of squared differences (DLG, ROG)")(MatchLoss(_l2, direct=True))
LOSSES.register("cosine", doc="1 - cosine similarity over the whole update (Inverting Gradients)")(
    MatchLoss(_cosine))
LOSSES.register("l2-relative", doc="squared distance over the received update's squared norm |t|^2: free of the "
                "update's scale, so a prior's weight means the same for a FedAvg pseudo-gradient, a trained model "
                "or a noisy update")(MatchLoss(_l2_relative, direct=True))
LOSSES.register("qsgd-likelihood", doc="mean negative log-likelihood of the received QSGD levels under stochastic "
                "rounding of the simulated update (needs an update whose last obfuscation is qsgd)")(
    MatchLoss(_l2, direct=True, coordinate=qsgd_nll))
