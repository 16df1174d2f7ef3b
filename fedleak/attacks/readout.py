"""Analytic readout of an imprint structure planted by the ``malicious-imprint`` server scenario.

``imprint``
    Plain Robbing-the-Fed readout, no denoising: in each family of nested rows the difference of adjacent
    rows isolates one bin (window layout: each row is one bin); every bin with a non-zero bias entry gives
    ``x = dW / db + shift_i`` (``shift_i`` the unit's reference image). The B
    bins with the largest |db| are returned.

``ldp-imprint``
    The attack on clipped + noised (local DP / DP-SGD) updates:

    1. **Noise estimate.** The probe units can never fire, so their weights and biases (P (d + 1) numbers)
       are pure noise. Assuming zero-mean i.i.d. noise, the maximum-likelihood Gaussian
       (``sigma^2 = mean e^2``) and Laplace (``b = mean |e|``) fits are compared by log-likelihood; the
       better one gives the distribution and the noise std (``sqrt(2) b`` for Laplace). The client's epsilon
       is not used.
    2. **Combining redundant rows.** Within one family the rows between two occupied bins carry the same
       true value, so each family is cut into constant segments by exact dynamic programming (penalised
       least squares; rows beyond the outermost threshold are known to be 0). A new segment is accepted only
       when it lowers the residual by more than ``lambda = sigma^2 (D + kappa sqrt(2 D k))`` -- the upper end
       of a confidence interval for the residual drop that pure noise would give (chi-square with D = d + 1
       degrees of freedom, ``k`` = 1 for Gaussian and 2.5 for Laplace noise, ``kappa`` the normal quantile
       at ``confidence`` with a Bonferroni correction over the rows, scaled by ``ci_scale``). Each segment is
       then the average of its rows (noise std / sqrt(rows)).
    3. **Filtering with a scaled confidence interval.** A sample is the difference of two adjacent segment
       means, with known noise std ``s = sigma sqrt(1/n1 + 1/n2)``. Only coefficients outside the interval
       ``+- ci_scale * q(confidence) * s`` (``q`` = the Gaussian or Laplace quantile of the estimated
       distribution) are kept, the others are set to 0. ``filter_domain="dct"`` (default) filters in an
       orthonormal basis where natural images are sparse and i.i.d. noise stays i.i.d. with the same std:
       an orthonormal colour transform followed by all overlapping 8x8 DCT blocks (hard thresholding, the
       overlapping estimates averaged); ``"pixel"`` filters the weight-row entries themselves; ``"none"``.
    4. **Readout.** ``x = dW / c + shift_i`` with the per-sample scale ``c`` estimated from the bias difference
       and -- because ``a . z = v`` lies inside the sample's bin -- from ``(a . dW) / v_mid`` as well; the
       two are combined by inverse-variance weighting (without noise the bias ratio is exact).
    5. **De-duplication.** Candidates whose readouts correlate above ``dedup`` are merged (SNR-weighted).

    Reconstructions are ranked by SNR; the top B are returned, padded with the public mean image when fewer
    were found (``info['recovered']`` is the number actually found).

    **Many rounds** (a :class:`~fedleak.client.rounds.RoundsUpdate` with two or more recorded rounds, e.g.
    ``protocol.rounds: R``): before step 1 the R recorded readouts are combined by :func:`combine_rounds` --
    bins aligned by unit (the same structure was sent every round), each round's sigma re-estimated from its
    own probes, inverse-variance average -- and steps 1-5 run on the combined rows, whose probe estimate is then
    about ``sigma / sqrt(R)`` (``info['rounds']``).

Both attacks need ``view.extra['imprint']`` (the layout the server planted) and use only the update, the
model state the server sent and that layout -- never the client's images. Their ``info`` holds only what
they computed from these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import torch

from pydantic import Field

from fedleak.attacks.base import ATTACKS, Reconstruction
from fedleak.client.rounds import RoundsUpdate
from fedleak.errors import ConfigError
from fedleak.options import Capabilities, Options

DISTRIBUTIONS = ("gaussian", "laplace")


# --------------------------------------------------------------------------------------- noise & filter
def estimate_noise(samples: torch.Tensor) -> dict[str, Any]:
    """Zero-mean noise fit from values whose true value is 0 (the probe units' update entries).

    Returns ``sigma`` (std), ``distribution`` (gaussian | laplace | none), ``scale`` (sigma for Gaussian, b
    for Laplace), ``n``, both log-likelihoods per sample and the excess kurtosis (0 Gaussian, 3 Laplace).
    """
    e = samples.detach().double().flatten()
    e = e[torch.isfinite(e)]
    n = int(e.numel())
    if n == 0:
        raise ValueError("no probe values to estimate the noise from")
    m2 = float((e * e).mean())
    m1 = float(e.abs().mean())
    if m2 <= 0.0:
        return {"sigma": 0.0, "distribution": "none", "scale": 0.0, "n": n, "loglik_gaussian": None,
                "loglik_laplace": None, "excess_kurtosis": None}
    ll_g = -0.5 * math.log(2 * math.pi * m2) - 0.5
    ll_l = -math.log(2 * m1) - 1.0 if m1 > 0 else -math.inf
    dist = "laplace" if ll_l > ll_g else "gaussian"
    sigma = math.sqrt(m2) if dist == "gaussian" else math.sqrt(2.0) * m1
    kurt = float((e**4).mean()) / m2**2 - 3.0
    return {"sigma": sigma, "distribution": dist, "scale": math.sqrt(m2) if dist == "gaussian" else m1, "n": n,
            "loglik_gaussian": ll_g, "loglik_laplace": ll_l, "excess_kurtosis": kurt}


def interval_halfwidth(sigma: float, distribution: str = "gaussian", confidence: float = 0.995,
                       scale: float = 1.0) -> float:
    """Half-width h of the two-sided interval [-h, h] holding zero-mean noise of std ``sigma`` with
    probability ``confidence``, multiplied by ``scale``. Gaussian: ``sigma * Phi^-1(1 - alpha/2)``;
    Laplace (b = sigma / sqrt 2): ``b * ln(1 / alpha)``; alpha = 1 - confidence."""
    from scipy.special import ndtri

    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    if distribution == "laplace":
        q = sigma / math.sqrt(2.0) * math.log(1.0 / alpha)
    else:
        q = sigma * float(ndtri(1.0 - alpha / 2.0))
    return scale * q


def ci_filter(values: torch.Tensor, sigma: float, distribution: str = "gaussian", confidence: float = 0.995,
              scale: float = 1.0) -> torch.Tensor:
    """Boolean mask of the entries of ``values`` lying *outside* the (scaled) noise confidence interval."""
    return values.abs() > interval_halfwidth(sigma, distribution, confidence, scale)


# --------------------------------------------------------------------------------- orthonormal transforms
_COLOUR = torch.tensor([[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=torch.float64)
_COLOUR = _COLOUR / _COLOUR.norm(dim=1, keepdim=True)  # orthonormal: luminance + two opponent channels


def _dct_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def _patch_transform(y: torch.Tensor, p: int):
    import torch.nn.functional as F

    c, h, w = y.shape
    cols = F.unfold(y[None], p)  # (1, c * p * p, L)
    L = cols.shape[-1]
    d = _dct_matrix(p)
    K = torch.kron(d, d)  # orthonormal 2-D DCT on row-major p x p patches
    return K, K @ cols.reshape(c, p * p, L), L


def _patch_aggregate(K, coef, weights, shape, p):
    import torch.nn.functional as F

    c, h, w = shape
    L = coef.shape[-1]
    rec = (K.T @ coef) * weights[None, None, :]  # weights: (L,) per patch position
    num = F.fold(rec.reshape(1, c * p * p, L), (h, w), p)[0]
    den = F.fold(weights.expand(p * p, L)[None].contiguous(), (h, w), p)[0]
    return num / den


def sliding_dct_filter(x: torch.Tensor, halfwidth: float, patch: int = 8, sigma: Optional[float] = None,
                       wiener: bool = True) -> torch.Tensor:
    """Keep only the coefficients outside [-halfwidth, halfwidth] in every overlapping patch x patch block
    DCT (after an orthonormal colour transform for 3 channels), invert and average the overlapping
    estimates, each patch weighted by 1 / (number of kept coefficients) (Yu & Sapiro 2011; BM3D-style).

    With ``wiener`` and the noise std ``sigma``, a second pass shrinks the *noisy* coefficients by the
    empirical Wiener factor ``e^2 / (e^2 + sigma^2)``, ``e`` being the first pass's estimate (the second
    stage of BM3D without block matching). ``x``: (C, H, W) float64."""
    c, h, w = x.shape
    p = max(1, min(patch, h, w))
    y = torch.einsum("ij,jhw->ihw", _COLOUR, x) if c == 3 else x
    K, coef, L = _patch_transform(y, p)
    keep = coef.abs() > halfwidth
    kept = coef * keep
    wts = 1.0 / keep.sum(dim=(0, 1)).clamp(min=1).double()
    y1 = _patch_aggregate(K, kept, wts, (c, h, w), p)
    if wiener and sigma is not None and sigma > 0:
        _, pilot, _ = _patch_transform(y1, p)
        g = pilot**2 / (pilot**2 + sigma**2)
        wts2 = 1.0 / (g**2).sum(dim=(0, 1)).clamp(min=1e-12)
        y1 = _patch_aggregate(K, coef * g, wts2, (c, h, w), p)
    return torch.einsum("ji,jhw->ihw", _COLOUR, y1) if c == 3 else y1


# ---------------------------------------------------------------------------------------- segmentation
def segment_rows(X: torch.Tensor, penalty: float) -> tuple[list[tuple[int, int]], int]:
    """Optimal segmentation of rows ``X`` (M, D) into constant pieces, the rows from some index on being
    known to be 0 (the implicit rows beyond the outermost threshold).

    Minimises ``sum SSE(free segments) + penalty * #free segments + sum |X_i|^2 (zero tail)``. Returns the
    free segments as half-open index ranges and the start of the zero tail (M when empty)."""
    X = X.double()
    M = X.shape[0]
    P = torch.zeros(M + 1, X.shape[1], dtype=torch.float64)
    P[1:] = torch.cumsum(X, 0)
    q = torch.zeros(M + 1, dtype=torch.float64)
    q[1:] = torch.cumsum((X * X).sum(1), 0)
    # pairwise segment costs, cost[i, j] for rows i .. j-1 (i < j)
    G = P @ P.T  # (M+1, M+1) inner products of prefix sums
    diag = torch.diagonal(G)
    sq = diag[None, :] + diag[:, None] - 2 * G  # |P_j - P_i|^2
    idx = torch.arange(M + 1, dtype=torch.float64)
    n = (idx[None, :] - idx[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = (q[None, :] - q[:, None]) - sq / n.clamp(min=1)
    cost = cost.clamp(min=0).numpy()
    Fv = np.full(M + 1, np.inf)
    arg = np.zeros(M + 1, dtype=np.int64)
    Fv[0] = 0.0
    for j in range(1, M + 1):
        cand = Fv[:j] + cost[:j, j] + penalty
        i = int(np.argmin(cand))
        Fv[j], arg[j] = cand[i], i
    qn = q.numpy()
    total = Fv + (qn[M] - qn)  # free segments up to i, zero tail i .. M-1
    tail = int(np.argmin(total))
    segs = []
    j = tail
    while j > 0:
        i = int(arg[j])
        segs.append((i, j))
        j = i
    return segs[::-1], tail


# -------------------------------------------------------------------------------------------- helpers
def _layout(view) -> dict:
    lay = (view.extra or {}).get("imprint")
    if not lay:
        raise ConfigError("this attack needs the imprint structure of the 'malicious-imprint' server scenario "
                          "(server: {name: malicious-imprint}); the server view has no 'imprint' layout")
    return lay


class _Rows:
    """The imprint rows of the update as (units, pixels [+ const] + bias) and the server's buffers."""

    def __init__(self, view, update, lay):
        t = update.tensors
        for k in (lay["weight"], lay["bias"]):
            if k not in t:
                raise ConfigError(f"the update has no tensor {k!r} (was the imprint structure sent to this client?)")
        W = t[lay["weight"]].detach().double()
        b = t[lay["bias"]].detach().double()
        if not torch.isfinite(W).all() or not torch.isfinite(b).all():
            raise ConfigError("the imprint rows of the update contain NaN/Inf")
        self.npix = int(lay.get("pixels", W.shape[1]))
        self.const = float(lay["const"]) if self.npix < W.shape[1] and float(lay.get("const", 0)) > 0 else None
        gs = view.global_state
        shift = (gs[lay["shift"]].detach().double() if lay.get("shift") in gs
                 else torch.zeros(self.npix, dtype=torch.float64))
        self.shifts = shift if shift.dim() == 2 else shift[None].expand(W.shape[0], -1)  # per unit
        self.offsets = [float(o) for o in lay.get("value_offsets", [0.0] * W.shape[0])]
        self.a = gs[lay["direction"]].detach().double() if lay.get("direction") in gs else None
        self.R = torch.cat([W, b[:, None]], 1)  # (units, pixels [+ const] + bias)

    def scale_obs(self, d: torch.Tensor) -> tuple[float, float]:
        """Best linear estimate of the per-sample scale c from the bias and const entries of ``d`` and the
        factor f such that its noise std is f * (noise std of one entry)."""
        if self.const is None:
            return float(d[-1]), 1.0
        g = self.const
        return (float(d[-1]) + g * float(d[self.npix])) / (1 + g * g), 1.0 / math.sqrt(1 + g * g)


