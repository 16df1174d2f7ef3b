"""Parameterisations of the unknown images, by name (the engine option ``param``), and the optimised latent.

A :class:`Parameterisation` says which tensor is optimised for images of a given shape and how it becomes the
images: ``pixels`` (full resolution) or ``lowres`` (a latent ``scale`` times smaller per side, upsampled
bicubically: ROG). The ``mapping`` (``box``: projected to [0, 1] after each step; ``sigmoid``; ``none``) and the
``init`` (``uniform``, ``randn``, ``gray``, or ``previous``: the given images, e.g. the result of the previous
stage of a multi-stage attack, encoded by the parameterisation) apply to every parameterisation.
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
    #: (cfg, images (B, C, H, W) in [0, 1], latent shape) -> the latent whose decoding is close to the images
    encode: Callable[[Any, torch.Tensor, tuple[int, ...]], torch.Tensor]


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


def _lowres_encode(cfg, images, lshape):
    return F.interpolate(images, size=tuple(lshape[-2:]), mode="area") if cfg.scale > 1 else images


def _resize_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images of another resolution (a previous stage's) brought to ``size`` bicubically."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


PARAMETERISATIONS.register("pixels", doc="full-resolution pixels")(
    Parameterisation(lambda cfg, shape: tuple(shape), lambda cfg, z, size: z, lambda cfg, x, lshape: x))
PARAMETERISATIONS.register("lowres", doc="a scale x smaller latent, bicubically upsampled (ROG)")(
    Parameterisation(_lowres_shape, _lowres_decode, _lowres_encode))


class Latent:
    """The optimised variable and its map to images in [0, 1]."""

    def __init__(self, cfg, shape: tuple[int, ...], generator: torch.Generator,
                 dtype: torch.dtype = torch.float32, param: Parameterisation | None = None,
                 start: torch.Tensor | None = None):
        """``start``: the images of ``init: previous`` (any resolution; resized to ``shape`` first)."""
        self.cfg = cfg
        self.size = tuple(shape[-2:])
        self.param = param if param is not None else PARAMETERISATIONS.get(cfg.param)
        lshape = self.param.latent_shape(cfg, tuple(shape))
        if cfg.init == "previous":
            if start is None:
                raise ConfigError("init: previous needs the images of a previous stage (a multi-stage attack)")
            x = _resize_to(start.detach().float().clamp(0, 1), self.size)
            z = self.param.encode(cfg, x, lshape).reshape(lshape).clone()
        elif cfg.init == "uniform":
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
