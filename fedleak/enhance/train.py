"""Training the learned ROG enhancer (``fedleak train-enhancer``).

Training pairs (degraded input, clean target) come from two sources, mixed in every batch:

* **real attack outputs** (``--pairs CACHE``, made by :func:`fedleak.experiment.enhancer_pairs.make_pairs`): the ``rog``
  attack itself run on random crops of the training photos under none / QSGD-16 / QSGD-4 / top-k 99 % /
  signSGD / FedAvg. 3 of every 4 crops are trained on, every 4th is held out for validation.
* **synthetic pairs** from a degradation model fitted to those real outputs (:class:`Degradation`): a clean
  crop's least-squares x4 latent, plus either a noise residual taken from a real attack output (a random
  training-pair residual, randomly flipped/rotated and rescaled: the "residual bank") or correlated
  Gaussian noise whose level, spatial and colour correlation span the fitted range; a random contrast loss;
  clamp, bicubic upsampling, clamp -- exactly the form of ROG's output.

Random 64x64 patches aligned to ROG's 4-pixel grid, dihedral flips/rotations; L1 loss; Adam with a cosine
learning-rate schedule. Deterministic for a seed (single thread).
"""
from __future__ import annotations

import datetime as _dt
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.enhance import net as EN
from fedleak.enhance.stage import latent
from fedleak.errors import ConfigError