def _bin_of(fam: dict, j: int, lo: float, hi: float) -> tuple[float, float]:
    """Value interval of a sample whose change-point is before family row j (rows 0..j-1 fire)."""
    ts = list(fam["thresholds"])
    outer = hi if fam["direction"] > 0 else lo
    a = ts[j - 1]
    b = ts[j] if j < len(ts) else outer
    return (min(a, b), max(a, b))


def _finish(cands: list[dict], B: int, shape, mean_img: torch.Tensor, info: dict) -> Reconstruction:
    cands = sorted(cands, key=lambda c: -c["score"])
    imgs = [c["image"] for c in cands[:B]]
    pad = B - len(imgs)
    imgs += [mean_img.clone() for _ in range(max(0, pad))]
    out = torch.stack(imgs).reshape(len(imgs), *shape).clamp(0, 1).float()
    info.update({"recovered": len(cands), "returned": min(len(cands), B), "padded_with_public_mean": max(0, pad),
                 "batch_size": B,
                 "recovered_bins": [c["bin"] for c in cands[:B]]})
    return Reconstruction(images=out, info=info)


def _mean_image(lay, rows: "_Rows") -> torch.Tensor:
    pm = lay.get("public_mean")
    return torch.tensor(pm, dtype=torch.float64) if pm is not None else rows.shifts.mean(0)


