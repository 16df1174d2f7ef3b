"""Malicious server scenario ``malicious-imprint``: plant a small *inference structure* in any model.

The server wraps the registered model ``f`` (unchanged, its logits scaled by ``downstream_scale`` = s)
and adds, in parallel, one imprint layer (Fowl et al., "Robbing the Fed", 2021) read by a fixed readout::

    z      = x.flatten() - shift                     # fixed centring buffer (public mean image)
    h      = ReLU(W z + b)                           # W: (K + P, d), b: (K + P)  -- the structure
    logits = s * f(x) + R h                          # R: (classes, K + P), every column = gain * r

Each unit ``i`` reads one *characteristic* ``v = a . x`` of the image (mean brightness, a 2-D DCT
coefficient of the luminance, or the brightness of a centre "subject" region) against a threshold:
``W_i = eps * dir_i * a``, ``b_i = -eps * dir_i * t_i``, so it fires iff ``dir_i * (v - t_i) > 0``. Since
``a . shift = 0`` by construction, ``a . z = v``.

* **Bins.** ``bins`` = K units with thresholds at quantiles of ``v`` on public data (random crops of
  the photos bundled with scikit-image, never the evaluation images), mixed with a uniform grid over the
  attainable range (``uniform_mix``) for robustness. With ``two_sided`` the upper half of the thresholds
  fire for ``v > t`` and the lower half for ``v < t`` (both meet at the public median), so a sample sits
  in about K/4 rows instead of K/2 and the structure's gradient norm is smaller.
* **Nested rows.** For one family sorted outward, the rows' active sets are nested: the weight gradient of
  row i is ``sum_{n active in i} c_n z_n / B`` and its bias gradient ``sum c_n / B``, with the same
  ``c_n = gain * (r . p_n - r_{y_n})`` for every row (identical readout columns). Adjacent differences
  isolate one bin; a sample alone in its bin is read out exactly as ``z_n = dW / db``.
* **Probe units.** ``probes`` = P extra units whose threshold lies outside the attainable range of ``v``
  (e.g. brightness > 1): they can never fire, so their true gradient is exactly 0 and whatever the server
  receives there is pure noise (used by ``ldp-imprint`` to estimate the noise). They cost no clipping
  budget (zero gradient).
* **Concentrating the clipping budget.** (1) ``downstream_scale`` s multiplies the original logits: the
  argmax (the prediction) is unchanged, the softmax becomes near-uniform and every gradient of the original
  model shrinks by s; (2) the structure's pre-activations are scaled by a tiny ``eps`` so that its
  contribution to the logits is negligible while its weight/bias gradients (``delta * z`` and ``delta``)
  do not depend on ``eps``; (3) the readout R gets gradients ``(p - y) h^T`` of order eps, i.e. none;
  (4) the centring ``shift`` removes the common mean image from the rows (norm ~2x smaller, and the
  samples stacked in a row no longer add up coherently). With a balanced sign vector r and a near-uniform
  softmax, ``|c_n| ~ gain`` for every sample. The fraction of the squared gradient norm that lands in the
  structure is measured on a public batch at evaluation time (:func:`imprint_report`).

The scenario sees only the :class:`~fedleak.server.scenarios.ServerContext` (the model, the declared shape,
public data). ``ServerView.extra['imprint']`` is the layout the attacks read (parameter names, unit indices per
family, thresholds, probe units, the buffers holding ``a`` and ``shift``). :meth:`MaliciousImprint.evaluate`
(called through ``Case.scenario_metrics()`` after the attack) reports the clean loss / accuracy / prediction
agreement of the original vs the planted model on the client batch and on public crops; attacks never see it.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field

from fedleak.errors import ConfigError
from fedleak.options import Options
from fedleak.server.public import PUBLIC_EXTRA, public_crops, public_files  # noqa: F401  (public names)
from fedleak.server.scenarios import SCENARIOS, SentModel, ServerContext

CHARACTERISTICS = ("brightness", "dct", "subject-brightness")
LAYOUTS = ("window", "nested")

# ------------------------------------------------------------------------------------- characteristics
def dct_basis(size: int, u: int, v: int) -> torch.Tensor:
    """Orthonormal 2-D DCT-II basis function (u, v) on a size x size grid (float64)."""
    n = torch.arange(size, dtype=torch.float64)

    def one(k):
        c = torch.cos(math.pi * (2 * n + 1) * k / (2 * size))
        return c * (math.sqrt(1 / size) if k == 0 else math.sqrt(2 / size))

    return torch.outer(one(u), one(v))


def subject_region(size: int, crops: Optional[torch.Tensor] = None, n: int = 48) -> torch.Tensor:
    """Server's prior of the subject region, (size, size) float in {0, 1}: the pixels that GrabCut marks as
    subject in at least 40 % of ``n`` public crops; the centre ellipse when that is too small."""
    from fedleak.client.segmentation import centre_ellipse, masks

    if crops is not None and crops.shape[0] > 0:
        m = masks(crops[:n], "grabcut").float().mean(0)[0]
        region = (m >= 0.4).double()
        if region.mean() >= 0.05:
            return region
    return torch.from_numpy(centre_ellipse(size, size)).double()


def characteristic_vector(name: str, channels: int, size: int, dct_index: Sequence[int] = (0, 1),
                          region: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The direction ``a`` (d = channels * size * size, float64) with ``v = a . x.flatten()``."""
    if name == "brightness":
        a = torch.full((channels, size, size), 1.0 / (channels * size * size), dtype=torch.float64)
    elif name == "dct":
        u, v = int(dct_index[0]), int(dct_index[1])
        if not (0 <= u < size and 0 <= v < size):
            raise ConfigError(f"dct_index {list(dct_index)} outside a {size}x{size} image")
        a = dct_basis(size, u, v).expand(channels, size, size) / channels  # DCT of the luminance (mean of channels)
    elif name == "subject-brightness":
        if region is None:
            raise ConfigError("subject-brightness needs a region")
        a = region.double().expand(channels, size, size) / (channels * float(region.sum()))
    else:
        raise ConfigError(f"unknown characteristic {name!r}; valid: {', '.join(CHARACTERISTICS)}")
    return a.reshape(-1).clone()


