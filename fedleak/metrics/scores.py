"""Image-quality metrics for judging a reconstruction against the client's true images.

All functions take image tensors ``(B, C, H, W)`` or ``(C, H, W)`` with values in [0, 1] (C = 3 for RGB;
C = 1 is accepted too) and return one value per image as a float64 tensor of shape ``(B,)``.

* :func:`psnr` -- peak signal-to-noise ratio on the 0..255 scale: ``10 log10(255^2 / MSE_255)`` where
  ``MSE_255`` is the mean squared error of the images multiplied by 255 (equivalently
  ``10 log10(1 / MSE)`` on [0, 1]). Identical images give ``inf`` unless ``cap`` is set.
* :func:`ssim` -- the standard windowed SSIM of Wang et al. (2004): Gaussian window 11x11, sigma 1.5,
  K1 = 0.01, K2 = 0.03, data range 1, population (not sample) covariances, the mean of the SSIM map over
  the positions where the window fits inside the image, computed per channel and averaged over channels.
  This is what ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, channel_axis=-1, data_range=1)`` returns (checked in the tests).
* :func:`ssim_rog` -- the SSIM reported by the ROG code (Yue et al., "Gradient Obfuscation Gives a False
  Sense of Security in Federated Learning", USENIX Security 2023, ``src/metric.py``): images are first
  quantised to uint8 (``round(clamp(x, 0, 1) * 255)``), converted to YCrCb with OpenCV's 8-bit
  ``COLOR_RGB2YCrCb`` rule, and a *global* SSIM (one window = the whole image; population statistics;
  L = 255, C1 = (0.01 L)^2, C2 = (0.03 L)^2, C3 = C2 / 2, SSIM = l * c * s) is computed per channel and
  combined as ``0.8 * Y + 0.1 * Cr + 0.1 * Cb``. Re-implemented here in torch (same formula; the colour
  conversion reproduces OpenCV's fixed-point arithmetic exactly, see the tests).
* :func:`haarpsi` / :func:`perceptual` -- the Haar wavelet-based perceptual similarity index HaarPSI
  (Reisenhofer, Bosse, Kutyniok, Wiegand, "A Haar wavelet-based perceptual similarity index for image
  quality assessment", Signal Processing: Image Communication 2018). It is training-free (no network
  weights, so it works offline -- LPIPS would need ImageNet weights downloaded through torchvision, which
  this project cannot use) and correlates with human judgements about as well as learned metrics on the
  standard IQA databases. :func:`perceptual` is the distance ``1 - HaarPSI`` in [0, 1]
  (0 = identical, lower is better, like LPIPS).
* :func:`label_accuracy`, :func:`match` and :func:`evaluate` tie it together. The attacker does not know
  the order of the images in the batch, so :func:`evaluate` first pairs reconstructions with true images
  by an optimal assignment on MSE (Hungarian algorithm).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "psnr",
    "ssim",
    "ssim_rog",
    "haarpsi",
    "perceptual",
    "masked_psnr",
    "masked_ssim",
    "label_accuracy",
    "match",
    "evaluate",
    "PSNR_CAP",
    "PERCEPTUAL_METRIC",
]

#: PSNR used in :func:`evaluate` for (near-)identical images, so that metrics stay finite JSON numbers.
#: (The ROG code uses the same cap of 100 dB.)
PSNR_CAP = 100.0
PERCEPTUAL_METRIC = "1 - HaarPSI (Reisenhofer et al. 2018)"


# ---------------------------------------------------------------------------------------------- helpers
def _batch(x: Any, name: str = "images") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    x = x.detach().to("cpu", torch.float64)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    return x


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _batch(a, "a"), _batch(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def _gauss_kernel(size: int, sigma: float) -> torch.Tensor:
    r = (size - 1) / 2
    x = torch.arange(size, dtype=torch.float64) - r
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor, pad: Optional[str] = None) -> torch.Tensor:
    """Separable filtering of every channel of (B, C, H, W) with the 1-D kernel ``g``.
    ``pad=None`` -> 'valid' output; otherwise the padding mode for a same-size output."""
    b, c, h, w = x.shape
    k = g.numel()
    y = x.reshape(b * c, 1, h, w)
    if pad is not None:
        p = k // 2
        mode = pad if (pad != "reflect" or (h > p and w > p)) else "replicate"
        y = F.pad(y, (p, k - 1 - p, p, k - 1 - p), mode=mode)
    y = F.conv2d(y, g.view(1, 1, 1, k))
    y = F.conv2d(y, g.view(1, 1, k, 1))
    return y.reshape(b, c, y.shape[-2], y.shape[-1])


# ------------------------------------------------------------------------------------------------- PSNR
def psnr(a: Any, b: Any, cap: Optional[float] = None) -> torch.Tensor:
    """Per-image PSNR in dB on the 0..255 scale (peak 255). ``cap`` limits the value for identical images."""
    a, b = _pair(a, b)
    mse255 = ((a * 255 - b * 255) ** 2).flatten(1).mean(1)
    out = 10 * torch.log10(255.0**2 / mse255)  # inf where mse == 0
    if cap is not None:
        out = out.clamp(max=cap)
    return out


def masked_psnr(a: Any, b: Any, masks: Any, cap: Optional[float] = None) -> torch.Tensor:
    """PSNR over the pixels where ``masks`` (B, 1, H, W) is true (all channels); NaN for an empty mask."""
    a, b = _pair(a, b)
    m = _mask(masks, a)
    se = ((a * 255 - b * 255) ** 2 * m).flatten(1).sum(1)
    n = (m.expand_as(a)).flatten(1).sum(1)
    mse255 = se / n  # nan where the mask is empty
    out = 10 * torch.log10(255.0**2 / mse255)
    if cap is not None:
        out = torch.where(torch.isnan(out), out, out.clamp(max=cap))
    return out


def _mask(masks: Any, ref: torch.Tensor) -> torch.Tensor:
    m = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    m = m.detach().to("cpu")
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] != ref.shape[0] or m.shape[-2:] != ref.shape[-2:]:
        raise ValueError(f"masks must have shape (B, 1, H, W) = {(ref.shape[0], 1, *ref.shape[-2:])}, "
                         f"got {tuple(m.shape)}")
    return (m != 0).to(torch.float64)


# ------------------------------------------------------------------------------------------------- SSIM
_K1, _K2 = 0.01, 0.03


def _ssim_map(a: torch.Tensor, b: torch.Tensor, win: int, sigma: float, data_range: float,
              pad: Optional[str]) -> torch.Tensor:
    g = _gauss_kernel(win, sigma)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mu_a, mu_b = _filter(a, g, pad), _filter(b, g, pad)
    var_a = _filter(a * a, g, pad) - mu_a**2
    var_b = _filter(b * b, g, pad) - mu_b**2
    cov = _filter(a * b, g, pad) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return num / den  # (B, C, h, w)


def _window(h: int, w: int, win: int) -> int:
    """The window shrinks (to the largest odd size that fits) for images smaller than it."""
    m = min(h, w, win)
    return m if m % 2 == 1 else m - 1


def ssim(a: Any, b: Any, win_size: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Standard Gaussian-windowed SSIM per image, averaged over channels (see module docstring).

    Only window positions fully inside the image are averaged (as scikit-image does after filtering).
    For images smaller than the window, the window shrinks to the largest odd size that fits.
    """
    a, b = _pair(a, b)
    win = _window(a.shape[-2], a.shape[-1], win_size)
    return _ssim_map(a, b, win, sigma, data_range, pad=None).flatten(1).mean(1)