# -------------------------------------------------------------------------------------------- attacks
class ImprintAttackOptions(Options):
    """Options of ``imprint``."""

    tolerance: float = Field(1e-6, ge=0, allow_inf_nan=False)


@ATTACKS.register("imprint", doc="Robbing-the-Fed readout of a planted imprint structure (no denoising)",
                  options=ImprintAttackOptions, caps=Capabilities())
def imprint_attack(view, update, options: ImprintAttackOptions, *, callback=None) -> Reconstruction:
    """Plain readout, ``x = dW / db + shift_i``: for the nested layout ``d`` is the difference of adjacent rows,
    for the window layout the row itself. Every bin with a non-zero bias entry (relative ``tolerance``) is a
    sample; the B with the largest |db| are returned. ``options`` are validated by the registry."""
    tolerance = options.tolerance
    lay = _layout(view)
    rows_ = _Rows(view, update, lay)
    R, npix = rows_.R, rows_.npix
    lo, hi = lay["value_range"]
    shape = tuple(lay["image_shape"])
    B = int(view.batch_size)
    window = lay.get("layout") == "window"
    diffs = []
    for fam in lay["families"]:
        rows = R[fam["units"]]
        if not window:
            rows = rows - torch.cat([rows[1:], torch.zeros_like(rows[:1])])
        for j, d in enumerate(rows):
            diffs.append((fam, j + 1, d, fam["units"][j]))
    scale = max((abs(float(d[-1])) for _, _, d, _ in diffs), default=0.0)
    cands = []
    for fam, j, d, unit in diffs:
        db = float(d[-1])
        if scale == 0 or abs(db) <= tolerance * scale:
            continue
        img = d[:npix] / db + rows_.shifts[unit]
        cands.append({"image": img, "score": abs(db), "bin": [fam["direction"], j, list(_bin_of(fam, j, lo, hi))]})
    info = {"attack": "imprint", "layout": lay.get("layout", "nested")}
    return _finish(cands, B, shape, _mean_image(lay, rows_), info)


