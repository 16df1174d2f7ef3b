"""Differentiable simulation of the client's update for candidate images (the attacker's forward model).

* FedSGD: the batch gradient, with ``create_graph=True``.
* FedAvg: tau local SGD steps unrolled with ``torch.func.functional_call``; the pseudo-gradient
  ``(theta0 - theta_tau) / lr`` is the sum of the step gradients.

Large linear layers (``nn.Linear`` with at least ``big_threshold`` weights) never get a dense gradient:
their output gradients ``D`` and inputs ``H`` are captured and kept as factors (see ``matching.py``).
In FedAvg the updated weight ``W_t = W_0 - lr * sum_{s<t} D_s^T H_s`` is applied as a low-rank
correction ``z = h W_0^T - lr * (h H_<t^T) D_<t``, so no 33 M-weight copy is made per local step.

The model runs in train mode, as the client's does: BatchNorm normalises with the candidate batch's statistics.
Each simulated round starts from a copy of the sent buffers and updates that copy as the client updates its own
(one running-statistics update per local step); :attr:`ForwardModel.last_buffers` holds the copy after the last
simulated round, and the sent buffers are never changed.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedleak.attacks.matching import GradRep


class ForwardModel:
    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 big_threshold: int = 1 << 20, fast: bool = True, autocast: Optional[torch.dtype] = None):
        self.model = model
        # lower-precision simulation (CPU autocast, e.g. bfloat16): convolutions and matmuls of the forward and
        # backward pass run in that dtype; the gradients handed to the matcher are cast back to float32
        self.autocast = autocast
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = buffers
        self.last_buffers: dict[str, torch.Tensor] = {}
        large = {name: mod for name, mod in model.named_modules()
                 if isinstance(mod, nn.Linear) and mod.weight.numel() >= big_threshold}
        #: the weights of the linear layers with at least ``big_threshold`` entries, whether or not ``fast``
        self.large_names = tuple(f"{name}.weight" for name in large)
        #: those evaluated in factorised (Gram / low-rank) form: all of them with ``fast``, none without
        self.big: dict[str, nn.Linear] = {f"{n}.weight": m for n, m in large.items()} if fast else {}
        self.big_bias = {f"{n}.weight": f"{n}.bias" for n, m in large.items() if fast and m.bias is not None}
        self.small_names = [k for k in self.params if k not in self.big]
        self._mod2name = {id(m): k for k, m in self.big.items()}
        self._captures: list = []
        self._corrections: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self._hooks = [m.register_forward_hook(self._hook) for m in self.big.values()]

    def input_layer(self, image_shape: tuple[int, ...]) -> tuple[str, ...]:
        """The names of the parameters of the input layer: the first module with parameters of its own that an
        image of ``image_shape`` (C, H, W) passes through (found by running two blank images, on copies of the
        buffers, so no running statistic changes)."""
        found: list[tuple[str, nn.Module]] = []

        def hook(name: str):
            def first(mod, args):
                if not found and any(True for _ in mod.parameters(recurse=False)):
                    found.append((name, mod))
            return first

        hooks = [m.register_forward_pre_hook(hook(n)) for n, m in self.model.named_modules()]
        like = next(iter(self.params.values()))
        x = torch.zeros((2, *image_shape), dtype=like.dtype, device=like.device)
        try:
            with torch.no_grad():
                functional_call(self.model, (self.params, {k: v.clone() for k, v in self.buffers.items()}), (x,))
        finally:
            for h in hooks:
                h.remove()
        if not found:
            return ()
        prefix, mod = found[0]
        return tuple(f"{prefix}.{k}" if prefix else k for k, _ in mod.named_parameters(recurse=False))

    def close(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _hook(self, mod, inputs, out):
        name = self._mod2name[id(mod)]
        h = inputs[0]
        corr = self._corrections.get(name)
        if corr is not None:
            Hp, Dp, lr = corr
            h2 = h.reshape(-1, h.shape[-1])
            out = out - (lr * (h2 @ Hp.t()) @ Dp).reshape(out.shape)
        self._captures.append((name, h, out))
        return out

    def _grads(self, params, x, y, soft: bool, buffers: dict[str, torch.Tensor], skip: frozenset = frozenset()):
        """Loss gradients: dense for small params, (D, H) for big linear weights (``buffers`` updated in place);
        no gradient for the small params named in ``skip``."""
        self._captures = []
        ctx = (torch.autocast(x.device.type, dtype=self.autocast) if self.autocast is not None
               else contextlib.nullcontext())
        with ctx:
            out = functional_call(self.model, (params, buffers), (x,))
            if soft:
                loss = torch.sum(-F.softmax(y, -1) * F.log_softmax(out, -1), -1).mean()
            else:
                loss = F.cross_entropy(out, y)
            caps = self._captures
            self._captures = []
            names = [k for k in self.small_names if k not in skip]
            if not names and not caps:  # nothing else to differentiate: skipping all would leave no gradient
                names = list(self.small_names)
            small = [params[k] for k in names]
            zs = [z for _, _, z in caps]
            grads = torch.autograd.grad(loss, small + zs, create_graph=True)
        if self.autocast is not None:
            grads = tuple(g.float() for g in grads)
            caps = [(name, h.float(), z) for name, h, z in caps]
        dense = dict(zip(names, grads[: len(small)]))
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for (name, h, _), dz in zip(caps, grads[len(small):]):
            D = dz.reshape(-1, dz.shape[-1])
            H = h.reshape(-1, h.shape[-1])
            if name in factors:  # module applied twice: stack
                D0, H0 = factors[name]
                D, H = torch.cat([D0, D]), torch.cat([H0, H])
            factors[name] = (D, H)
            if name in self.big_bias:
                b = self.big_bias[name]
                dense[b] = dense[b] if b in dense else D.sum(0)
        return dense, factors

    def _leaf_params(self):
        p = dict(self.params)
        for k in self.small_names:
            p[k] = self.params[k].detach().requires_grad_(True)
        return p

    def _fresh_buffers(self) -> dict[str, torch.Tensor]:
        self.last_buffers = {k: v.clone() for k, v in self.buffers.items()}
        return self.last_buffers

    def fedsgd(self, x: torch.Tensor, y: torch.Tensor, soft: bool = False, skip: frozenset = frozenset()) -> GradRep:
        """The batch gradient; the small params named in ``skip`` are left out of it (not differentiated: a
        matcher that gives them weight 0 never reads them; on lenet at 128x128 the convolutions' gradients cost
        about 40 % of an iteration, benchmarks/layer_skip.py)."""
        dense, factors = self._grads(self._leaf_params(), x, y, soft, self._fresh_buffers(), skip)
        return GradRep(dense, factors)

    def fedavg(self, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int,
               local_batch_size: Optional[int] = None, soft: bool = False) -> GradRep:
        """Pseudo-gradient (theta0 - theta_tau) / lr of ``steps`` unrolled SGD steps."""
        from fedleak.client.protocols import minibatches

        p = self._leaf_params()
        buffers = self._fresh_buffers()
        acc: dict[str, torch.Tensor] = {}
        hist: dict[str, tuple[list, list]] = {k: ([], []) for k in self.big}
        self._corrections = {}
        try:
            for sl in minibatches(x.shape[0], local_batch_size, steps):
                dense, factors = self._grads(p, x[sl], y[sl], soft, buffers)
                for k, g in dense.items():
                    acc[k] = acc[k] + g if k in acc else g
                    if k in p and k not in self.big:
                        p[k] = p[k] - lr * g
                for k, (D, H) in factors.items():
                    hist[k][0].append(D)
                    hist[k][1].append(H)
                    self._corrections[k] = (torch.cat(hist[k][1]), torch.cat(hist[k][0]), lr)
        finally:
            self._corrections = {}
        factors = {k: (torch.cat(Ds), torch.cat(Hs)) for k, (Ds, Hs) in hist.items() if Ds}
        return GradRep(acc, factors)
