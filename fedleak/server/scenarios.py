"""Server scenarios: what the (possibly malicious) server does to the model before sending it.

A scenario is registered in :data:`SCENARIOS` with a typed options model. It is built from its validated
options and sees only a :class:`ServerContext` -- what a server has: the model it is about to send, its name
and keyword arguments, the declared input shape, the number of classes and access to public data. Never the
client's images or labels.

* ``scenario.send(ctx) -> SentModel``: the model it sends, how it rebuilds it (``model_factory``) and the
  server-side knowledge handed to attacks (``extra``, becomes ``ServerView.extra``); all of it may depend
  only on the context and the options.
* ``scenario.evaluate(ctx, sent, images, labels) -> dict``: evaluation bookkeeping that compares the sent
  model with the true batch (run after the attack, written to metrics.json; never given to an attack).

Registration of the scenarios themselves happens in :mod:`fedleak.server` (this module imports none of them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from fedleak.errors import ConfigError
from fedleak.options import NoOptions, Options
from fedleak.registry import Registry

SCENARIOS: Registry = Registry("server scenario")


@dataclass(frozen=True)
class ServerContext:
    """What the server has before a round: the model it would send (registered, initialised), its name and
    keyword arguments, the declared input shape and the number of classes. ``exclude_builtin``: the client's
    data are the ``builtin`` photos, so public data must leave them out."""

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    channels: int
    image_size: int
    num_classes: int
    exclude_builtin: bool = True

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def public_crops(self, count: int, seed: int = 0, public: str = "auto") -> torch.Tensor:
        """``count`` random public crops at the declared shape, (count, channels, size, size) in [0, 1]."""
        from fedleak.server.public import public_crops

        crops = public_crops(self.image_size, count, seed, public, self.exclude_builtin)
        if self.channels != 3:
            crops = crops.mean(1, keepdim=True).expand(-1, self.channels, -1, -1).contiguous()
        return crops


@dataclass
class SentModel:
    """What a scenario sends and knows: the model, an optional factory that rebuilds it (weights are loaded
    from the sent state afterwards) and server-side knowledge for the attacks."""

    model: nn.Module
    model_factory: Optional[Callable[[], nn.Module]] = None
    extra: dict[str, Any] = field(default_factory=dict)


class Scenario(Protocol):
    def send(self, ctx: ServerContext) -> SentModel: ...

    def evaluate(self, ctx: ServerContext, sent: SentModel, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, Any]: ...


@SCENARIOS.register("honest", doc="the server sends the model unchanged (honest-but-curious)", options=NoOptions)
class Honest:
    def __init__(self, options: Optional[NoOptions] = None):
        self.options = options or NoOptions()

    def send(self, ctx: ServerContext) -> SentModel:
        return SentModel(model=ctx.model)

    def evaluate(self, ctx: ServerContext, sent: SentModel, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, Any]:
        return {}


def _split(section: Any) -> tuple[str, dict]:
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError("server must be a mapping with a 'name'")
    return SCENARIOS.resolve(section["name"]), {k: v for k, v in section.items() if k != "name"}


def check_server_config(section: dict) -> Options:
    """Validate a ``server:`` config section; returns the scenario's typed options (one-line ConfigError)."""
    name, raw = _split(section)
    return SCENARIOS.options(name, raw)


def build_scenario(section: dict) -> Scenario:
    """The scenario of a ``server:`` section, built from its validated options."""
    name, raw = _split(section)
    return SCENARIOS.get(name)(SCENARIOS.options(name, raw))
