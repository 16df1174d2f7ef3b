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
  structure is measured on a public batch and reported (``server_extra['imprint_report']``).

``server_extra['imprint']`` is the layout the attacks read (parameter names, unit indices per family,
thresholds, probe units, the buffers holding ``a`` and ``shift``); ``server_extra['imprint_report']``
reports the clean loss / accuracy / prediction agreement of the original vs the planted model on the
client batch (simulation bookkeeping only: attacks do not use it) and on public crops.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedleak.errors import ConfigError
from fedleak.server.scenarios import SCENARIOS

CHARACTERISTICS = ("brightness", "dct", "subject-brightness")
LAYOUTS = ("window", "nested")

#: photos bundled with scikit-image that are *not* in the ``builtin`` evaluation set (data.BUILTIN_PHOTOS)
PUBLIC_EXTRA = [
    "camera.png", "coins.png", "moon.png", "page.png", "text.png", "brick.png", "grass.png", "gravel.png",
    "cell.png", "clock_motion.png", "motorcycle_right.png", "horse.png", "logo.png", "color.png",
    "microaneurysms.png", "phantom.png",
]


# ------------------------------------------------------------------------------------------ public data
def _load_public_photo(path: Path) -> np.ndarray:
    from PIL import Image

    from fedleak.client.data import to_rgb_array

    with Image.open(path) as img:
        img.load()
        return to_rgb_array(img, str(path))


def public_files(public: str = "auto", exclude_builtin: bool = True) -> list[Path]:
    """Public photos: bundled scikit-image photos (``auto``), minus the ``builtin`` evaluation photos when
    ``exclude_builtin``; or every image file in a folder."""
    from fedleak.client.data import BUILTIN_PHOTOS, IMAGE_EXTS, builtin_dir

    if public == "auto":
        root = builtin_dir()
        names = list(PUBLIC_EXTRA)
        if not exclude_builtin:
            names += [f for f, _ in BUILTIN_PHOTOS]
        files = [root / n for n in names if (root / n).is_file()]
    else:
        root = Path(public).expanduser()
        if not root.is_dir():
            raise ConfigError(f"public data folder {str(root)!r} does not exist")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ConfigError(f"no public images found for public={public!r}")
    return files


def public_crops(size: int, count: int, seed: int = 0, public: str = "auto",
                 exclude_builtin: bool = True, min_frac: float = 0.3) -> torch.Tensor:
    """``count`` random square crops (side 30..100 % of the shorter side, random flips) of the public
    photos, resized to ``size`` -> (count, 3, size, size) in [0, 1]. Deterministic in its arguments (cached)."""
    return _public_crops(int(size), int(count), int(seed), str(public), bool(exclude_builtin), float(min_frac)).clone()


