"""FL client protocols: FedSGD (one gradient) and FedAvg (tau local SGD steps), as pure functions of
(model, parameters, data). Per-example gradients for DP-SGD come from ``torch.func``.

The client trains as deployed: the model runs in train mode, so BatchNorm normalises with the statistics of
the batch and updates its running statistics. Those live in ``buffers``, which the protocols update in place
(pass a copy, as :func:`buffer_dict` makes): after :func:`fedavg` they hold the running statistics the client
uploads with its FedAvg update. A model without BatchNorm (or dropout) computes exactly what it did in eval mode.
"""
from __future__ import annotations

from typing import Callable, Optional

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fedleak.errors import ConfigError
from fedleak.client.obfuscations import ObfContext, Pipeline

Params = dict[str, torch.Tensor]


def param_dict(model: nn.Module) -> Params:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def buffer_dict(model: nn.Module) -> Params:
    return {k: v.detach().clone() for k, v in model.named_buffers()}


@contextlib.contextmanager
def train_mode(model: nn.Module):
    """Run ``model`` in train mode (as a deployed client does), restoring its previous mode afterwards."""
    was = model.training
    model.train()
    try:
        yield model
    finally:
        model.train(was)


def loss_fn(model: nn.Module, params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    try:
        out = functional_call(model, (params, buffers), (x,))
    except ValueError as e:  # torch's BatchNorm refuses a single value per channel in train mode
        if "more than 1 value per channel" not in str(e):
            raise
        raise ConfigError(f"BatchNorm in train mode needs more than one value per channel, but a batch of "
                          f"{x.shape[0]} {tuple(x.shape[2:])} image(s) leaves one ({e}); use a larger batch or "
                          f"image size, or a model without BatchNorm") from None
    return F.cross_entropy(out, y)


def batch_gradient(model, params, buffers, x, y, per_example_step=None, ctx: Optional[ObfContext] = None) -> Params:
    """Mean-loss gradient of the batch; with a DP-SGD step, per-example gradients are clipped and noised."""
    if per_example_step is None:
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with train_mode(model):
            loss = loss_fn(model, p, buffers, x, y)
        g = torch.autograd.grad(loss, list(p.values()))
        return {k: gi.detach() for k, gi in zip(p, g)}
    per_example = per_example_gradients(model, params, buffers, x, y)
    # the noise comes from the client's CPU generator: aggregate on the CPU, continue on the batch's device
    out = per_example_step.aggregate({k: v.cpu() for k, v in per_example.items()}, ctx)
    return {k: v.to(x.device) for k, v in out.items()}


def per_example_gradients(model, params, buffers, x, y) -> Params:
    """Gradients of each example's loss, shape (B, *param.shape), through ``torch.func.vmap(grad)``."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError("per-example gradients (DP-SGD) are undefined with BatchNorm; pick a model without it")

    def single(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    with train_mode(model):
        return vmap(grad(single), in_dims=(None, 0, 0))({k: v.detach() for k, v in params.items()}, x, y)


def fedsgd(model, params, buffers, x, y, pipeline: Pipeline, ctx: ObfContext) -> Params:
    return batch_gradient(model, params, buffers, x, y, pipeline.per_example, ctx)


def minibatches(n: int, local_batch_size: Optional[int], total_steps: int):
    """Index sets for each local step: mini-batches cycle through the data in order."""
    b = local_batch_size or n
    nb = -(-n // b)
    for t in range(total_steps):
        i = t % nb
        yield slice(i * b, min(n, (i + 1) * b))


def fedavg(model, params, buffers, x, y, pipeline: Pipeline, ctx: ObfContext, lr: float, local_steps: int,
           local_batch_size: Optional[int] = None, epochs: int = 1,
           on_step: Optional[Callable[[int], None]] = None) -> tuple[Params, Params]:
    """Run ``local_steps * epochs`` SGD steps; return (delta = theta0 - theta_tau, final params).

    ``buffers`` (BatchNorm running statistics) are updated in place, one update per local step."""
    p = {k: v.detach().clone() for k, v in params.items()}
    total = local_steps * epochs
    for t, sl in enumerate(minibatches(x.shape[0], local_batch_size, total)):
        g = batch_gradient(model, p, buffers, x[sl], y[sl], pipeline.per_example, ctx)
        p = {k: p[k] - lr * g[k] for k in p}
        if on_step:
            on_step(t)
    delta = {k: params[k].detach() - p[k] for k in p}
    return delta, p
