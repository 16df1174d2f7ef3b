"""Victim models, selected by name from one registry.

``build_model(name, num_classes=..., image_size=..., width=..., activation=..., seed=...)`` returns a freshly
initialised ``nn.Module`` whose random initialisation is fully determined by ``seed``.
"""
from __future__ import annotations

import importlib
import inspect
import sys

import torch
from torch import nn

from fedleak.client.models.base import ACTIVATIONS, MODELS, activation  # noqa: F401  (public names)
from fedleak.errors import ConfigError


def model_kwargs(model_cfg, image_size: int, default_seed: int = 0) -> dict:
    """The keyword arguments of :func:`build_model` for a validated ``model:`` config section (the one builder
    used by the case, the Flower audit and the memory guard). ``default_seed`` applies when the section sets none."""
    return dict(num_classes=model_cfg.num_classes, image_size=image_size, width=model_cfg.width,
                activation=model_cfg.activation,
                seed=model_cfg.seed if model_cfg.seed is not None else default_seed, **model_cfg.options)


def build_model(
    name: str,
    *,
    num_classes: int = 1000,
    image_size: int = 32,
    channels: int = 3,
    width: float = 1.0,
    activation: str = "relu",
    seed: int = 0,
    **kwargs,
) -> nn.Module:
    """Build a registered model (or ``import:pkg.module:Class``) with a seeded initialisation."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model.num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(image_size, int) or image_size < 4:
        raise ConfigError(f"image size must be an integer >= 4, got {image_size!r}")
    if not (isinstance(width, (int, float)) and width > 0):
        raise ConfigError(f"model.width must be > 0, got {width!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(name, str) and name.startswith("import:"):
            model = _import_model(name[len("import:"):], num_classes=num_classes, image_size=image_size, **kwargs)
        else:
            model = MODELS.build(
                name,
                num_classes=num_classes,
                image_size=image_size,
                channels=channels,
                width=width,
                activation=activation,
                **kwargs,
            )
    return model


def _accepted_kwargs(factory, kwargs: dict) -> dict:
    """The keyword arguments that ``factory`` declares (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def _import_model(path: str, **kwargs) -> nn.Module:
    """``pkg.module:Factory`` — the factory gets ``num_classes``, ``image_size`` and extra model kwargs."""
    mod_name, _, attr = path.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"user model must look like 'import:package.module:Factory', got {path!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"cannot import user model module {mod_name!r}: {e}") from e
    if not hasattr(mod, attr):
        raise ConfigError(f"module {mod_name!r} has no attribute {attr!r}")
    factory = getattr(mod, attr)
    if inspect.isfunction(factory) and str(factory.__module__).partition(".")[0] in sys.stdlib_module_names:
        raise ConfigError(f"user model {path!r} is a standard-library function ({factory.__module__}."
                          f"{factory.__qualname__}), not a model factory; name an nn.Module subclass or your factory")
    if not ((inspect.isclass(factory) and issubclass(factory, nn.Module)) or inspect.isfunction(factory)):
        raise ConfigError(f"user model {path!r} must name an nn.Module subclass or a Python factory function, "
                          f"got {type(factory).__name__}")
    try:
        model = factory(**_accepted_kwargs(factory, kwargs))
    except Exception as e:  # the user's code: any failure is one line, not a traceback
        raise ConfigError(f"user model {path!r} failed to build: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"user model factory {path!r} returned {type(model).__name__}, not an nn.Module")
    return model


from fedleak.client.models import lenet, resnet, convnet  # noqa: E402,F401  (registration side effects)