def masked_ssim(a: Any, b: Any, masks: Any, win_size: int = 11, sigma: float = 1.5,
                data_range: float = 1.0) -> torch.Tensor:
    """SSIM map (same-size, reflect-padded at the borders) averaged over the mask and channels.
    NaN for an empty mask."""
    a, b = _pair(a, b)
    m = _mask(masks, a)
    win = _window(a.shape[-2], a.shape[-1], win_size)
    smap = _ssim_map(a, b, win, sigma, data_range, pad="reflect").mean(1, keepdim=True)
    return (smap * m).flatten(1).sum(1) / m.flatten(1).sum(1)


# --------------------------------------------------------------------------------------- ROG-style SSIM
def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """As the ROG code saves/evaluates images: clamp to [0, 1], scale by 255 and round half to even
    (numpy ``round``), giving integers 0..255 (kept as int64)."""
    return torch.round(x.clamp(0, 1) * 255).to(torch.int64)


# OpenCV's 8-bit RGB->YCrCb uses 14-bit fixed point: Y = 0.299 R + 0.587 G + 0.114 B,
# Cr = 0.713 (R - Y) + 128, Cb = 0.564 (B - Y) + 128, each rounded; Cr, Cb use the *rounded* Y.
_SHIFT = 14
_CY = (4899, 9617, 1868)  # round(0.299 * 2^14), round(0.587 * 2^14), round(0.114 * 2^14)
_CCR, _CCB = 11682, 9241  # round(0.713 * 2^14), round(0.564 * 2^14)


