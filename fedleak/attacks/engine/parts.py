"""The one place where the engine's named options become objects, through their registries.

``loss`` -> :data:`~fedleak.attacks.losses.LOSSES`, ``tv``/``priors`` -> :data:`~fedleak.attacks.priors.PRIORS`,
``param`` -> :data:`~fedleak.attacks.engine.latent.PARAMETERISATIONS`, ``schedule`` ->
:data:`~fedleak.attacks.schedules.SCHEDULES`. A new loss, prior, parameterisation or schedule is one registration
in its module; nothing here or in the loop changes.
"""
from __future__ import annotations

import math

from dataclasses import dataclass

from fedleak.attacks.engine.latent import PARAMETERISATIONS, Parameterisation
from fedleak.attacks.losses import LOSSES, MatchLoss
from fedleak.attacks.priors import PRIORS, Prior
from fedleak.attacks.schedules import SCHEDULES, Schedule


@dataclass(frozen=True)
class Parts:
    loss: MatchLoss
    priors: tuple[tuple[str, float, Prior], ...]  # (name, configured weight, prior), in configured order
    param: Parameterisation
    schedule: Schedule

    def prior_terms(self, cfg, side: int, batch: int) -> list[tuple[float, Prior]]:
        """(effective weight, prior): side-scaled priors are weighted x side / tv_size when tv_size is set, and
        every prior x sqrt(batch / tv_batch) when tv_batch is set (at most x 1 with tv_batch_cap, at least x 1 with
        tv_batch_floor)."""
        per_batch = math.sqrt(batch / cfg.tv_batch) if cfg.tv_batch else 1.0
        per_batch = min(per_batch, 1.0) if cfg.tv_batch_cap else per_batch
        per_batch = max(per_batch, 1.0) if cfg.tv_batch_floor else per_batch
        return [(w * per_batch * (side / cfg.tv_size if cfg.tv_size and p.side_scaled else 1.0), p)
                for _, w, p in self.priors]


def resolve_parts(cfg) -> Parts:
    return Parts(
        loss=LOSSES.get(cfg.loss),
        priors=tuple((name, w, PRIORS.get(name)) for name, w in cfg.prior_weights().items()),
        param=PARAMETERISATIONS.get(cfg.param),
        schedule=SCHEDULES.get(cfg.schedule),
    )