def _readout(d: torch.Tensor, s_d: float, blo: float, bhi: float, unit: int, rows: "_Rows", shape, dist: str,
             confidence: float, ci_scale: float, filter_domain: str, patch: int, wiener: bool
             ) -> Optional[torch.Tensor]:
    """Centred image ``z / c`` from one sample's row vector ``d`` (pixels [, const], bias) with noise std
    ``s_d`` per entry."""
    npix, a = rows.npix, rows.a
    # 4a. per-sample scale c: bias (+ boosted const) entries, and a . dW = c (v - offset), v in [blo, bhi]
    offset = rows.offsets[unit]
    c_b, f_b = rows.scale_obs(d)
    var_b = (f_b * s_d) ** 2
    c_hat = c_b
    if a is not None and var_b > 0:
        vmid, width = (blo + bhi) / 2 - offset, (bhi - blo)
        if abs(vmid) > 1e-12:
            c_a = float(a @ d[:npix]) / vmid
            var_a = (s_d**2 * float(a @ a) + (c_a * width) ** 2 / 12.0) / vmid**2
            if var_a > 0:
                c_hat = (c_b / var_b + c_a / var_a) / (1 / var_b + 1 / var_a)
    if c_hat == 0:
        return None
    # 3. keep only coefficients outside the scaled confidence interval
    h = interval_halfwidth(s_d, dist, confidence, ci_scale)
    z = d[:npix]
    if filter_domain == "dct":
        z = sliding_dct_filter(z.reshape(shape), h, patch, s_d, wiener).reshape(-1)
    elif filter_domain == "pixel":
        z = z * (z.abs() > h)
    return z / c_hat


