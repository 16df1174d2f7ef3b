"""What the server knows: :class:`ServerView`. Built from the model the server sent and the declared data shape,
never from the client's data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ServerView:
    """Everything the attacker (the server) legitimately has: the model it sent, the data shape, the
    protocol, the declared obfuscation and any shared labels. Never the client's images."""

    model_name: str
    model_kwargs: dict[str, Any]
    global_state: dict[str, torch.Tensor]
    image_size: int
    channels: int
    num_classes: int
    batch_size: int
    model_factory: Any = None  # optional callable returning an nn.Module (for malicious/custom models)
    extra: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        if self.model_factory is not None:
            model = self.model_factory()
        else:
            from fedleak.client.models import build_model

            model = build_model(self.model_name, **self.model_kwargs)
        model.load_state_dict(self.global_state)
        return model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)