def attainable_range(a: torch.Tensor) -> tuple[float, float]:
    """min and max of ``a . x`` over images x in [0, 1]^d."""
    return float(a.clamp(max=0).sum()), float(a.clamp(min=0).sum())


def bin_thresholds(values: torch.Tensor, bins: int, lo: float, hi: float, uniform_mix: float = 0.15,
                   two_sided: bool = True) -> tuple[list[float], list[float]]:
    """Thresholds of the upper family (ascending, fire for v > t) and lower family (descending, fire for
    v < t) at quantiles of the mixture ``(1 - uniform_mix) * public values + uniform_mix * U[lo, hi]``."""
    vals = np.sort(values.double().numpy())

    def q(p):
        p = np.asarray(p, np.float64)
        # quantile of the mixture distribution, by bisection on its CDF
        a, b = np.full_like(p, lo), np.full_like(p, hi)
        for _ in range(60):
            m = (a + b) / 2
            cdf = (1 - uniform_mix) * np.searchsorted(vals, m, side="right") / len(vals) + uniform_mix * (m - lo) / (hi - lo)
            a, b = np.where(cdf < p, m, a), np.where(cdf < p, b, m)
        return (a + b) / 2

    if not two_sided:  # one family, the first threshold just below the attainable minimum: every image fires
        first = lo - 1e-6 * (hi - lo)
        return [first] + list(map(float, q(np.arange(1, bins) / bins))), []
    k_up = bins // 2
    k_lo = bins - k_up
    med = float(q(np.array([0.5]))[0])
    up = [med] + list(map(float, q(0.5 + 0.5 * np.arange(1, k_up) / k_up)))
    low = [med] + list(map(float, q(0.5 - 0.5 * np.arange(1, k_lo) / k_lo)))
    return up, low