class LdpImprintOptions(Options):
    """Options of ``ldp-imprint`` (see :func:`ldp_imprint_attack`)."""

    confidence: float = Field(0.99, gt=0, lt=1)
    ci_scale: float = Field(1.0, gt=0, allow_inf_nan=False)
    segment_confidence: float = Field(0.99, gt=0, lt=1)
    filter_domain: Literal["dct", "pixel", "none"] = "dct"
    patch: int = Field(8, ge=1)
    wiener: bool = True
    dedup: float = 0.95
    distribution: Literal["auto", "gaussian", "laplace"] = "auto"


def combine_rounds(update, lay: dict) -> Optional[tuple[torch.Tensor, dict]]:
    """Many rounds: the imprint rows of every recorded round combined into one, or None for one round.

    Bins are aligned by unit: the server sent the same structure (the same thresholds) every round, so unit i
    is bin i in each; the recorded rows must have the same shape in every round. Each round's noise std
    ``sigma_r`` is re-estimated from its own probe units and the rounds are averaged with inverse-variance
    weights ``1 / sigma_r^2`` (equal weights when a round is noise-free), so the noise std of the combined
    rows is ``1 / sqrt(sum 1 / sigma_r^2)`` (``sigma / sqrt(R)`` for equal noise)."""
    if not isinstance(update, RoundsUpdate) or len(update.rounds) < 2:
        return None
    rows = []
    for r, rec in enumerate(update.rounds):
        if lay["weight"] not in rec or lay["bias"] not in rec:
            raise ConfigError(f"round {r} of the update has no imprint rows {lay['weight']!r} / {lay['bias']!r}")
        rows.append(torch.cat([rec[lay["weight"]].detach().double(), rec[lay["bias"]].detach().double()[:, None]], 1))
    if any(x.shape != rows[0].shape for x in rows):
        raise ConfigError("the imprint rows differ in shape between rounds (the structure was not the same)")
    sig = [estimate_noise(x[lay["probes"]])["sigma"] for x in rows]
    w = torch.tensor([1.0 / s**2 for s in sig] if min(sig) > 0 else [1.0] * len(sig), dtype=torch.float64)
    w = w / w.sum()
    combined = sum(wi * x for wi, x in zip(w.tolist(), rows))
    return combined, {"rounds": len(rows), "participated": list(update.participated),
                      "sigma_per_round": {"min": min(sig), "max": max(sig), "mean": sum(sig) / len(sig)},
                      "weights": "inverse-variance" if min(sig) > 0 else "equal"}


