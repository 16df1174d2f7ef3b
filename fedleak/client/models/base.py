"""The model registry and the activations the registered models take by name."""
from __future__ import annotations

from torch import nn

from fedleak.errors import ConfigError
from fedleak.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")

ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky-relu": lambda: nn.LeakyReLU(0.2),
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


def activation(name: str) -> nn.Module:
    key = str(name).lower().replace("_", "-")
    if key not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[key]()