# ------------------------------------------------------------------------------------------------ model
class ImprintedModel(nn.Module):
    """``logits = downstream_scale * base(x) + readout(g)``.

    Unit i of the imprint layer computes ``h_i = relu(W_i . [x.flatten(1) - shifts_i, const] + b_i)``: every
    unit sees the image centred on its own reference image ``shifts_i`` (a fixed buffer), so that the
    gradient of its weight row is ``delta_i * (x - shifts_i)`` (and ``delta_i * const`` in the last column).
    ``g = h`` (nested layout) or ``g = relu(window(h))`` (window layout)."""

    def __init__(self, base: nn.Module, image_shape: Sequence[int], units: int, num_classes: int,
                 window: bool = False):
        super().__init__()
        d = int(np.prod(image_shape))
        self.base = base
        self.imprint = nn.Linear(d + 1, units)
        self.window = nn.Linear(units, units, bias=False) if window else None
        self.readout = nn.Linear(units, num_classes, bias=False)
        self.register_buffer("shifts", torch.zeros(units, d))
        self.register_buffer("const", torch.tensor(1.0))
        self.register_buffer("direction", torch.zeros(d))  # characteristic direction a (kept for the attacker)
        self.register_buffer("downstream_scale", torch.tensor(1.0))

    def forward(self, x):
        W = self.imprint.weight
        Wx = W[:, :-1]
        pre = F.linear(x.flatten(1), Wx) - (Wx * self.shifts).sum(1) + W[:, -1] * self.const + self.imprint.bias
        h = torch.relu(pre)
        if self.window is not None:
            h = torch.relu(self.window(h))
        return self.downstream_scale * self.base(x) + self.readout(h)


def build_imprinted(model_name: str, model_kwargs: dict, image_shape: Sequence[int], units: int,
                    num_classes: int, window: bool = False) -> ImprintedModel:
    """Model factory used by the server view (weights come from the global state afterwards)."""
    from fedleak.client.models import build_model

    return ImprintedModel(build_model(model_name, **model_kwargs), image_shape, units, num_classes, window)


def _loss_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean()), out.argmax(1)