def _descale(x: torch.Tensor) -> torch.Tensor:
    return (x + (1 << (_SHIFT - 1))) >> _SHIFT


def rgb_to_ycrcb_uint8(x: torch.Tensor) -> torch.Tensor:
    """Integer RGB (B, 3, H, W) in 0..255 -> integer YCrCb, bit-identical to ``cv2.COLOR_RGB2YCrCb``."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = _descale(r * _CY[0] + g * _CY[1] + b * _CY[2])
    delta = 128 << _SHIFT
    cr = _descale((r - y) * _CCR + delta)
    cb = _descale((b - y) * _CCB + delta)
    return torch.stack([y, cr, cb], 1).clamp(0, 255)


def _global_ssim(a: torch.Tensor, b: torch.Tensor, L: float = 255.0) -> torch.Tensor:
    """One-window SSIM over all pixels of each (B, H, W) plane with l*c*s and C3 = C2/2 (ROG's formula)."""
    a, b = a.flatten(1).to(torch.float64), b.flatten(1).to(torch.float64)
    mu_a, mu_b = a.mean(1), b.mean(1)
    sd_a = ((a - mu_a[:, None]) ** 2).mean(1).sqrt()
    sd_b = ((b - mu_b[:, None]) ** 2).mean(1).sqrt()
    cov = ((a - mu_a[:, None]) * (b - mu_b[:, None])).mean(1)
    c1, c2 = (_K1 * L) ** 2, (_K2 * L) ** 2
    c3 = c2 / 2
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    con = (2 * sd_a * sd_b + c2) / (sd_a**2 + sd_b**2 + c2)
    struct = (cov + c3) / (sd_a * sd_b + c3)
    return lum * con * struct


def ssim_rog(a: Any, b: Any) -> torch.Tensor:
    """ROG's global SSIM on uint8 YCrCb, ``0.8 Y + 0.1 Cr + 0.1 Cb`` (see module docstring).
    Single-channel images use the global SSIM of that channel alone."""
    a, b = _pair(a, b)
    qa, qb = _to_uint8(a), _to_uint8(b)
    if a.shape[1] == 1:
        return _global_ssim(qa[:, 0], qb[:, 0])
    if a.shape[1] != 3:
        raise ValueError(f"ssim_rog needs 1 or 3 channels, got {a.shape[1]}")
    ya, yb = rgb_to_ycrcb_uint8(qa), rgb_to_ycrcb_uint8(qb)
    return (0.8 * _global_ssim(ya[:, 0], yb[:, 0]) + 0.1 * _global_ssim(ya[:, 1], yb[:, 1])
            + 0.1 * _global_ssim(ya[:, 2], yb[:, 2]))


# ---------------------------------------------------------------------------------------------- HaarPSI
def _conv_same(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """True 2-D convolution of (N, H, W) with kernel k (kh, kw), zero padding, output the same size as the
    input: the 'same' central part of the full convolution as MATLAB ``conv2`` / ``scipy.signal.convolve2d``
    define it (top/left padding floor(k/2), which matters for the even-sized Haar filters)."""
    kh, kw = k.shape
    pt, pl = kh // 2, kw // 2
    y = F.pad(x.unsqueeze(1), (pl, kw - 1 - pl, pt, kh - 1 - pt))
    return F.conv2d(y, k.flip(0, 1)[None, None].to(x.dtype)).squeeze(1)


def _haar_coeffs(x: torch.Tensor, scales: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Haar wavelet responses per scale j = 1..scales: (horizontal, vertical) with filter size 2^j."""
    out = []
    for j in range(1, scales + 1):
        n = 2**j
        f = torch.full((n, n), 2.0**-j, dtype=x.dtype)
        f[: n // 2] *= -1
        out.append((_conv_same(x, f), _conv_same(x, f.t())))
    return out


def haarpsi(a: Any, b: Any, c: float = 30.0, alpha: float = 4.2, subsample: bool = True) -> torch.Tensor:
    """HaarPSI similarity in [0, 1] per image (1 = identical), with the paper's constants C = 30, alpha = 4.2
    for natural images on the 0..255 scale, 3 Haar scales, 2x2 mean pre-filter + factor-2 subsampling,
    and the YIQ chroma term for colour images."""
    a, b = _pair(a, b)
    if a.shape[1] not in (1, 3):
        raise ValueError(f"haarpsi needs 1 or 3 channels, got {a.shape[1]}")
    a, b = a.clamp(0, 1) * 255, b.clamp(0, 1) * 255
    colour = a.shape[1] == 3

    def yiq(x):
        if not colour:
            return x[:, 0], None, None
        r, g, bl = x[:, 0], x[:, 1], x[:, 2]
        return (0.299 * r + 0.587 * g + 0.114 * bl,
                0.596 * r - 0.274 * g - 0.322 * bl,
                0.211 * r - 0.523 * g + 0.312 * bl)

    mean2 = torch.full((2, 2), 0.25, dtype=torch.float64)

    def sub(x):
        return _conv_same(x, mean2)[:, ::2, ::2] if subsample else x

    ya, ia, qa = (None if t is None else sub(t) for t in yiq(a))
    yb, ib, qb = (None if t is None else sub(t) for t in yiq(b))
    scales = 3
    ca, cb = _haar_coeffs(ya, scales), _haar_coeffs(yb, scales)

    def sim(u, v):
        return (2 * u * v + c) / (u**2 + v**2 + c)

    sims, weights = [], []
    for o in range(2):  # 0: horizontal, 1: vertical
        weights.append(torch.maximum(ca[scales - 1][o].abs(), cb[scales - 1][o].abs()))
        s = sum(sim(ca[j][o].abs(), cb[j][o].abs()) for j in range(2)) / 2  # two finest scales
        sims.append(s)
    if colour:
        cia, cib = _conv_same(ia, mean2).abs(), _conv_same(ib, mean2).abs()
        cqa, cqb = _conv_same(qa, mean2).abs(), _conv_same(qb, mean2).abs()
        sims.append((sim(cia, cib) + sim(cqa, cqb)) / 2)
        weights.append((weights[0] + weights[1]) / 2)
    s = torch.stack(sims, 1).flatten(1)
    w = torch.stack(weights, 1).flatten(1)
    wsum = w.sum(1, keepdim=True)
    # Two flat images give all-zero weights; fall back to uniform weights instead of 0/0.
    w = torch.where(wsum > 0, w, torch.ones_like(w))
    pooled = (torch.sigmoid(alpha * s) * w).sum(1) / w.sum(1)
    pooled = pooled.clamp(1e-12, 1 - 1e-12)
    return (torch.log(pooled / (1 - pooled)) / alpha) ** 2


def perceptual(a: Any, b: Any) -> torch.Tensor:
    """Perceptual distance ``1 - HaarPSI`` per image: 0 for identical images, lower is better."""
    return (1 - haarpsi(a, b)).clamp(min=0)


# ----------------------------------------------------------------------------------- labels, matching
def label_accuracy(pred: Any, true: Any, ordered: bool = True) -> float:
    """Fraction of correct labels. ``ordered=True`` compares position by position; ``ordered=False``
    compares the multisets (order-free), i.e. |pred ∩ true| / len(true)."""
    p = [int(v) for v in torch.as_tensor(pred).flatten().tolist()]
    t = [int(v) for v in torch.as_tensor(true).flatten().tolist()]
    if not t:
        raise ValueError("label_accuracy: empty true labels")
    if ordered:
        if len(p) != len(t):
            raise ValueError(f"label_accuracy: {len(p)} predicted vs {len(t)} true labels")
        return sum(x == y for x, y in zip(p, t)) / len(t)
    return sum((Counter(p) & Counter(t)).values()) / len(t)


def match(true: Any, rec: Any) -> list[int]:
    """Optimal pairing of reconstructions with true images (minimum total MSE, Hungarian algorithm).

    Returns ``perm`` with ``rec[perm[i]]`` paired with ``true[i]``. With more reconstructions than true
    images the surplus is ignored; with fewer, a ValueError is raised.
    """
    from scipy.optimize import linear_sum_assignment

    t, r = _batch(true, "true"), _batch(rec, "rec")
    if t.shape[1:] != r.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(t.shape[1:])} vs {tuple(r.shape[1:])}")
    if r.shape[0] < t.shape[0]:
        raise ValueError(f"{r.shape[0]} reconstructions for {t.shape[0]} true images")
    cost = torch.cdist(t.flatten(1), r.flatten(1)) ** 2 / t[0].numel()  # (Bt, Br) MSE
    rows, cols = linear_sum_assignment(cost.numpy())
    perm = [0] * t.shape[0]
    for i, j in zip(rows, cols):
        perm[int(i)] = int(j)
    return perm


# --------------------------------------------------------------------------------------------- evaluate
def _finite_mean(v: torch.Tensor) -> Optional[float]:
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else None


def _as_list(v: torch.Tensor) -> list:
    return [None if math.isnan(x) else float(x) for x in v.tolist()]


def evaluate(true_images: Any, rec: Any, true_labels: Any = None, masks: Any = None,
             psnr_cap: Optional[float] = PSNR_CAP, match_order: bool = True) -> dict:
    """Compare a reconstruction with the true images.

    ``rec`` is a :class:`~fedleak.attacks.Reconstruction` or an image tensor. Reconstructed images are
    clamped to [0, 1], then paired with the true images by :func:`match`. Returns a JSON-ready dict::

        {"num_images": B, "permutation": [...],          # rec[permutation[i]] <-> true[i]
         "per_image": {"psnr": [...], "ssim": [...], "ssim_rog": [...], "perceptual": [...],
                       ["psnr_subject": [...], "ssim_subject": [...]]},
         "mean": {"psnr": .., "ssim": .., "ssim_rog": .., "perceptual": .., ["psnr_subject", "ssim_subject",
                  "label_accuracy", "label_set_accuracy"]},
         ["label_accuracy": .., "label_set_accuracy": ..,]  "perceptual_metric": "1 - HaarPSI ..."}

    PSNR is capped at ``psnr_cap`` dB (100, as in the ROG code) so identical images stay finite.
    Label accuracy is reported when the reconstruction carries labels and ``true_labels`` is given:
    ``label_accuracy`` slot by slot after the image matching, ``label_set_accuracy`` order-free; with labels
    but no ``true_labels``, ``label_metrics`` says that they were not computable.
    With ``masks`` (B, 1, H, W, aligned with the true images) subject-region PSNR (MSE over the mask) and
    SSIM (SSIM map averaged over the mask) are added. ``match_order=False`` skips the matching and compares
    position by position (identity permutation).
    """
    rec_labels = None
    images = rec
    if hasattr(rec, "images"):
        images = rec.images
        rec_labels = getattr(rec, "labels", None)
    t = _batch(true_images, "true_images").clamp(0, 1)
    r = _batch(images, "reconstruction")
    if torch.isnan(r).any():
        raise ValueError("reconstruction contains NaN")
    r = r.clamp(0, 1)
    if match_order:
        perm = match(t, r)
    else:
        if r.shape != t.shape:
            raise ValueError(f"reconstruction shape {tuple(r.shape)} != true images {tuple(t.shape)}")
        perm = list(range(t.shape[0]))
    rm = r[perm]
    per = {
        "psnr": psnr(t, rm, cap=psnr_cap),
        "ssim": ssim(t, rm),
        "ssim_rog": ssim_rog(t, rm),
        "perceptual": perceptual(t, rm),
    }
    if masks is not None:
        per["psnr_subject"] = masked_psnr(t, rm, masks, cap=psnr_cap)
        per["ssim_subject"] = masked_ssim(t, rm, masks)
    out: dict[str, Any] = {
        "num_images": int(t.shape[0]),
        "permutation": perm,
        "per_image": {k: _as_list(v) for k, v in per.items()},
        "mean": {k: _finite_mean(v) for k, v in per.items()},
        "perceptual_metric": PERCEPTUAL_METRIC,
    }
    if rec_labels is not None and true_labels is not None:
        rl = torch.as_tensor(rec_labels).flatten()
        tl = torch.as_tensor(true_labels).flatten()
        if rl.numel() == r.shape[0]:
            out["label_accuracy"] = label_accuracy(rl[perm], tl)
        out["label_set_accuracy"] = label_accuracy(rl, tl, ordered=False)
        for k in ("label_accuracy", "label_set_accuracy"):
            if k in out:
                out["mean"][k] = out[k]
    elif rec_labels is not None:
        out["label_metrics"] = "not computable: no true labels given"
    return out
