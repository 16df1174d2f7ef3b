"""Gradient-matching losses, computed without materialising large linear-layer gradients.

The gradient of a linear layer ``z = h W^T`` over a batch is ``G = D^T H`` where ``D`` (N x out) stacks the
output gradients and ``H`` (N x in) the inputs. For the 33 M-weight fully connected layers of ``lenet`` and
``resnet18-rog`` at 128x128 we never form ``G``:

* ``||D^T H||^2 = sum((D D^T) * (H H^T))`` (N x N Gram matrices),
* ``<D^T H, T> = sum(D * (H T^T))`` (one matrix product with the target, like a forward pass),
* matching on a sparse support (top-k) gathers only the kept coordinates ``sum_n D[n, i] H[n, j]``.

A :class:`GradRep` holds the attacker's simulated update: dense tensors for ordinary parameters and
factor pairs ``(D, H)`` for large linear weights. :class:`Matcher` compares it with the received update.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from fedleak.attacks.losses import LOSSES, MatchLoss, coordinate_loss
from fedleak.errors import ConfigError


@dataclass
class GradRep:
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name -> (D, H)

    def materialise(self) -> dict[str, torch.Tensor]:
        out = dict(self.dense)
        for k, (d, h) in self.factors.items():
            out[k] = d.t() @ h
        return out


#: coordinates of a large factorised layer compared under sign matching
SIGN_SAMPLE = 1 << 20

#: obfuscation names whose output is sparse: match only the coordinates that were sent
SPARSIFIERS = {"topk", "randk", "prune"}
SIGNS = {"sign"}
DETERMINISTIC_QUANT = {"uniform"}


#: obfuscation names that quantise: the matcher is given the last step's settings when it is one of these
QUANTISERS = {"uniform", "qsgd"}


def quantiser_of(update) -> Optional[dict]:
    """The settings of ``update``'s last obfuscation step when it quantises (:data:`QUANTISERS`), filled in by
    :func:`quantiser_settings`, else None."""
    steps = update.obfuscation or []
    name = str(steps[-1].get("name", "")).lower() if steps else ""
    return quantiser_settings(steps[-1]) if name in QUANTISERS else None


def quantiser_settings(step: dict) -> dict:
    """A quantising obfuscation step with every setting as the obfuscation itself resolves it (its defaults for what
    the step leaves out, e.g. ``levels``), ``name`` in lower case."""
    from fedleak.client.obfuscations import build_pipeline

    return build_pipeline([{**step, "name": str(step["name"]).lower()}]).describe()[0]


#: values of the engine option ``aware`` (also accepted: true/on = auto, false/off/plain = none)
AWARE_CHOICES = ("auto", "none", "mask", "sign", "quant")


def matching_mode(obfuscation: list[dict], aware: str | bool) -> str:
    """Pick how to compare, from the declared obfuscation pipeline: plain, mask, sign or quant."""
    if aware in (False, "none", "off", "plain"):
        return "plain"
    names = [str(s.get("name", "")).lower() for s in obfuscation or []]
    if aware in (True, "auto", "on"):
        if any(n in SIGNS for n in names):
            return "sign"
        if any(n in SPARSIFIERS for n in names):
            return "mask"
        if names and names[-1] in DETERMINISTIC_QUANT:
            return "quant"
        return "plain"
    if aware in ("mask", "sign", "quant"):
        return aware
    raise ConfigError(f"attack option aware={aware!r}; valid: {', '.join(AWARE_CHOICES)}")


class Matcher:
    """Matching loss between a simulated update (GradRep) and the received one.

    ``loss``: a :data:`~fedleak.attacks.losses.LOSSES` entry or its name (``l2``: sum of squared differences,
    DLG/ROG; ``cosine``: 1 - cosine similarity over the whole update, Inverting Gradients). ``weights``:
    per-parameter weights (default 1). Sign matching always uses the l1 sign agreement, whatever the loss.
    """

    def __init__(self, target: dict[str, torch.Tensor], loss: str | MatchLoss = "l2", mode: str = "plain",
                 weights: Optional[dict[str, float]] = None, factor_names: tuple[str, ...] = (),
                 quantiser: Optional[dict] = None):
        self.loss = loss if isinstance(loss, MatchLoss) else LOSSES.get(loss)
        self.mode = mode
        self.weights = weights or {}
        #: the parameters this matcher never reads (weight 0): the simulation need not differentiate them
        self.ignored = frozenset(k for k, w in self.weights.items() if w == 0)
        #: the update's last obfuscation step when it quantises (uniform, qsgd), every setting filled in: as
        #: :func:`quantiser_of` / :func:`quantiser_settings` give it (resolved once, by the caller)
        self.quantiser = quantiser
        self.quant_levels = int(self.quantiser["levels"]) if quantiser and mode == "quant" else None
        self.target = {k: v.detach() for k, v in target.items()}
        self.tnorm2 = {k: float((v.double() ** 2).sum()) for k, v in self.target.items()}
        self.steps = qsgd_steps(self.target, self.quantiser) if self.loss.coordinate else {}
        #: the received entries in whole steps, for a per-entry loss (computed once, not at every iteration)
        self.levels = {k: torch.round(self.target[k].float() / step) for k, step in self.steps.items()}
        self.entries = sum(t.numel() for t in self.target.values())
        self.masks: dict[str, torch.Tensor] = {}
        self.support: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if mode == "mask":
            for k, t in self.target.items():
                m = t != 0
                if k in factor_names and t.dim() == 2 and int(m.sum()) * 64 < t.numel():
                    rows, cols = m.nonzero(as_tuple=True)
                    self.support[k] = (rows, cols, t[rows, cols])
                else:
                    self.masks[k] = m.to(t.dtype)
        if mode == "sign":
            self.target_sign = {k: torch.sign(t) for k, t in self.target.items()}
            # large factorised layers: compare signs on a fixed random subset of coordinates instead of
            # materialising the whole gradient (1 M of 33 M coordinates still pin the layer down)
            self.sign_support: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
            gen = torch.Generator().manual_seed(0)
            for k in factor_names:
                t = self.target.get(k)
                if t is not None and t.dim() == 2 and t.numel() > 2 * SIGN_SAMPLE:
                    idx = torch.randperm(t.numel(), generator=gen)[:SIGN_SAMPLE].sort().values
                    rows, cols = idx // t.shape[1], idx % t.shape[1]
                    self.sign_support[k] = (rows, cols, self.target_sign[k][rows, cols])

    def __call__(self, rep: GradRep) -> torch.Tensor:
        return self._total(self._terms(rep))

    def losses(self, rep: GradRep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and, from the same terms, the loss of each compared parameter on its own (its weight
        applied), keyed by parameter name."""
        terms = self._terms(rep)
        return self._total(terms), {k: self._combine(*t) for k, t in terms.items()}

    def _total(self, terms: dict[str, tuple]) -> torch.Tensor:
        dt = next(iter(self.target.values())).dtype
        sums = [torch.zeros((), dtype=dt), torch.zeros((), dtype=dt), 0.0, torch.zeros((), dtype=dt)]
        for t in terms.values():
            sums = [acc + v for acc, v in zip(sums, t)]
        return self._combine(*sums)

    def _combine(self, dot, gg, tt, l2) -> torch.Tensor:
        return l2 if self.mode == "sign" else self.loss.combine(dot, gg, tt, l2)

    def _terms(self, rep: GradRep) -> dict[str, tuple]:
        """Parameter name -> its weighted (dot, |g|^2, |t|^2, squared distance); weight-0 parameters left out."""
        out = {}
        for k, g in rep.dense.items():
            w = self.weights.get(k, 1.0)
            if w != 0:
                out[k] = tuple(w * v for v in self._dense_terms(k, g))
        for k, (D, H) in rep.factors.items():
            w = self.weights.get(k, 1.0)
            if w != 0:
                out[k] = tuple(w * v for v in self._factor_terms(k, D, H))
        return out

    # each term returns (dot, |g|^2, |t|^2, squared-distance) restricted to what is compared
    def _dense_terms(self, k, g):
        t = self.target[k]
        if self.mode == "sign":
            # l1 sign agreement: 1 - sum(sign(t) * g) / sum|g| = 2 x (fraction of |g| mass with the wrong sign).
            # Zero exactly when every coordinate agrees in sign, which is all a sign-compressed update says;
            # invariant to the scale of g. Coordinates sent as +1 for a zero gradient cost nothing at g = 0.
            d = 1.0 - (self.target_sign[k] * g).sum() / g.abs().sum().clamp_min(1e-30)
            return d * 0, d * 0, 0.0, d
        if self.loss.coordinate:
            return self._coordinate_terms(k, g, lambda: coordinate_loss(self.loss.coordinate, g, self.levels[k],
                                                                       self.steps[k]))
        if self.mode == "quant" and self.quant_levels:
            g = _ste_uniform(g, self.quant_levels)
        if k in self.masks:
            g = g * self.masks[k]
        if self.loss.direct:  # direct difference: no cancellation between large terms
            z = g.new_zeros(())
            return z, z, self.tnorm2[k], ((g - t) ** 2).sum()
        dot = (g * t).sum()
        gg = (g * g).sum()
        return dot, gg, self.tnorm2[k], gg - 2 * dot + self.tnorm2[k]

    def _coordinate_terms(self, k, like, summed):
        """The terms of a per-entry loss: ``summed()`` over the entries of ``k`` divided by the number of compared
        entries; nothing for an all-zero received tensor, which says nothing about its entries."""
        z = like.new_zeros(())
        return z, z, self.tnorm2[k], summed() / self.entries if k in self.steps else z

    def _factor_terms(self, k, D, H):
        t = self.target[k]
        if self.mode == "sign" and k in self.sign_support:
            rows, cols, sgn = self.sign_support[k]
            g = (D[:, rows] * H[:, cols]).sum(0)
            d = 1.0 - (sgn * g).sum() / g.abs().sum().clamp_min(1e-30)
            return d * 0, d * 0, 0.0, d
        if self.loss.coordinate:  # evaluated block by block on D^T H, never formed
            return self._coordinate_terms(k, D, lambda: _FactoredCoordinateLoss.apply(
                D, H, self.levels[k], self.steps[k], self.loss.coordinate))
        if self.mode in ("sign", "quant") or k in self.masks:
            return self._dense_terms(k, D.t() @ H)
        if k in self.support:
            rows, cols, vals = self.support[k]
            g = (D[:, rows] * H[:, cols]).sum(0)
            dot = (g * vals).sum()
            gg = (g * g).sum()
            return dot, gg, self.tnorm2[k], gg - 2 * dot + self.tnorm2[k]
        gg = ((D @ D.t()) * (H @ H.t())).sum()
        dot = (D * (H @ t.t())).sum()
        return dot, gg, self.tnorm2[k], gg - 2 * dot + self.tnorm2[k]