def structure_budget_fraction(model: ImprintedModel, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of the squared gradient norm (mean loss over the batch) that falls in the imprint layer."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    tot, imp = 0.0, 0.0
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        s = float(p.grad.double().pow(2).sum())
        tot += s
        if name.startswith("imprint."):
            imp += s
    model.zero_grad(set_to_none=True)
    return imp / tot if tot > 0 else float("nan")


class ImprintOptions(Options):
    """Options of ``malicious-imprint`` (see :class:`MaliciousImprint`)."""

    bins: int = Field(128, ge=2)
    layout: Literal["window", "nested"] = "window"
    characteristic: Literal["brightness", "dct", "subject-brightness"] = "brightness"
    dct_index: tuple[int, int] = (0, 1)
    probes: int = Field(4, ge=1, description="zero-gradient units (the noise estimate needs them)")
    two_sided: bool = True
    public: str = "auto"
    public_count: int = Field(512, ge=16)
    uniform_mix: float = Field(0.15, ge=0, lt=1)
    downstream_scale: float = Field(1e-3, gt=0, allow_inf_nan=False)
    gain: float = Field(1.0, gt=0, allow_inf_nan=False)
    eps: float = Field(1e-9, gt=0, allow_inf_nan=False)
    kappa: float = Field(1e4, gt=1, allow_inf_nan=False)
    bias_boost: Optional[float] = Field(None, ge=0, lt=1e6)
    bin_reference: bool = True
    centre: bool = True
    seed: int = 0


def _units(up: list[float], low: list[float], probes: int, two_sided: bool, lo: float, hi: float
           ) -> list[tuple[int, float]]:
    """(direction, threshold) of every unit: the bins, then the probes -- thresholds outside [lo, hi], so they
    never fire and their true gradient is exactly 0."""
    span = hi - lo
    n_up_probes = probes - probes // 2 if two_sided else probes
    n_lo_probes = probes - n_up_probes
    units = [(+1, t) for t in up] + [(-1, t) for t in low]
    return units + [(+1, hi + span * (1 + j)) for j in range(n_up_probes)] + \
        [(-1, lo - span * (1 + j)) for j in range(n_lo_probes)]


def _reference_images(o: ImprintOptions, flat: torch.Tensor, values: torch.Tensor, up: list[float], hi: float,
                      units: int, window: bool) -> torch.Tensor:
    """Reference image of every unit: the public mean (nested layout: rows mix samples of many bins), or for
    the window layout the public image regressed on the characteristic at the bin centre,
    ``mu + (v_i - mean v) beta``, so that each row carries only what the characteristic does not explain."""
    mu = flat.mean(0)
    if not o.centre:
        return torch.zeros(units, mu.numel(), dtype=torch.float64)
    shifts = mu[None].repeat(units, 1)
    if window and o.bin_reference:
        vc = values - values.mean()
        beta = (vc[:, None] * (flat - mu)).sum(0) / (vc @ vc).clamp(min=1e-12)
        edges = list(up) + [hi]
        for i in range(len(up)):
            lo_i = max(edges[i], float(values.min())) if i == 0 else edges[i]
            centre = (lo_i + min(edges[i + 1], float(values.max()) if i == len(up) - 1 else edges[i + 1])) / 2
            shifts[i] = mu + (centre - float(values.mean())) * beta
    return shifts


def _set_weights(model: ImprintedModel, o: ImprintOptions, a: torch.Tensor, units: list[tuple[int, float]],
                 shifts: torch.Tensor, boost: float, span: float, n_window: int) -> torch.Tensor:
    """Write the structure into ``model``; returns the value offsets ``a . shifts_i``."""
    U, num_classes = len(units), model.readout.out_features
    offsets = shifts @ a  # a . (x - shifts_i) = v - offsets_i
    dirs = torch.tensor([d for d, _ in units], dtype=torch.float64)
    ts = torch.tensor([t for _, t in units], dtype=torch.float64)
    eps = o.eps / max(span, 1e-12)
    g = torch.Generator().manual_seed(o.seed + 17)
    r = torch.ones(num_classes, dtype=torch.float64)
    r[torch.randperm(num_classes, generator=g)[: num_classes // 2]] = -1.0
    with torch.no_grad():
        w = torch.zeros(U, a.numel() + 1, dtype=torch.float64)
        w[:, :-1] = eps * dirs[:, None] * a[None, :]
        model.imprint.weight.copy_(w.float())
        model.imprint.bias.copy_((-eps * dirs * (ts - offsets)).float())
        model.const.fill_(boost)
        model.readout.weight.copy_((o.gain * r[:, None]).expand(num_classes, U).float())
        model.shifts.copy_(shifts.float())
        model.direction.copy_(a.float())
        model.downstream_scale.fill_(o.downstream_scale)
        if model.window is not None:  # g_i = relu(h_i - kappa h_{i+1}): unit i is active only inside bin i
            Q = torch.eye(U)
            for i in range(n_window - 1):
                Q[i, i + 1] = -o.kappa
            model.window.weight.copy_(Q)
    return offsets


def _layout(o: ImprintOptions, shape: Sequence[int], a, offsets, lo, hi, up, low, units: int, mu, boost,
            window: bool) -> dict[str, Any]:
    """The layout handed to the attacks (``ServerView.extra['imprint']``)."""
    n_up, n_low = len(up), len(low)
    families = [{"direction": +1, "units": list(range(n_up)), "thresholds": up}]
    if n_low:
        families.append({"direction": -1, "units": list(range(n_up, n_up + n_low)), "thresholds": low})
    return {
        "version": 1,
        "layout": o.layout,
        "weight": "imprint.weight",
        "bias": "imprint.bias",
        "shift": "shifts",  # (units, pixels) reference image of every unit
        "direction": "direction",
        "image_shape": list(shape),
        "characteristic": o.characteristic,
        "pixels": int(a.numel()),  # weight columns 0 .. pixels-1: x - shifts_i; column `pixels`: const
        "const": boost,
        "value_offsets": offsets.tolist(),  # a . (x - shifts_i) = v - value_offsets[i]
        "value_range": [lo, hi],
        "families": families,
        "probes": list(range(n_up + n_low, units)),
        "public_mean": mu.float().tolist(),
        "bins": o.bins,
        "kappa": o.kappa if window else None,
    }


@SCENARIOS.register("malicious-imprint", doc="plant an imprint inference structure (bins + zero-gradient probes)",
                    options=ImprintOptions)
class MaliciousImprint:
    """Malicious server: wraps the model with an imprint structure (see :mod:`fedleak.server.imprint`).

    Options (:class:`ImprintOptions`): ``bins`` (K units), ``layout`` (window | nested), ``characteristic``
    (brightness | dct | subject-brightness), ``dct_index`` (u, v for ``dct``), ``probes`` (P zero-gradient
    units), ``two_sided`` (nested layout only), ``public`` (``auto``: bundled scikit-image photos, or a folder),
    ``public_count`` (random crops), ``uniform_mix``, ``downstream_scale`` (s), ``gain`` (|readout|
    entries), ``eps`` (pre-activation scale), ``kappa`` (window cut-off slope), ``bias_boost`` (the
    constant input feature; null = 4 sqrt(d / 3072)), ``bin_reference`` (window layout: per-bin reference
    images), ``centre`` (False: no centring at all, as in Robbing the Fed), ``seed``.
    """

    def __init__(self, options: Optional[ImprintOptions] = None):
        self.options = options or ImprintOptions()

    def build(self, base: nn.Module, crops: torch.Tensor, num_classes: int) -> tuple[ImprintedModel, dict]:
        """The planted model and its layout, from the public ``crops`` (N, C, S, S) only."""
        o = self.options
        channels, size = int(crops.shape[1]), int(crops.shape[-1])
        region = subject_region(size, crops) if o.characteristic == "subject-brightness" else None
        a = characteristic_vector(o.characteristic, channels, size, o.dct_index, region)
        lo, hi = attainable_range(a)
        flat = crops.reshape(crops.shape[0], -1).double()
        values = flat @ a
        window = o.layout == "window"
        two_sided = o.two_sided and not window
        up, low = bin_thresholds(values, o.bins, lo, hi, o.uniform_mix, two_sided)
        units = _units(up, low, o.probes, two_sided, lo, hi)
        model = ImprintedModel(base, (channels, size, size), len(units), num_classes, window=window)
        shifts = _reference_images(o, flat, values, up, hi, len(units), window)
        # constant feature: 4 at 32x32, growing like the image norm (sqrt of the pixel count)
        boost = o.bias_boost if o.bias_boost is not None else 4.0 * math.sqrt(a.numel() / 3072.0)
        offsets = _set_weights(model, o, a, units, shifts, boost, hi - lo, len(up))
        layout = _layout(o, (channels, size, size), a, offsets, lo, hi, up, low, len(units), flat.mean(0), boost,
                         window)
        return model, layout

    def _crops(self, ctx: ServerContext) -> torch.Tensor:
        return ctx.public_crops(self.options.public_count, self.options.seed, self.options.public)

    def send(self, ctx: ServerContext) -> SentModel:
        model, layout = self.build(ctx.model, self._crops(ctx), ctx.num_classes)
        factory = functools.partial(build_imprinted, ctx.model_name, dict(ctx.model_kwargs), ctx.image_shape,
                                    model.imprint.out_features, ctx.num_classes, model.window is not None)
        return SentModel(model=model, model_factory=factory, extra={"imprint": layout})

    def evaluate(self, ctx: ServerContext, sent: SentModel, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, Any]:
        """``{'imprint_report': ...}``: how much the structure changes the model (evaluation only)."""
        return {"imprint_report": imprint_report(ctx.model, sent.model, images, labels, self._crops(ctx),
                                                 ctx.num_classes, self.options.seed)}


def imprint_report(base: nn.Module, model: ImprintedModel, x: torch.Tensor, y: torch.Tensor, crops: torch.Tensor,
                   n_cls: int, seed: int = 0) -> dict[str, Any]:
    """Clean loss / accuracy / prediction agreement of the original vs the planted model on the true batch
    ``(x, y)`` and on public crops, and the structure's share of the gradient norm on a public batch with
    random labels. Evaluation bookkeeping: compares with the true data, so never given to an attack."""
    was_training = model.training
    model.eval()
    base.eval()
    l0, a0, p0 = _loss_acc(base, x, y)
    l1, a1, p1 = _loss_acc(model, x, y)
    pub = crops[: min(64, crops.shape[0])]
    with torch.no_grad():
        q0, q1 = base(pub).argmax(1), model(pub).argmax(1)
    gen = torch.Generator().manual_seed(seed + 5)
    yb = torch.randint(0, n_cls, (x.shape[0],), generator=gen)
    frac = structure_budget_fraction(model, pub[: x.shape[0]], yb)
    model.train(was_training)
    return {
        "client_loss_original": l0,
        "client_loss_planted": l1,
        "client_accuracy_original": a0,
        "client_accuracy_planted": a1,
        "client_prediction_agreement": float((p0 == p1).float().mean()),
        "public_prediction_agreement": float((q0 == q1).float().mean()),
        "public_structure_gradient_share": frac,
        "structure_parameters": model.imprint.weight.numel() + model.imprint.bias.numel(),
        "readout_parameters": model.readout.weight.numel(),
        "original_parameters": sum(p.numel() for p in base.parameters()),
    }