@functools.lru_cache(maxsize=8)
def _public_crops(size: int, count: int, seed: int, public: str, exclude_builtin: bool, min_frac: float
                  ) -> torch.Tensor:
    from PIL import Image

    files = public_files(public, exclude_builtin)
    photos = [_load_public_photo(f) for f in files]
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        side = int(rng.uniform(min_frac, 1.0) * min(h, w))
        side = max(1, side)
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = arr[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.clip(crop * 255 + 0.5, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        out[i] = np.asarray(img, np.float32) / 255.0
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


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


@SCENARIOS.register("malicious-imprint", doc="plant an imprint inference structure (bins + zero-gradient probes)")
class MaliciousImprint:
    """Malicious server: wraps the model with an imprint structure (see :mod:`fedleak.imprint`).

    Options: ``bins`` (K units), ``layout`` (window | nested), ``characteristic`` (brightness | dct |
    subject-brightness), ``dct_index`` (u, v for ``dct``), ``probes`` (P zero-gradient units),
    ``two_sided`` (nested layout only), ``public`` (``auto``: bundled scikit-image photos, or a folder),
    ``public_count`` (random crops), ``uniform_mix``, ``downstream_scale`` (s), ``gain`` (|readout|
    entries), ``eps`` (pre-activation scale), ``kappa`` (window cut-off slope), ``bias_boost`` (the
    constant input feature; null = 4 sqrt(d / 3072)), ``bin_reference`` (window layout: per-bin reference
    images), ``centre`` (False: no centring at all, as in Robbing the Fed), ``seed``.
    """

    def __init__(self, bins: int = 128, layout: str = "window", characteristic: str = "brightness",
                 dct_index: Sequence[int] = (0, 1), probes: int = 4, two_sided: bool = True, public: str = "auto",
                 public_count: int = 512, uniform_mix: float = 0.15, downstream_scale: float = 1e-3,
                 gain: float = 1.0, eps: float = 1e-9, kappa: float = 1e4, bias_boost: Optional[float] = None,
                 bin_reference: bool = True, centre: bool = True, seed: int = 0):
        if not isinstance(bins, int) or bins < 2:
            raise ConfigError(f"bins must be an integer >= 2, got {bins!r}")
        if layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        if not isinstance(probes, int) or probes < 1:
            raise ConfigError(f"probes must be an integer >= 1 (the noise estimate needs them), got {probes!r}")
        if characteristic not in CHARACTERISTICS:
            raise ConfigError(f"unknown characteristic {characteristic!r}; valid: {', '.join(CHARACTERISTICS)}")
        if not (0 <= uniform_mix < 1):
            raise ConfigError(f"uniform_mix must be in [0, 1), got {uniform_mix!r}")
        for k, v in (("downstream_scale", downstream_scale), ("gain", gain), ("eps", eps)):
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ConfigError(f"{k} must be a positive number, got {v!r}")
        if bias_boost is not None and not (isinstance(bias_boost, (int, float)) and 0 <= bias_boost < 1e6):
            raise ConfigError(f"bias_boost must be a number >= 0 or null (auto), got {bias_boost!r}")
        if not (isinstance(kappa, (int, float)) and kappa > 1 and math.isfinite(kappa)):
            raise ConfigError(f"kappa must be a number > 1, got {kappa!r}")
        if not isinstance(public_count, int) or public_count < 16:
            raise ConfigError(f"public_count must be an integer >= 16, got {public_count!r}")
        self.bins, self.layout, self.characteristic = bins, layout, characteristic
        self.dct_index = tuple(int(i) for i in dct_index)
        self.probes, self.two_sided, self.public, self.public_count = probes, bool(two_sided), public, public_count
        self.uniform_mix, self.downstream_scale, self.gain, self.eps = (float(uniform_mix), float(downstream_scale),
                                                                        float(gain), float(eps))
        self.kappa, self.seed = float(kappa), int(seed)
        self.bias_boost = None if bias_boost is None else float(bias_boost)
        self.bin_reference, self.centre = bool(bin_reference), bool(centre)

    # -------------------------------------------------------------------------------------------------
    def build(self, base: nn.Module, channels: int, size: int, num_classes: int, exclude_builtin: bool = True
              ) -> tuple[ImprintedModel, dict, torch.Tensor]:
        """The planted model, its layout (for ``server_extra['imprint']``) and the public crops used."""
        crops = public_crops(size, self.public_count, self.seed, self.public, exclude_builtin)
        if channels != 3:
            crops = crops.mean(1, keepdim=True).expand(-1, channels, -1, -1).contiguous()
        region = subject_region(size, crops) if self.characteristic == "subject-brightness" else None
        a = characteristic_vector(self.characteristic, channels, size, self.dct_index, region)
        lo, hi = attainable_range(a)
        flat = crops.reshape(crops.shape[0], -1).double()
        values = flat @ a
        window = self.layout == "window"
        two_sided = self.two_sided and not window
        up, low = bin_thresholds(values, self.bins, lo, hi, self.uniform_mix, two_sided)
        span = hi - lo
        # probes: thresholds outside [lo, hi] -> they never fire, their true gradient is exactly 0
        n_up_probes = self.probes - self.probes // 2 if two_sided else self.probes
        n_lo_probes = self.probes - n_up_probes
        units: list[tuple[int, float]] = [(+1, t) for t in up] + [(-1, t) for t in low]
        probe_units = [(+1, hi + span * (1 + j)) for j in range(n_up_probes)] + \
                      [(-1, lo - span * (1 + j)) for j in range(n_lo_probes)]
        all_units = units + probe_units
        U = len(all_units)
        model = ImprintedModel(base, (channels, size, size), U, num_classes, window=window)
        mu = flat.mean(0)
        # reference images: the public mean (nested layout: rows mix samples of many bins), or for the window
        # layout the public image regressed on the characteristic at the bin centre, mu + (v_i - mean v) beta,
        # so that each row carries only what the characteristic does not explain (smaller norm)
        shifts = mu[None].repeat(len(all_units), 1) if self.centre else torch.zeros(len(all_units), mu.numel(),
                                                                                     dtype=torch.float64)
        if window and self.bin_reference and self.centre:
            vc = values - values.mean()
            beta = (vc[:, None] * (flat - mu)).sum(0) / (vc @ vc).clamp(min=1e-12)
            edges = list(up) + [hi]
            for i in range(len(up)):
                lo_i = max(edges[i], float(values.min())) if i == 0 else edges[i]
                centre = (lo_i + min(edges[i + 1], float(values.max()) if i == len(up) - 1 else edges[i + 1])) / 2
                shifts[i] = mu + (centre - float(values.mean())) * beta
        offsets = shifts @ a  # a . (x - shifts_i) = v - offsets_i
        # constant feature: 4 at 32x32, growing like the image norm (sqrt of the pixel count)
        boost = self.bias_boost if self.bias_boost is not None else 4.0 * math.sqrt(a.numel() / 3072.0)
        dirs = torch.tensor([d for d, _ in all_units], dtype=torch.float64)
        ts = torch.tensor([t for _, t in all_units], dtype=torch.float64)
        eps = self.eps / max(span, 1e-12)
        g = torch.Generator().manual_seed(self.seed + 17)
        r = torch.ones(num_classes, dtype=torch.float64)
        r[torch.randperm(num_classes, generator=g)[: num_classes // 2]] = -1.0
        with torch.no_grad():
            w = torch.zeros(U, a.numel() + 1, dtype=torch.float64)
            w[:, :-1] = eps * dirs[:, None] * a[None, :]
            model.imprint.weight.copy_(w.float())
            model.imprint.bias.copy_((-eps * dirs * (ts - offsets)).float())
            model.const.fill_(boost)
            model.readout.weight.copy_((self.gain * r[:, None]).expand(num_classes, U).float())
            model.shifts.copy_(shifts.float())
            model.direction.copy_(a.float())
            model.downstream_scale.fill_(self.downstream_scale)
            if window:  # g_i = relu(h_i - kappa h_{i+1}): unit i is active only inside bin i (+ a 1/kappa tail)
                Q = torch.eye(U)
                for i in range(len(up) - 1):
                    Q[i, i + 1] = -self.kappa
                model.window.weight.copy_(Q)
        n_up, n_low = len(up), len(low)
        families = [{"direction": +1, "units": list(range(n_up)), "thresholds": up}]
        if n_low:
            families.append({"direction": -1, "units": list(range(n_up, n_up + n_low)), "thresholds": low})
        layout = {
            "version": 1,
            "layout": self.layout,
            "weight": "imprint.weight",
            "bias": "imprint.bias",
            "shift": "shifts",  # (units, pixels) reference image of every unit
            "direction": "direction",
            "image_shape": [channels, size, size],
            "characteristic": self.characteristic,
            "pixels": int(a.numel()),  # weight columns 0 .. pixels-1: x - shifts_i; column `pixels`: const
            "const": boost,
            "value_offsets": offsets.tolist(),  # a . (x - shifts_i) = v - value_offsets[i]
            "value_range": [lo, hi],
            "families": families,
            "probes": list(range(n_up + n_low, U)),
            "public_mean": mu.float().tolist(),
            "bins": self.bins,
            "kappa": self.kappa if window else None,
        }
        return model, layout, crops

    def apply(self, case) -> None:
        cfg = case.config
        channels, size = int(case.images.shape[1]), int(cfg.data.size)
        n_cls = int(cfg.model.num_classes)
        base = case.model
        exclude = cfg.data.source == "builtin"  # never use the evaluation photos as public data
        model, layout, crops = self.build(base, channels, size, n_cls, exclude_builtin=exclude)
        case.model = model
        case.model_factory = functools.partial(build_imprinted, cfg.model.name, dict(case.model_kwargs),
                                               (channels, size, size), model.imprint.out_features, n_cls,
                                               model.window is not None)
        case.server_extra["imprint"] = layout
        case.server_extra["imprint_report"] = self.report(base, model, case.images, case.labels, crops, n_cls)

    def report(self, base, model, x, y, crops, n_cls) -> dict[str, Any]:
        """How much the structure changes the model (evaluation bookkeeping; attacks must not use it)."""
        base.eval()
        model.eval()
        l0, a0, p0 = _loss_acc(base, x, y)
        l1, a1, p1 = _loss_acc(model, x, y)
        pub = crops[: min(64, crops.shape[0])]
        with torch.no_grad():
            q0, q1 = base(pub).argmax(1), model(pub).argmax(1)
        gen = torch.Generator().manual_seed(self.seed + 5)
        yb = torch.randint(0, n_cls, (x.shape[0],), generator=gen)
        frac = structure_budget_fraction(model, pub[: x.shape[0]], yb)
        n_struct = model.imprint.weight.numel() + model.imprint.bias.numel()
        n_read = model.readout.weight.numel()
        n_base = sum(p.numel() for p in base.parameters())
        model.train()
        return {
            "client_loss_original": l0,
            "client_loss_planted": l1,
            "client_accuracy_original": a0,
            "client_accuracy_planted": a1,
            "client_prediction_agreement": float((p0 == p1).float().mean()),
            "public_prediction_agreement": float((q0 == q1).float().mean()),
            "public_structure_gradient_share": frac,
            "structure_parameters": n_struct,
            "readout_parameters": n_read,
            "original_parameters": n_base,
            "note": "loss/accuracy on the client batch are simulation bookkeeping; attacks do not read them",
        }
