"""Learning-rate schedules of the engine, by name (the engine option ``schedule``).

A schedule maps the engine options to a multiplier ``t -> factor`` of the base learning rate at iteration ``t``
(``torch.optim.lr_scheduler.LambdaLR``). Adding one is one registration.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from fedleak.registry import Registry

Schedule = Callable[[Any], Callable[[int], float]]
SCHEDULES: Registry[Schedule] = Registry("schedule")


@SCHEDULES.register("cosine", doc="cosine decay to final_lr_factor x lr over the iterations")
def cosine(cfg) -> Callable[[int], float]:
    T, f = cfg.iterations, cfg.final_lr_factor
    return lambda t: f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(t, T) / T))


@SCHEDULES.register("multistep", doc="x0.1 at 3/8, 5/8 and 7/8 of the iterations (Inverting Gradients)")
def multistep(cfg) -> Callable[[int], float]:
    T = cfg.iterations
    ms = [int(T * 3 / 8), int(T * 5 / 8), int(T * 7 / 8)]
    return lambda t: 0.1 ** sum(t >= m for m in ms)


@SCHEDULES.register("none", doc="constant learning rate")
def constant(cfg) -> Callable[[int], float]:
    return lambda t: 1.0
