"""Differential privacy: update-level local DP (``ldp``) and example-level DP-SGD (``dpsgd``).

Conventions (both steps):

* Neighbouring relation: Opacus's add/remove-one. For ``dpsgd`` the record is one training example; for
  ``ldp`` the record is the client's whole update, and its neighbour is the empty (all-zero) update. With
  the update clipped to norm C the sensitivity is therefore C. (Under replace-one the sensitivity is 2C, and
  the reported epsilon holds for noise twice as large.)
* Gaussian noise std is ``noise_multiplier * C``. Accounting uses Opacus's RDP (default) or PRV accountant
  through :mod:`fedleak.privacy`; calibration from a target (epsilon, delta) uses Opacus's
  ``get_noise_multiplier`` and the reported epsilon is the accountant's value for the calibrated
  multiplier (<= the target).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fedleak.client.obfuscations.base import ObfContext, Obfuscation, Tensors, register
from fedleak.client.obfuscations.basic import CLIP_MARGIN, as_choice, as_float, as_int, clip_tensors, dense_bits, exactly_one
from fedleak.client.obfuscations.noise import gaussian_noise, laplace_noise


def _delta(v) -> float:
    return as_float("delta", v, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


@register("ldp")
class LDP(Obfuscation):
    """Update-level local DP: clip the whole update to norm max_norm, then add calibrated noise once.

    ``mechanism="gaussian"``: clip the global L2 norm to ``C = max_norm`` and add N(0, sigma^2) to every
    entry, with ``sigma = noise_multiplier * C``, or ``sigma`` given directly, or calibrated from
    (``epsilon``, ``delta``) with Opacus's ``get_noise_multiplier`` (sample rate 1, 1 step). ``privacy()``
    is the Opacus accountant's epsilon (``accountant``: rdp | prv) for one release at sample rate 1.

    ``mechanism="laplace"``: clip the global L1 norm to C and add Laplace(b) noise to every entry, with
    ``b = C / epsilon`` (pure epsilon-DP, delta = 0; ``delta`` and ``accountant`` are ignored), or
    ``b = noise_multiplier * C``, or ``b = sigma / sqrt(2)`` (so ``sigma`` is always the noise std);
    ``privacy()`` reports ``(C / b, 0)``.

    Sensitivity: add/remove of the whole update (neighbour = zero update), i.e. C; see module docstring.
    Bit cost: dense output, 32 bits per entry.
    """

    def __init__(self, max_norm: float = 1.0, noise_multiplier: Optional[float] = None,
                 sigma: Optional[float] = None, epsilon: Optional[float] = None, delta: float = 1e-5,
                 mechanism: str = "gaussian", accountant: str = "rdp"):
        self.max_norm = as_float("max_norm", max_norm, lo=0.0, lo_open=True)
        exactly_one(noise_multiplier=noise_multiplier, sigma=sigma, epsilon=epsilon)
        self.noise_multiplier = None if noise_multiplier is None else as_float(
            "noise_multiplier", noise_multiplier, lo=0.0, lo_open=True)
        self.sigma = None if sigma is None else as_float("sigma", sigma, lo=0.0, lo_open=True)
        self.epsilon = None if epsilon is None else as_float("epsilon", epsilon, lo=0.0, lo_open=True)
        self.delta = _delta(delta)
        self.mechanism = as_choice("mechanism", mechanism, ("gaussian", "laplace"))
        self.accountant = as_choice("accountant", accountant, ("rdp", "prv"))
        self._z: Optional[float] = None
        if self.epsilon is not None:
            self.effective_noise_multiplier()  # calibrate now: an unreachable budget fails at config time

    # -- noise scale -------------------------------------------------------------------------------------
    def effective_noise_multiplier(self) -> float:
        """Gaussian: z with sigma = z * C (calibrated from epsilon on first use). Laplace: b / C."""
        if self._z is None:
            C = self.max_norm
            if self.noise_multiplier is not None:
                self._z = self.noise_multiplier
            elif self.sigma is not None:
                self._z = self.sigma / C if self.mechanism == "gaussian" else self.sigma / math.sqrt(2.0) / C
            elif self.mechanism == "laplace":
                self._z = 1.0 / self.epsilon
            else:
                from fedleak.client.privacy import noise_multiplier_for

                self._z = noise_multiplier_for(self.epsilon, self.delta, 1.0, 1, self.accountant)
        return self._z

    def noise_std(self) -> float:
        """Standard deviation of the noise added to each entry."""
        scale = self.effective_noise_multiplier() * self.max_norm  # sigma (gaussian) or b (laplace)
        return scale if self.mechanism == "gaussian" else scale * math.sqrt(2.0)

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        scale = self.effective_noise_multiplier() * self.max_norm
        if self.mechanism == "gaussian":
            clipped = clip_tensors(tensors, self.max_norm, p=2)
            return {k: t + gaussian_noise(t, scale, ctx.generator) for k, t in clipped.items()}
        clipped = clip_tensors(tensors, self.max_norm, p=1)
        return {k: t + laplace_noise(t, scale, ctx.generator) for k, t in clipped.items()}

    def bits(self, numels: list[int]) -> float:
        return dense_bits(numels)

    def privacy(self, ctx: ObfContext) -> tuple[float, float]:
        z = self.effective_noise_multiplier()
        if self.mechanism == "laplace":
            return (1.0 / z, 0.0)
        from fedleak.client.privacy import epsilon

        return (epsilon(z, 1.0, 1, self.delta, self.accountant), self.delta)


@register("dpsgd")
class DPSGD(Obfuscation):
    """DP-SGD (Abadi et al. 2016): clip each example's gradient to max_grad_norm, sum, add Gaussian noise.

    Acts inside the client's gradient computation (``per_example = True``): ``aggregate`` gets per-example
    gradients ``name -> (B, *shape)``, scales each example so that its global L2 norm (over all tensors) is
    <= ``C = max_grad_norm``, sums them, adds N(0, (z C)^2) to every entry and divides by B. ``z`` is
    ``noise_multiplier`` or is calibrated from (``epsilon``, ``delta``) for the round's sampling rate and
    step count with Opacus's ``get_noise_multiplier``.

    ``privacy(ctx)``: Opacus accountant (``accountant``: rdp | prv) for ``ctx.local_steps`` steps at sampling
    rate ``q = batch_size / dataset_size`` (``dataset_size`` option, else ``ctx.dataset_size``, else the
    client's example count; capped at 1). Like Opacus, this assumes Poisson sampling of each batch; the
    simulated client actually cycles through its data, so for q < 1 the figure is the nominal DP-SGD
    guarantee. Neighbouring relation: add/remove one example (sensitivity C).

    Bit cost: none of its own (it produces the gradient; later steps decide the wire format).
    """

    per_example = True

    def __init__(self, max_grad_norm: float = 1.0, noise_multiplier: Optional[float] = None,
                 epsilon: Optional[float] = None, delta: float = 1e-5, accountant: str = "rdp",
                 dataset_size: Optional[int] = None):
        self.max_grad_norm = as_float("max_grad_norm", max_grad_norm, lo=0.0, lo_open=True)
        exactly_one(noise_multiplier=noise_multiplier, epsilon=epsilon)
        self.noise_multiplier = None if noise_multiplier is None else as_float(
            "noise_multiplier", noise_multiplier, lo=0.0)
        self.epsilon = None if epsilon is None else as_float("epsilon", epsilon, lo=0.0, lo_open=True)
        self.delta = _delta(delta)
        self.accountant = as_choice("accountant", accountant, ("rdp", "prv"))
        self.dataset_size = None if dataset_size is None else as_int("dataset_size", dataset_size, lo=1)
        self._calibrated: dict[tuple[float, int], float] = {}

    def sample_rate(self, ctx: ObfContext) -> float:
        n = self.dataset_size or ctx.dataset_size or ctx.num_examples
        return min(1.0, ctx.batch_size / max(1, n))

    def effective_noise_multiplier(self, ctx: ObfContext) -> float:
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        key = (self.sample_rate(ctx), max(1, ctx.local_steps))
        if key not in self._calibrated:
            from fedleak.client.privacy import noise_multiplier_for

            self._calibrated[key] = noise_multiplier_for(self.epsilon, self.delta, key[0], key[1], self.accountant)
        return self._calibrated[key]

    def clip_per_example(self, per_example_grads: Tensors) -> Tensors:
        """Each example's gradient scaled to global L2 norm <= C (unchanged when already within)."""
        names = list(per_example_grads)
        if not names:
            return {}
        B = per_example_grads[names[0]].shape[0]
        sq = sum(per_example_grads[k].double().reshape(B, -1).pow(2).sum(1) for k in names)
        norms = sq.sqrt()
        C = self.max_grad_norm
        factor = torch.where(norms > C, C / (norms * (1.0 + CLIP_MARGIN)), torch.ones_like(norms))
        out = {}
        for k in names:
            g = per_example_grads[k]
            out[k] = g * factor.to(g.dtype).view(B, *([1] * (g.dim() - 1)))
        return out

    def aggregate(self, per_example_grads: Tensors, ctx: ObfContext) -> Tensors:
        clipped = self.clip_per_example(per_example_grads)
        if not clipped:
            return {}
        B = next(iter(clipped.values())).shape[0]
        std = self.effective_noise_multiplier(ctx) * self.max_grad_norm
        out = {}
        for k, g in clipped.items():
            s = g.sum(0)
            out[k] = (s + gaussian_noise(s, std, ctx.generator)) / B
        return out

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        """Identity: DP-SGD's clipping and noise happen in :meth:`aggregate`, during the client's steps."""
        return dict(tensors)

    def privacy(self, ctx: ObfContext) -> tuple[float, float]:
        from fedleak.client.privacy import epsilon

        z = self.effective_noise_multiplier(ctx)
        return (epsilon(z, self.sample_rate(ctx), max(1, ctx.local_steps), self.delta, self.accountant), self.delta)