@dataclass
class Degradation:
    """Synthetic model of ROG's output at the latent resolution. The defaults are generic; :func:`fit_degradation`
    replaces them with values measured on real attack outputs of TRAINING crops (never evaluation images).

    ``z_out = clamp(mean + contrast * (z - mean) + bias + noise)``, upsampled bicubically x4 and clamped, with
    ``noise`` either a real residual from the bank (``bank_fraction``) or Gaussian noise with the measured
    power ``spectrum`` (ROG's residual is not white: most of its power sits near the latent's Nyquist
    frequency, a checkerboard-like pattern) scaled to a per-image std drawn log-uniformly in
    [``sigma_min``, ``sigma_max``].
    """

    sigma_min: float = 0.02
    sigma_max: float = 0.12
    colour_corr: tuple[float, float] = (0.0, 0.3)  # share of the noise common to the 3 channels
    contrast: tuple[float, float] = (0.85, 1.1)  # latent contrast around the image mean
    bias_std: float = 0.02
    bank_fraction: float = 0.5  # share of synthetic pairs that use a real residual instead of Gaussian noise
    bank_scale: tuple[float, float] = (0.7, 1.3)
    spectrum: Optional[torch.Tensor] = None  # (h, w) power spectrum of the noise, mean 1; None = white

    def apply(self, x: torch.Tensor, gen: torch.Generator, bank: Optional[torch.Tensor] = None,
              scale: int = 4) -> torch.Tensor:
        """Degrade clean images ``x`` (B, 3, H, W) -> a ROG-like output (B, 3, H, W)."""
        B = x.shape[0]
        z = latent(x, scale)
        mean = z.mean(dim=(1, 2, 3), keepdim=True)
        c = _uniform(gen, B, *self.contrast).view(B, 1, 1, 1)
        z = mean + c * (z - mean) + self.bias_std * torch.randn((B, 1, 1, 1), generator=gen)
        noise = self.gaussian(z.shape, gen)
        if bank is not None and len(bank) and self.bank_fraction > 0:
            use = torch.rand(B, generator=gen) < self.bank_fraction
            if use.any():
                noise[use] = self.from_bank(bank, int(use.sum()), z.shape[-2:], gen)
        z = (z + noise).clamp(0, 1)
        return F.interpolate(z, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)

    def gaussian(self, shape, gen: torch.Generator) -> torch.Tensor:
        B, C, h, w = shape
        sig = torch.exp(_uniform(gen, B, math.log(self.sigma_min), math.log(self.sigma_max))).view(B, 1, 1, 1)
        rho = _uniform(gen, B, *self.colour_corr).view(B, 1, 1, 1)
        e = torch.sqrt(1 - rho) * torch.randn(shape, generator=gen) + torch.sqrt(rho) * torch.randn((B, 1, h, w), generator=gen)
        S = self.spectrum
        if S is not None:
            if tuple(S.shape) != (h, w):
                S = F.interpolate(S[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            e = torch.fft.ifft2(torch.fft.fft2(e) * S.float().clamp(min=0).sqrt()).real
        e = e / e.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)
        return sig * e

    def from_bank(self, bank: torch.Tensor, n: int, size, gen: torch.Generator) -> torch.Tensor:
        h, w = size
        idx = torch.randint(len(bank), (n,), generator=gen)
        r = bank[idx].float()
        out = []
        for i in range(n):
            t = _dihedral(r[i], int(torch.randint(8, (1,), generator=gen)))
            H, W = t.shape[-2:]
            if H < h or W < w:
                t = t.repeat(1, -(-h // H), -(-w // W))
                H, W = t.shape[-2:]
            y = int(torch.randint(H - h + 1, (1,), generator=gen))
            x = int(torch.randint(W - w + 1, (1,), generator=gen))
            out.append(t[:, y:y + h, x:x + w])
        return torch.stack(out) * _uniform(gen, n, *self.bank_scale).view(n, 1, 1, 1)

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "spectrum"}
        if self.spectrum is not None:
            S = self.spectrum
            h, w = S.shape
            fy = (torch.fft.fftfreq(h).abs() * 2)[:, None].expand(h, w)  # 0 .. 1 (Nyquist)
            fx = (torch.fft.fftfreq(w).abs() * 2)[None, :].expand(h, w)
            f = torch.maximum(fy, fx)
            tot = float(S.sum())
            d["spectrum_power_share"] = {
                "max(|fx|,|fy|) < 0.25 Nyquist": round(float(S[f < 0.25].sum()) / tot, 3),
                "0.25 - 0.625": round(float(S[(f >= 0.25) & (f < 0.625)].sum()) / tot, 3),
                ">= 0.625 Nyquist": round(float(S[f >= 0.625].sum()) / tot, 3)}
        return d


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (peak 255) of images in [0, 1], in float64 -- the same number as
    :func:`fedleak.metrics.scores.psnr` (which this layer may not import)."""
    a, b = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    return 10 * torch.log10(255.0**2 / ((a * 255 - b * 255) ** 2).flatten(1).mean(1))


def fit_degradation(pairs: dict, scale: int = 4, base: Optional[Degradation] = None,
                    min_psnr: float = 15.0) -> tuple[Degradation, dict]:
    """Fit :class:`Degradation` to real (attack output, clean crop) pairs of TRAINING images: the noise power
    spectrum of the latent residual, the range of its per-image std, the contrast change and the bias.

    Only reconstructions that carry content (raw PSNR >= ``min_psnr``) are used for the fit: failed ones
    (signSGD here, ~11 dB) are pure artefact; they stay in training as real pairs and in the residual bank,
    but would otherwise stretch the contrast/bias ranges of the synthetic model far beyond the usual case."""
    d = Degradation(**{k: v for k, v in asdict(base or Degradation()).items()})
    if not len(pairs["inputs"]):
        return d, {}
    ok = psnr(pairs["targets"].float(), pairs["inputs"].float().clamp(0, 1)) >= min_psnr
    if not bool(ok.any()):
        return d, {}
    zr = latent(pairs["inputs"][ok].float(), scale)
    zy = latent(pairs["targets"][ok].float(), scale)
    my, mr = zy.mean(dim=(1, 2, 3), keepdim=True), zr.mean(dim=(1, 2, 3), keepdim=True)
    yc, rc = zy - my, zr - mr
    slope = (yc * rc).sum(dim=(1, 2, 3)) / (yc * yc).sum(dim=(1, 2, 3)).clamp(min=1e-8)
    bias = (mr - my).flatten()
    e = rc - slope.view(-1, 1, 1, 1) * yc  # noise beyond the contrast change
    sd = e.std(dim=(1, 2, 3))
    ec = e - e.mean(dim=(2, 3), keepdim=True)
    S = (torch.fft.fft2(ec).abs() ** 2).mean(dim=(0, 1))
    S = S / S.mean()
    q = lambda v, p: float(torch.quantile(v.float(), p))  # noqa: E731
    d.sigma_min, d.sigma_max = max(1e-3, 0.8 * q(sd, 0.05)), 1.2 * q(sd, 0.95)
    d.contrast = (q(slope, 0.05), q(slope, 0.95))
    d.bias_std = float(bias.std()) if len(bias) > 1 else d.bias_std
    cc = torch.corrcoef(ec.permute(1, 0, 2, 3).reshape(3, -1))
    rho = float(cc[torch.triu_indices(3, 3, 1).unbind()].mean().clamp(0, 0.9))
    d.colour_corr = (0.0, min(0.9, 2 * rho))
    d.spectrum = S
    stats = {"n": len(sd), "excluded_failed": int((~ok).sum()), "residual_std_quantiles": [round(q(sd, p), 4) for p in (0.05, 0.5, 0.95)],
             "contrast_quantiles": [round(q(slope, p), 3) for p in (0.05, 0.5, 0.95)],
             "bias_std": round(float(bias.std()), 4), "colour_corr": round(rho, 3)}
    return d, stats


def _uniform(gen, n, lo, hi) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _dihedral(t: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of (..., H, W); all keep ROG's 4-pixel upsampling grid aligned."""
    if k & 4:
        t = t.transpose(-1, -2)
    if k & 1:
        t = t.flip(-1)
    if k & 2:
        t = t.flip(-2)
    return t


def split_pairs(blob: dict) -> tuple[dict, dict]:
    """Real pairs -> train (3 of every 4 crops) and validation (every 4th crop) tensors, with obfuscation names."""
    parts = {"train": ([], [], []), "val": ([], [], [])}
    for b in blob["batches"]:
        n = b["inputs"].shape[0]
        for j in range(n):
            key = "val" if j % 4 == 3 else "train"
            parts[key][0].append(b["inputs"][j])
            parts[key][1].append(b["targets"][j])
            parts[key][2].append(b["obf"])
    out = []
    for key in ("train", "val"):
        xi, xt, names = parts[key]
        out.append({"inputs": torch.stack(xi).float() if xi else torch.empty(0, 3, 128, 128),
                    "targets": torch.stack(xt).float() if xt else torch.empty(0, 3, 128, 128), "obf": names})
    return out[0], out[1]


def residual_bank(pairs: dict, scale: int = 4) -> torch.Tensor:
    """Latent-resolution noise residuals of real attack outputs: latent(output) - latent(clean)."""
    if not len(pairs["inputs"]):
        return torch.empty(0)
    return (latent(pairs["inputs"], scale) - latent(pairs["targets"], scale)).half()


def git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "fedleak"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


from fedleak.io import _sha256  # noqa: E402  (one file-hash helper for the project)


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 16
    patch: int = 64
    lr: float = 2e-3
    final_lr: float = 2e-5
    real_fraction: float = 0.375  # share of each batch taken from real attack pairs (when there are any)
    fit: bool = True  # fit the synthetic degradation to the real training pairs
    pool: int = 1200  # clean training crops generated up front for the synthetic pairs
    size: int = 128
    seed: int = 0
    arch: dict = field(default_factory=lambda: dict(EN.DEFAULT_ARCH))
    degradation: Degradation = field(default_factory=Degradation)


def _patches(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, patch: int, gen: torch.Generator, grid: int):
    H, W = x.shape[-2:]
    xs, ys = [], []
    for i in idx.tolist():
        oy = int(torch.randint((H - patch) // grid + 1, (1,), generator=gen)) * grid
        ox = int(torch.randint((W - patch) // grid + 1, (1,), generator=gen)) * grid
        k = int(torch.randint(8, (1,), generator=gen))
        xs.append(_dihedral(x[i, :, oy:oy + patch, ox:ox + patch], k))
        ys.append(_dihedral(y[i, :, oy:oy + patch, ox:ox + patch], k))
    return torch.stack(xs), torch.stack(ys)


def patch_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over patches of ``log(MSE) + 0.5 log(L1)``. The log-MSE term is, up to constants, minus the mean
    PSNR -- the benchmark's measure -- and weights every patch by its own error, so that nearly failed
    reconstructions (sign-compressed updates) do not drown the nearly clean ones; the L1 term keeps edges."""
    d = pred - target
    mse = d.pow(2).mean(dim=(1, 2, 3))
    l1 = d.abs().mean(dim=(1, 2, 3))
    return (torch.log(mse + 1e-5) + 0.5 * torch.log(l1 + 1e-3)).mean()


@dataclass
class _Data:
    """Everything a training run draws its batches from."""

    names: list[str]  # training photo file names
    pool: torch.Tensor  # clean crops for synthetic pairs, uint8 (N, 3, size, size)
    real_tr: dict  # real attack pairs used for training
    real_val: dict  # held-out real attack pairs
    bank: torch.Tensor  # residual bank of real_tr
    degradation: Degradation
    fit_stats: dict


def _prepare(data: str, cfg: TrainConfig, pairs: Optional[dict], rng: np.random.Generator,
             log: Callable[[str], None]) -> _Data:
    """Photos -> clean crop pool; real pairs -> train/validation split, residual bank, fitted degradation."""
    from fedleak.enhance.data import crops_tensor, load_photos

    scale = int(cfg.arch["scale"])
    photos, names = load_photos(data)
    log(f"{len(photos)} training photos from {data!r}; generating {cfg.pool} clean crops")
    pool = (crops_tensor(photos, cfg.pool, cfg.size, rng) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    real_tr, real_val = ({"inputs": torch.empty(0), "targets": torch.empty(0), "obf": []},) * 2
    if pairs is not None:
        real_tr, real_val = split_pairs(pairs)
    bank = residual_bank(real_tr, scale)
    n_real = len(real_tr["inputs"])
    degradation, fit_stats = cfg.degradation, {}
    if n_real and cfg.fit:
        degradation, fit_stats = fit_degradation(real_tr, scale, cfg.degradation)
        log(f"degradation fitted on {n_real} training attack outputs: {fit_stats}")
    log(f"real attack pairs: {n_real} train, {len(real_val['inputs'])} validation; residual bank {len(bank)}")
    return _Data(names, pool, real_tr, real_val, bank, degradation, fit_stats)


def _draw_batch(d: _Data, cfg: TrainConfig, n_r: int, n_s: int, gen: torch.Generator):
    """One training batch: ``n_r`` patches of real attack pairs, then ``n_s`` of freshly degraded clean crops."""
    scale = int(cfg.arch["scale"])
    xs, ys = [], []
    if n_r:
        idx = torch.randint(len(d.real_tr["inputs"]), (n_r,), generator=gen)
        a, b = _patches(d.real_tr["inputs"], d.real_tr["targets"], idx, cfg.patch, gen, scale)
        xs.append(a)
        ys.append(b)
    if n_s:
        idx = torch.randint(len(d.pool), (n_s,), generator=gen)
        clean = d.pool[idx].float() / 255
        deg = d.degradation.apply(clean, gen, d.bank, scale)
        a, b = _patches(deg, clean, torch.arange(n_s), cfg.patch, gen, scale)
        xs.append(a)
        ys.append(b)
    return torch.cat(xs), torch.cat(ys)


def _optimise(net, d: _Data, cfg: TrainConfig, gen: torch.Generator, progress: bool,
              device: torch.device = torch.device("cpu")) -> list[float]:
    """``cfg.steps`` Adam steps (cosine learning-rate schedule, gradient clipping); returns the loss per step.
    Batches are drawn on the CPU (one random stream on every device) and moved to ``device``."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    T = cfg.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * min(t, T) / T))) / cfg.lr)
    n_r = int(round(cfg.batch * cfg.real_fraction)) if len(d.real_tr["inputs"]) else 0
    n_s = cfg.batch - n_r
    losses: list[float] = []
    bar = None
    if progress:
        from fedleak.progress import Bar  # a bar on a terminal, a plain line every N seconds otherwise

        bar = Bar(T, "train-enhancer", unit="step")
    for step in range(T):
        x, y = _draw_batch(d, cfg, n_r, n_s, gen)
        x, y = x.to(device), y.to(device)
        loss = patch_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise ConfigError(f"training diverged at step {step + 1} (loss {lv}); try a lower lr")
        losses.append(lv)
        if bar is not None:
            bar.update(1, postfix={"loss": f"{np.mean(losses[-50:]):.4f}"} if step % 10 == 0 or step == T - 1 else None)
    if bar is not None:
        bar.close()
    return losses


def _sidecar(data: str, cfg: TrainConfig, d: _Data, pairs: Optional[dict], pairs_path: Optional[str],
             losses: list[float], val: dict, seconds: float) -> dict:
    """What the weights' JSON sidecar records about the run."""
    tail = losses[-min(50, len(losses)):]
    return {
        "data": data,
        "photos": d.names,
        "pairs": None if pairs is None else {
            "file": pairs_path, "sha256": _sha256(Path(pairs_path)) if pairs_path and Path(pairs_path).is_file() else None,
            "train": len(d.real_tr["inputs"]), "validation": len(d.real_val["inputs"]),
            "obfuscations": sorted({b["obf"] for b in pairs["batches"]})},
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "steps": cfg.steps,
        "final_loss": float(np.mean(tail)),
        "first_loss": float(np.mean(losses[:min(50, len(losses))])),
        "loss": "mean over patches of log(MSE) + 0.5 log(L1)",
        "train_config": {k: getattr(cfg, k) for k in ("steps", "batch", "patch", "lr", "final_lr", "real_fraction",
                                                       "pool", "size", "seed", "fit")},
        "degradation": d.degradation.summary(),
        "degradation_fit": d.fit_stats,
        "validation": val,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def train(data: str, out: str | Path, cfg: TrainConfig, pairs: Optional[dict] = None, pairs_path: Optional[str] = None,
          progress: bool = True, log: Callable[[str], None] = print, device: str | torch.device = "cpu") -> dict:
    """Train an enhancer and save it to ``out`` (+ sidecar). Returns the sidecar info plus ``losses``.
    ``device``: ``auto`` | ``cpu`` | ``cuda`` (:func:`fedleak.device.resolve_device`) for the training steps."""
    from fedleak.device import resolve_device

    dev = resolve_device(device)
    if cfg.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {cfg.steps}")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 12345])
    d = _prepare(data, cfg, pairs, rng, log)
    net = EN.build(cfg.arch)
    net.to(dev).train()
    losses = _optimise(net, d, cfg, gen, progress, dev)
    net.cpu().eval()
    seconds = time.perf_counter() - t_start
    info = _sidecar(data, cfg, d, pairs, pairs_path, losses, validate(net, d.real_val), seconds)
    info["device"] = str(dev)
    EN.save(net, cfg.arch, out, info)
    info["losses"] = losses
    return info


def validate(net, pairs: dict) -> dict:
    """Raw vs enhanced PSNR on held-out real attack pairs of training crops, per obfuscation."""
    if not len(pairs["inputs"]):
        return {}
    with torch.no_grad():
        enh = torch.cat([net.enhance(pairs["inputs"][i:i + 16]) for i in range(0, len(pairs["inputs"]), 16)])
    raw_p = psnr(pairs["targets"], pairs["inputs"].clamp(0, 1))
    enh_p = psnr(pairs["targets"], enh)
    out = {}
    for name in sorted(set(pairs["obf"])):
        m = torch.tensor([o == name for o in pairs["obf"]])
        out[name] = {"n": int(m.sum()), "raw_psnr": round(float(raw_p[m].mean()), 3),
                     "enhanced_psnr": round(float(enh_p[m].mean()), 3)}
    out["all"] = {"n": len(pairs["obf"]), "raw_psnr": round(float(raw_p.mean()), 3),
                  "enhanced_psnr": round(float(enh_p.mean()), 3)}
    return out