#: entries of ``D^T H`` formed at a time by :class:`_FactoredCoordinateLoss` (a block of whole columns, about 1 MB
#: of float32: it stays in cache through the loss's passes)
FACTOR_BLOCK_ENTRIES = 1 << 18


class _FactoredCoordinateLoss(torch.autograd.Function):
    """A per-entry loss (:attr:`MatchLoss.coordinate`) of the factorised matrix ``D^T H`` against received ``levels``
    (out x in), exact, with its gradients: ``D^T H`` is formed a block of columns at a time, and each block's loss
    gradient ``E`` is folded back at once (``dH = D E``, written once per block; ``dD^T += E H^T``, a small
    out x batch accumulator), so no full-size tensor is kept. Columns rather than rows: a block of rows would add
    into the whole batch x in ``dH`` once per block, which costs a third more at batch 16 (benchmarks/qsgd_likelihood.py)."""

    @staticmethod
    def forward(ctx, D, H, levels, step, kernel):
        Ds, Hf = D.float() / step, H.float()  # in steps: D^T H / step
        DsT = Ds.t().contiguous()
        cols = max(1, FACTOR_BLOCK_ENTRIES // DsT.shape[0])
        loss = torch.zeros((), dtype=torch.float64, device=Ds.device)
        dDT, dH = torch.zeros_like(DsT), torch.empty_like(Hf)
        with torch.autocast(Ds.device.type, enabled=False):  # the loss is exact: float32 whatever the precision
            for s in range(0, Hf.shape[1], cols):
                h = Hf[:, s:s + cols]
                part, grad = kernel(DsT @ h, levels[:, s:s + cols])
                loss += part
                dH[:, s:s + cols] = Ds @ grad
                dDT.addmm_(grad, h.t())
        ctx.save_for_backward(dDT.t() / step, dH)
        ctx.dtypes = D.dtype, H.dtype
        return loss.to(torch.float32)

    @staticmethod
    def backward(ctx, out):
        dD, dH = ctx.saved_tensors
        return (dD * out).to(ctx.dtypes[0]), (dH * out).to(ctx.dtypes[1]), None, None, None


def qsgd_steps(target: dict[str, torch.Tensor], quantiser: Optional[dict]) -> dict[str, float]:
    """The quantisation step ``N / (levels - 1)`` of each received QSGD tensor, read off the tensor itself
    (``norm: max``: its largest entry is ``N``; ``norm: l2``: its smallest nonzero magnitude, one step); an
    all-zero tensor has none. ``quantiser`` is the update's last obfuscation step (:func:`quantiser_settings`),
    which must be ``qsgd``."""
    if not quantiser or quantiser["name"] != "qsgd":
        got = quantiser.get("name") if quantiser else "none"
        raise ConfigError(f"loss qsgd-likelihood needs an update whose last obfuscation is qsgd (this one: {got}); "
                          "use l2 or l2-relative for other updates")
    q = int(quantiser["levels"]) - 1
    steps = {}
    for k, t in target.items():
        a = t.detach().abs().double()
        if t.numel() and float(a.max()) > 0:
            steps[k] = float(a.max()) / q if quantiser["norm"] == "max" else float(a[a > 0].min())
    return steps


class _STEUniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, levels):
        from fedleak.client.obfuscations.quantization import quantize_uniform

        # `levels` counts zero: grid {0, 1/(s-1), ..., 1} x max|g|, exactly the `uniform` obfuscation's rounding
        return quantize_uniform(g, max(2, levels))

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _ste_uniform(g, levels):
    """Deterministic uniform quantisation in the forward pass, identity gradient (straight-through)."""
    return _STEUniform.apply(g, levels)
