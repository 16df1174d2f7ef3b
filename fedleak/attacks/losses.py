"""Gradient-matching losses, by name (the engine option ``loss``).

A loss combines the four sums that :class:`~fedleak.attacks.matching.Matcher` accumulates over the compared
coordinates of the simulated update ``g`` and the received one ``t``: ``dot = <g, t>``, ``gg = |g|^2``,
``tt = |t|^2`` and ``l2 = |g - t|^2``. A loss that needs only ``l2`` declares ``direct=True``: dense layers then
compute ``l2`` as the sum of squared differences (no cancellation between large terms) and skip ``dot``/``gg``.

Adding a loss is one registration::

    LOSSES.register("mine", doc="...")(MatchLoss(lambda dot, gg, tt, l2: ...))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedleak.registry import Registry

#: combine(dot, gg, tt, l2) -> scalar loss; ``tt`` is a float, the others 0-d tensors
Combine = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MatchLoss:
    combine: Combine
    direct: bool = False  # only ``l2`` is used: dense layers compute it directly


LOSSES: Registry[MatchLoss] = Registry("loss")


def _l2(dot, gg, tt, l2):
    return l2


def _cosine(dot, gg, tt, l2):
    return 1.0 - dot / (gg.clamp_min(1e-30).sqrt() * max(tt, 1e-30) ** 0.5)


def _l2_relative(dot, gg, tt, l2):
    return l2 / max(tt, 1e-30)


LOSSES.register("l2", doc="sum of squared differences (DLG, ROG)")(MatchLoss(_l2, direct=True))
LOSSES.register("cosine", doc="1 - cosine similarity over the whole update (Inverting Gradients)")(
    MatchLoss(_cosine))
LOSSES.register("l2-relative", doc="squared distance over the received update's squared norm |t|^2: free of the "
                "update's scale, so a prior's weight means the same for a FedAvg pseudo-gradient, a trained model "
                "or a noisy update")(MatchLoss(_l2_relative, direct=True))
