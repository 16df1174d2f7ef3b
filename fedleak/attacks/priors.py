"""Image priors added to the matching loss, by name (engine options ``tv`` and ``priors``).

A prior maps the current images ``x`` (B, C, H, W) to a scalar penalty. One that declares ``side_scaled=True``
has its weight multiplied by (image side / ``tv_size``) when ``tv_size`` is set: the mean pixel difference of a
natural image shrinks with resolution, so one weight then suits 32x32 and 128x128.

Adding a prior is one registration::

    PRIORS.register("mine", doc="...")(Prior(lambda x: ...))

and it is used with the engine option ``priors: {mine: 0.1}``. A prior that needs the model the server sent
(its architecture, weights and buffers; never the client's data) declares ``bind``: the engine calls
``bind(model, params, buffers)`` once per attack and adds the returned penalty of ``x``.

``bn-stats`` is such a prior: the GradInversion / DeepInversion feature-statistics match. At every BatchNorm
layer it compares the per-channel mean and variance of the reconstructed batch's input to that layer with the
layer's running statistics in the sent model, which the server knows because it sent them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.func import functional_call

from fedleak.errors import ConfigError
from fedleak.registry import Registry

Penalty = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Prior:
    penalty: Optional[Penalty] = None
    side_scaled: bool = False  # weight x (image side / tv_size) when tv_size is set
    #: a prior of the sent model: (model, params, buffers) -> penalty of the images (instead of ``penalty``)
    bind: Optional[Callable[[nn.Module, dict, dict], Penalty]] = None

    def for_model(self, model: nn.Module, params: dict, buffers: dict) -> Penalty:
        """The penalty for an attack on ``model`` (with the sent ``params`` and ``buffers``)."""
        return self.bind(model, params, buffers) if self.bind is not None else self.penalty


PRIORS: Registry[Prior] = Registry("prior")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of horizontal plus vertical neighbours."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


PRIORS.register("tv", doc="total variation (Inverting Gradients); weight scaled by side / tv_size")(
    Prior(total_variation, side_scaled=True))


class BatchNormStatistics:
    """Penalty: mean over the BatchNorm layers of ``||mu(x) - running_mean||_2 + ||var(x) - running_var||_2``.

    ``mu(x)`` and ``var(x)`` are the per-channel statistics of the layer's input for the candidate batch, computed
    as BatchNorm computes them in train mode (the variance with Bessel's correction, as in ``running_var``); the
    running statistics are those of the sent model, copied when the prior is bound. The forward pass runs the
    sent weights in train mode, as the client does, on copies of the buffers (the sent ones are never updated).
    """

    def __init__(self, model: nn.Module, params: dict, buffers: dict):
        self.model, self.params = model, params
        self.buffers = {k: v.detach().clone() for k, v in buffers.items()}
        self.layers = [(name, m) for name, m in model.named_modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not self.layers:
            raise ConfigError("prior bn-stats needs a model with BatchNorm layers that track running statistics "
                              "(e.g. resnet18, resnet18-cifar, convnet)")
        missing = [n for n, _ in self.layers if f"{n}.running_mean" not in self.buffers]
        if missing:
            raise ConfigError(f"prior bn-stats: the sent model has no running statistics for {missing[0]!r}")
        self.targets = [(self.buffers[f"{n}.running_mean"], self.buffers[f"{n}.running_var"]) for n, _ in self.layers]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The inputs of the BatchNorm layers for the batch ``x``, in model order."""
        feats: list[torch.Tensor] = []
        hooks = [m.register_forward_pre_hook(lambda mod, inp: feats.append(inp[0])) for _, m in self.layers]
        was = self.model.training
        try:
            self.model.train()
            scratch = {k: v.clone() for k, v in self.buffers.items()}
            functional_call(self.model, (self.params, scratch), (x.to(self.targets[0][0].dtype),))
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was)
        return feats

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for f, (rm, rv) in zip(self.features(x), self.targets):
            dims = [d for d in range(f.dim()) if d != 1]
            mu = f.mean(dims)
            var = f.var(dims, correction=1)
            total = total + torch.linalg.vector_norm(mu - rm) + torch.linalg.vector_norm(var - rv)
        return total / len(self.targets)


PRIORS.register("bn-stats", doc="GradInversion-style match of the batch's per-channel feature mean/variance at "
                "each BatchNorm layer to the sent model's running statistics")(Prior(bind=BatchNormStatistics))