@dataclass
class _Noise:
    """The noise model used by the readout: the probe fit, the distribution and std used, ``k4`` =
    Var(e^2) / (2 sigma^4) (1 Gaussian, 2.5 Laplace)."""

    fit: dict
    dist: str
    sigma: float
    k4: float


def _noise_model(R: torch.Tensor, lay: dict, distribution: str) -> _Noise:
    """1. noise scale and distribution from the probe units (true gradient exactly 0)."""
    fit = estimate_noise(R[lay["probes"]])
    dist = fit["distribution"] if distribution == "auto" else distribution
    if dist == "none":
        dist = "gaussian"
    fam_rows = torch.cat([R[f["units"]] for f in lay["families"]])
    floor = 1e-6 * float(fam_rows.pow(2).mean().sqrt())  # float rounding when there is no noise at all
    return _Noise(fit, dist, max(fit["sigma"], floor), 2.5 if dist == "laplace" else 1.0)


def _window_candidates(fam: dict, X: torch.Tensor, noise: _Noise, o: LdpImprintOptions, rows_: "_Rows",
                       lo: float, hi: float, ropts: dict) -> list[dict]:
    """Window layout: each row is one bin; it holds a sample iff its energy leaves the chi-square interval
    of noise or its scale entries (bias + boosted const) leave the noise interval."""
    from scipy.special import ndtri

    M, D, sigma = X.shape[0], X.shape[1], noise.sigma
    kappa = float(ndtri(1 - (1 - o.segment_confidence) / max(1, M)))
    thr = 1.0 + o.ci_scale * kappa * math.sqrt(2 * noise.k4 / D)
    kappa2 = float(ndtri(1 - (1 - o.segment_confidence) / max(1, 2 * M)))  # two-sided projection test
    cands = []
    for j in range(M):
        d = X[j]
        energy = float(d.pow(2).sum()) / (sigma**2 * D)
        c_obs, f_obs = rows_.scale_obs(d)
        proj = abs(c_obs) / (f_obs * sigma)
        if energy <= thr and proj <= o.ci_scale * kappa2:
            continue
        blo, bhi = _bin_of(fam, j + 1, lo, hi)
        unit = fam["units"][j]
        z = _readout(d, sigma, blo, bhi, unit, **ropts)
        if z is not None:
            cands.append({"image": z + rows_.shifts[unit], "score": max(energy - 1.0, 0.0) * D + proj**2,
                          "bin": [fam["direction"], j + 1, [blo, bhi]], "rows": [1]})
    return cands


def _nested_candidates(fam: dict, X: torch.Tensor, noise: _Noise, o: LdpImprintOptions, rows_: "_Rows",
                       lo: float, hi: float, ropts: dict) -> list[dict]:
    """Nested layout: 2. combine redundant rows into constant segments (zero beyond the outermost
    threshold); a sample is the difference of two adjacent segment means."""
    from scipy.special import ndtri

    M, D, sigma = X.shape[0], X.shape[1], noise.sigma
    kappa = float(ndtri(1 - (1 - o.segment_confidence) / max(1, M)))
    penalty = sigma**2 * (D + o.ci_scale * kappa * math.sqrt(2 * D * noise.k4))
    segs, tail = segment_rows(X, penalty)
    levels = [(X[i:j].mean(0), j - i, i, j) for i, j in segs]
    levels.append((torch.zeros(D, dtype=torch.float64), math.inf, tail, M))
    cands = []
    for (m1, n1, _, j1), (m2, n2, _, _) in zip(levels[:-1], levels[1:]):
        d = m1 - m2
        vf = 1.0 / n1 + (0.0 if math.isinf(n2) else 1.0 / n2)
        s_d = sigma * math.sqrt(vf)
        energy = float(d.pow(2).sum()) / (s_d**2 * D)
        blo, bhi = _bin_of(fam, j1, lo, hi)
        unit = fam["units"][j1 - 1]  # nested layout: every row has the same reference image
        z = _readout(d, s_d, blo, bhi, unit, **ropts)
        if z is not None:
            cands.append({"image": z + rows_.shifts[unit], "score": energy, "bin": [fam["direction"], j1, [blo, bhi]],
                          "rows": [n1, None if math.isinf(n2) else n2]})
    return cands


