"""Image priors added to the matching loss, by name (engine options ``tv`` and ``priors``).

A prior maps the current images ``x`` (B, C, H, W) to a scalar penalty. One that declares ``side_scaled=True``
has its weight multiplied by (image side / ``tv_size``) when ``tv_size`` is set: the mean pixel difference of a
natural image shrinks with resolution, so one weight then suits 32x32 and 128x128.

Adding a prior is one registration::

    PRIORS.register("mine", doc="...")(Prior(lambda x: ...))

and it is used with the engine option ``priors: {mine: 0.1}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedleak.registry import Registry


@dataclass(frozen=True)
class Prior:
    penalty: Callable[[torch.Tensor], torch.Tensor]
    side_scaled: bool = False  # weight x (image side / tv_size) when tv_size is set


PRIORS: Registry[Prior] = Registry("prior")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of horizontal plus vertical neighbours."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


PRIORS.register("tv", doc="total variation (Inverting Gradients); weight scaled by side / tv_size")(
    Prior(total_variation, side_scaled=True))
