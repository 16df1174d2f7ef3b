"""Server-side post-processing of a reconstruction (ROG's enhancement stage): ``enhance(images, view, cfg)``.

The stage sees only what the server has after the attack: the reconstructed images and the
:class:`~fedleak.update.ServerView`. It never sees the client's images.

``enhancer:`` config section (``name`` plus options):

==============  =====================================================================================
``none``        no enhancement (default)
``learned``     the learned network of :mod:`fedleak.enhancer_net` (denoise + x4 upsampling of ROG's
                low-resolution estimate). ``weights: FILE`` (default: the weights shipped in
                ``fedleak/enhance/assets/enhancer.safetensors``, trained with ``fedleak train-enhancer``).
``classical``   weight-free baseline: recover ROG's x4-downsampled latent (least-squares inverse of the
                bicubic upsampling), denoise it (``method: tv`` -- total-variation, Chambolle, ``weight``;
                or ``method: nlm`` -- non-local means, ``h``), upsample bicubically again.
==============  =====================================================================================

Common option: ``scale`` (default 4, ROG's latent factor). See docs/enhancer.md.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.errors import ConfigError

#: classical defaults, tuned on attack outputs of TRAINING crops only (scripts/tune_classical.py)
CLASSICAL_TV_WEIGHT = 0.04
CLASSICAL_NLM_H = 0.06

_OPTIONS = {
    "none": set(),
    "learned": {"weights", "scale"},
    "classical": {"method", "weight", "h", "scale"},
}


def check_config(cfg: Any) -> dict:
    """Validate an ``enhancer:`` section (a name or a mapping); returns it as a dict. For ``learned`` the
    weights file is loaded now, so a bad file fails before a long attack rather than after it."""
    if cfg is None:
        cfg = {"name": "none"}
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if not isinstance(cfg, dict):
        raise ConfigError(f"enhancer must be a name or a mapping with a 'name', got {cfg!r}")
    name = str(cfg.get("name", "none")).lower()
    if name in ("", "null"):
        name = "none"
    if name not in _OPTIONS:
        raise ConfigError(f"enhancer {cfg.get('name')!r} is unknown; valid: {', '.join(_OPTIONS)}")
    bad = sorted(set(cfg) - {"name"} - _OPTIONS[name])
    if bad:
        raise ConfigError(f"enhancer {name!r}: unknown option(s) {bad}; valid: {sorted(_OPTIONS[name]) or 'none'}")
    scale = cfg.get("scale", 4)
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ConfigError(f"enhancer.scale must be a positive integer, got {scale!r}")
    if name == "classical":
        method = cfg.get("method", "tv")
        if method not in ("tv", "nlm"):
            raise ConfigError(f"enhancer.method {method!r}; valid: tv, nlm")
        for k in ("weight", "h"):
            v = cfg.get(k)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                raise ConfigError(f"enhancer.{k} must be a number >= 0, got {v!r}")
    if name == "learned":
        w = cfg.get("weights")
        if w is not None and not isinstance(w, (str, Path)):
            raise ConfigError(f"enhancer.weights must be a file path, got {w!r}")
        net, arch = _net(str(weights_path(cfg)))
        if int(arch["scale"]) != scale:
            raise ConfigError(f"enhancer.scale={scale} but the weights were trained for scale {arch['scale']}")
    return {**cfg, "name": name}


def weights_path(cfg: dict) -> Path:
    from fedleak.enhance.net import default_weights_path

    w = cfg.get("weights")
    return Path(w).expanduser() if w else default_weights_path()


@lru_cache(maxsize=4)
def _net_cached(path: str, mtime: float, size: int):
    from fedleak.enhance.net import load

    return load(path)


def _net(path: str):
    p = Path(path)
    if not p.is_file():
        from fedleak.enhance.net import load

        load(p)  # raises the one-line "not found" error
    st = p.stat()
    return _net_cached(str(p.resolve()), st.st_mtime, st.st_size)


def enhance(images: torch.Tensor, view: Any = None, cfg: Any = None) -> torch.Tensor:
    """Enhance reconstructed images ``(B, 3, H, W)`` in [0, 1]; returns a tensor of the same shape.

    ``view`` (the server view) is used only for consistency checks; ``cfg`` is the ``enhancer:`` section.
    """
    cfg = check_config(cfg)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"enhancer expects RGB images (B, 3, H, W), got {shape}")
    if view is not None and getattr(view, "image_size", None) not in (None, images.shape[-1]):
        raise ConfigError(f"enhancer: images are {images.shape[-1]} px wide but the server view says "
                          f"{view.image_size}")
    x = images.detach().float().clamp(0, 1).cpu()
    name = cfg["name"]
    if name == "none":
        return x.clone()
    scale = int(cfg.get("scale", 4))
    if x.shape[-1] % scale or x.shape[-2] % scale:
        raise ConfigError(f"enhancer: image size {x.shape[-2]}x{x.shape[-1]} is not divisible by scale {scale}")
    if name == "classical":
        return classical(x, scale, cfg.get("method", "tv"), cfg.get("weight"), cfg.get("h"))
    net, _ = _net(str(weights_path(cfg)))
    with torch.no_grad():
        return torch.cat([net.enhance(x[i:i + 16]) for i in range(0, x.shape[0], 16)])


# ---------------------------------------------------------------------------------------------- latent
@lru_cache(maxsize=16)
def _upsample_matrix(n: int, scale: int) -> torch.Tensor:
    """(n*scale, n) matrix U with ``F.interpolate(z, bicubic, align_corners=False)`` = U z U^T per channel."""
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, 1, n)
    out = F.interpolate(eye, size=(1, n * scale), mode="bicubic", align_corners=False)
    return out.reshape(n, n * scale).T.contiguous()


def latent(images: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """ROG's low-resolution latent behind ``images``: the least-squares inverse of bicubic x``scale``
    upsampling (exact for unclamped outputs of the ``rog`` attack)."""
    h, w = images.shape[-2] // scale, images.shape[-1] // scale
    ph = torch.linalg.pinv(_upsample_matrix(h, scale))
    pw = ph if w == h else torch.linalg.pinv(_upsample_matrix(w, scale))
    z = ph @ images.double() @ pw.T
    return z.float()


def upsample(z: torch.Tensor, scale: int = 4) -> torch.Tensor:
    return F.interpolate(z, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def classical(x: torch.Tensor, scale: int = 4, method: str = "tv", weight: Optional[float] = None,
              h: Optional[float] = None) -> torch.Tensor:
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    z = latent(x, scale).clamp(0, 1).numpy()
    out = np.empty_like(z)
    for i in range(z.shape[0]):
        img = np.ascontiguousarray(z[i].transpose(1, 2, 0), dtype=np.float64)
        if method == "tv":
            w = CLASSICAL_TV_WEIGHT if weight is None else float(weight)
            d = denoise_tv_chambolle(img, weight=w, channel_axis=-1) if w > 0 else img
        else:
            hh = CLASSICAL_NLM_H if h is None else float(h)
            d = denoise_nl_means(img, h=hh, patch_size=3, patch_distance=4, channel_axis=-1) if hh > 0 else img
        out[i] = d.transpose(2, 0, 1)
    return upsample(torch.from_numpy(out).float(), scale)