def _deduplicate(cands: list[dict], mean_img: torch.Tensor, dedup: float) -> tuple[list[dict], int]:
    """5. merge readouts whose correlation (relative to the public mean image) exceeds ``dedup``
    (SNR-weighted); returns the kept candidates and the number merged."""
    merged = 0
    keep: list[dict] = []
    for c in cands:
        c["centred"] = c["image"] - mean_img
    for c in sorted(cands, key=lambda c: -c["score"]):
        dup = None
        for k in keep:
            u, v = c["centred"], k["centred"]
            den = float(u.norm() * v.norm())
            if den > 0 and float(u @ v) / den > dedup:
                dup = k
                break
        if dup is None:
            keep.append(c)
        else:
            w1, w2 = dup["score"], c["score"]
            dup["centred"] = (w1 * dup["centred"] + w2 * c["centred"]) / (w1 + w2)
            dup["image"] = dup["centred"] + mean_img
            dup["score"] = w1 + w2
            merged += 1
    return keep, merged


@ATTACKS.register("ldp-imprint", doc="imprint readout with noise estimation, CI filtering and row combining",
                  options=LdpImprintOptions, caps=Capabilities())
def ldp_imprint_attack(view, update, options: LdpImprintOptions, *, callback=None) -> Reconstruction:
    """Denoising imprint readout for DP-protected updates (see the module docstring for the math).

    ``confidence`` / ``ci_scale``: the coefficient filter's interval (``ci_scale`` also scales the
    detection interval); ``segment_confidence``: the interval behind the detection / segmentation
    penalty; ``filter_domain``: dct | pixel | none; ``patch``: DCT block size; ``dedup``: correlation above
    which two readouts are merged; ``distribution``: auto (estimated) | gaussian | laplace.
    """
    o = options  # validated by the registry (fedleak.attacks.attack)
    lay = _layout(view)
    rows_ = _Rows(view, update, lay)
    multi = combine_rounds(update, lay)
    if multi is not None:  # many rounds: the combined rows replace the (plain-mean) rows of the update
        rows_.R = multi[0]
    lo, hi = lay["value_range"]
    noise = _noise_model(rows_.R, lay, o.distribution)
    ropts = dict(rows=rows_, shape=tuple(lay["image_shape"]), dist=noise.dist, confidence=o.confidence,
                 ci_scale=o.ci_scale, filter_domain=o.filter_domain, patch=o.patch, wiener=bool(o.wiener))
    per_family = _window_candidates if lay.get("layout") == "window" else _nested_candidates
    cands: list[dict] = []
    for fam in lay["families"]:
        cands += per_family(fam, rows_.R[fam["units"]], noise, o, rows_, lo, hi, ropts)
    mean_img = _mean_image(lay, rows_)
    keep, merged = _deduplicate(cands, mean_img, o.dedup)
    info = {"attack": "ldp-imprint", "layout": lay.get("layout", "nested"), "noise": noise.fit,
            "distribution_used": noise.dist, "sigma_used": noise.sigma, "candidates": len(cands),
            "merged_duplicates": merged, "filter_domain": o.filter_domain, "confidence": o.confidence,
            "ci_scale": o.ci_scale, "rounds": multi[1] if multi is not None else {"rounds": 1}}
    return _finish(keep, int(view.batch_size), tuple(lay["image_shape"]), mean_img, info)
