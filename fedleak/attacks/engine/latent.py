"""Parameterisations of the unknown images, by name (the engine option ``param``), and the optimised latent.

A :class:`Parameterisation` says which tensor is optimised for images of a given shape and how it becomes the
images: ``pixels`` (full resolution) or ``lowres`` (a latent ``scale`` times smaller per side, upsampled
bicubically: ROG). The ``mapping`` (``box``: projected to [0, 1] after each step; ``sigmoid``; ``none``) and the
``init`` (``uniform``, ``randn``, ``gray``) apply to every parameterisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from fedleak.errors import ConfigError
from fedleak.registry import Registry


@dataclass(frozen=True)
class Parameterisation:
    #: (cfg, image shape (B, C, H, W)) -> latent shape; raises ConfigError if the images do not fit
    latent_shape: Callable[[Any, tuple[int, ...]], tuple[int, ...]]
    #: (cfg, latent after the mapping, image size (H, W)) -> images
    decode: Callable[[Any, torch.Tensor, tuple[int, int]], torch.Tensor]


PARAMETERISATIONS: Registry[Parameterisation] = Registry("parameterisation")


def _lowres_shape(cfg, shape):
    b, c, h, w = shape
    if h % cfg.scale or w % cfg.scale:
        raise ConfigError(f"image size {h}x{w} is not divisible by attack scale {cfg.scale}")
    return (b, c, h // cfg.scale, w // cfg.scale)


def _lowres_decode(cfg, z, size):
    if cfg.scale > 1:
        return F.interpolate(z, size=size, mode="bicubic", align_corners=False)
    return z


PARAMETERISATIONS.register("pixels", doc="full-resolution pixels")(
    Parameterisation(lambda cfg, shape: tuple(shape), lambda cfg, z, size: z))
PARAMETERISATIONS.register("lowres", doc="a scale x smaller latent, bicubically upsampled (ROG)")(
    Parameterisation(_lowres_shape, _lowres_decode))


class Latent:
    """The optimised variable and its map to images in [0, 1]."""

    def __init__(self, cfg, shape: tuple[int, ...], generator: torch.Generator,
                 dtype: torch.dtype = torch.float32, param: Parameterisation | None = None):
        self.cfg = cfg
        self.size = tuple(shape[-2:])
        self.param = param if param is not None else PARAMETERISATIONS.get(cfg.param)
        lshape = self.param.latent_shape(cfg, tuple(shape))
        if cfg.init == "uniform":
            z = torch.rand(lshape, generator=generator)
        elif cfg.init == "randn":
            z = torch.randn(lshape, generator=generator)
            if cfg.mapping == "box":
                z = (0.5 + 0.25 * z).clamp(0, 1)
        else:
            z = torch.full(lshape, 0.5)
        if cfg.mapping == "sigmoid" and cfg.init != "randn":
            z = torch.logit(z.clamp(1e-3, 1 - 1e-3))
        self.z = z.to(dtype).requires_grad_(True)

    def images(self) -> torch.Tensor:
        z = self.z
        if self.cfg.mapping == "sigmoid":
            z = torch.sigmoid(z)
        return self.param.decode(self.cfg, z, self.size)

    @torch.no_grad()
    def project(self):
        if self.cfg.mapping == "box":
            self.z.clamp_(0, 1)
