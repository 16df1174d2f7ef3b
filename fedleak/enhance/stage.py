"""Server-side post-processing of a reconstruction (ROG's enhancement stage): ``enhance(images, view, section)``.

The stage sees only what the server has after the attack: the reconstructed images and the
:class:`~fedleak.server.view.ServerView`. It never sees the client's images.

Enhancers are chosen by name from :data:`ENHANCERS`; each entry is an :class:`Enhancer` registered with its
typed options model. The ``enhancer:`` config section is a name or a mapping with ``name`` plus options:

==============  =====================================================================================
``none``        no enhancement (default; also ``""`` and ``null``). No options.
``learned``     the learned network of :mod:`fedleak.enhance.net` (denoise + x4 upsampling of ROG's
                low-resolution estimate). ``weights: FILE`` (default: the weights shipped in
                ``fedleak/enhance/assets/enhancer.safetensors``, trained with ``fedleak train-enhancer``);
                ``scale`` must match the weights.
``classical``   weight-free baseline: recover ROG's x4-downsampled latent (least-squares inverse of the
                bicubic upsampling), denoise it (``method: tv`` -- total-variation, Chambolle, ``weight``;
                or ``method: nlm`` -- non-local means, ``h``), upsample bicubically again.
==============  =====================================================================================

``scale`` (default 4) is ROG's latent factor. Adding an enhancer is one :meth:`Registry.register` call of an
:class:`Enhancer`. See docs/enhancer.md.

**Acceptance test** (any enhancer): when :func:`enhance` is given the update and the attack's reconstruction,
each image is replaced by the blend ``(1 - a) raw + a enhanced`` with ``a`` in ``blend`` (default 0, 0.25, 0.5,
0.75, 1) only when that explains the update better (greedy, one image after the other, evaluated in float32):

* ``accept: layers`` (the default): the attack's gradient-matching loss drops *and* no parameter's own
  matching loss rises (a blend may not trade one layer's fit for another's; on LeNet the one large linear
  layer dominates the total, and blends that lowered only it cost PSNR: docs/enhancer.md);
* ``accept: loss``: the total matching loss drops; ``accept: objective``: the loss plus the last stage's priors.

``margin`` asks the total to drop by more than that fraction. ``a = 0`` (the raw image) is always a candidate,
so the loss never increases. It uses only the server's view: the update, the model and the attack's own labels.
``accept: none`` (or no update given) returns the enhanced images as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from fedleak.device import current_device
from fedleak.enhance import net as EN
from fedleak.errors import ConfigError
from fedleak.options import NoOptions, Options
from fedleak.registry import Registry

#: classical defaults, tuned on attack outputs of TRAINING crops only (scripts/tune_classical.py)
CLASSICAL_TV_WEIGHT = 0.04
CLASSICAL_NLM_H = 0.06

#: names that mean "no enhancement"
NONE_NAMES = ("", "null", "none")


@dataclass(frozen=True)
class Enhancer:
    """One enhancement method.

    ``run(images, options)`` gets CPU float images ``(B, 3, H, W)`` in [0, 1] and the validated options (an
    instance of the model the entry was registered with); it returns images of the same shape.
    ``check(options)``, if given, runs when the config is checked (before the attack), e.g. to load a file.
    """

    run: Callable[[torch.Tensor, Any], torch.Tensor]
    check: Optional[Callable[[Any], None]] = None


ENHANCERS: Registry[Enhancer] = Registry("enhancer")


# ---------------------------------------------------------------------------------------------- dispatch
class Acceptance(Options):
    """The acceptance test's options (keys of any ``enhancer:`` section; see the module docstring)."""

    accept: Literal["layers", "loss", "objective", "none"] = "layers"
    blend: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    #: a blend replaces the current image only when it lowers the loss by more than this fraction
    margin: float = Field(0.0, ge=0, lt=1)

    @field_validator("blend")
    @classmethod
    def _alphas(cls, v):
        if any(not 0 <= a <= 1 for a in v):
            raise ValueError("blend weights must lie in [0, 1]")
        return sorted(set(float(a) for a in v) | {0.0})


def _acceptance(raw: dict) -> Acceptance:
    """The acceptance keys of ``raw``, removed from it and validated."""
    from fedleak.options import validate_options

    return validate_options(Acceptance, {k: raw.pop(k) for k in list(raw) if k in Acceptance.model_fields},
                            "enhancer")


def _resolve(section: Any) -> tuple[str, Enhancer, Options, Acceptance]:
    """Name, entry, validated options and acceptance options of an ``enhancer:`` section (its check hook
    has run)."""
    if section is None:
        section = {"name": "none"}
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        raise ConfigError(f"enhancer must be a name or a mapping with a 'name', got {section!r}")
    raw = dict(section)
    acceptance = _acceptance(raw)
    name = raw.pop("name", "none")
    name = "none" if name is None or str(name).lower() in NONE_NAMES else str(name)
    key = ENHANCERS.resolve(name)
    model = ENHANCERS.options_model(key)
    if raw and model is not None and not model.model_fields:
        raise ConfigError(f"enhancer {key!r} takes no options, got {sorted(raw)}")
    opts = ENHANCERS.options(key, raw)
    entry = ENHANCERS.get(key)
    if entry.check is not None:
        entry.check(opts)
    return key, entry, opts, acceptance


def check_config(section: Any) -> dict:
    """Validate an ``enhancer:`` section (a name or a mapping with ``name``); returns ``{name, **options}`` with
    every option filled in (the acceptance test's too, except for ``none``). For ``learned`` the weights file
    is loaded now, so a bad file fails before a long attack rather than after it."""
    key, _, opts, acceptance = _resolve(section)
    return {"name": key, **opts.to_dict(), **({} if key == "none" else acceptance.to_dict())}


def enhance(images: torch.Tensor, view: Any = None, section: Any = None, update: Any = None,
            rec: Any = None) -> torch.Tensor:
    """Enhance reconstructed images ``(B, 3, H, W)`` in [0, 1]; returns a tensor of the same shape.

    ``view`` (the server view) is used for consistency checks and, with ``update`` (what the server received)
    and ``rec`` (the attack's reconstruction, whose ``images`` these are), for the acceptance test;
    ``section`` is the ``enhancer:`` section. The chosen blend weights are left in
    ``rec.info["enhancer_blend"]``.
    """
    key, entry, opts, acceptance = _resolve(section)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"enhancer expects RGB images (B, 3, H, W), got {shape}")
    if view is not None and view.image_size not in (None, images.shape[-1]):
        raise ConfigError(f"enhancer: images are {images.shape[-1]} px wide but the server view says "
                          f"{view.image_size}")
    x = images.detach().float().clamp(0, 1).cpu()
    out = entry.run(x, opts)
    attack_config = rec.info.get("attack_config") if rec is not None else None
    if key == "none" or acceptance.accept == "none" or update is None or view is None or not attack_config:
        return out
    out, alphas = accept_blend(x, out, view, update, rec, acceptance)
    rec.info["enhancer_blend"] = alphas
    return out


def accept_blend(raw: torch.Tensor, enhanced: torch.Tensor, view: Any, update: Any, rec: Any,
                 acceptance: Acceptance) -> tuple[torch.Tensor, list[float]]:
    """Per image, the blend weight of ``blend`` with the lowest attack loss (greedy over the images, 0 = raw
    kept when nothing is lower); returns the images and the chosen weights."""
    from fedleak.attacks.engine.stages import attack_objective

    score, close = attack_objective(view, update, rec.info["attack_config"], rec.labels,
                                    priors=acceptance.accept == "objective")
    try:
        cur = raw.clone()
        best = score(cur)
        chosen = [0.0] * raw.shape[0]
        for i in range(raw.shape[0]):
            keep = cur[i].clone()
            for a in acceptance.blend[1:]:
                cur[i] = ((1 - a) * raw[i] + a * enhanced[i]).clamp(0, 1)
                val = score(cur)
                if _better(val, best, acceptance):
                    best, chosen[i], keep = val, a, cur[i].clone()
            cur[i] = keep
    finally:
        close()
    return cur, chosen


def _better(val: Any, best: Any, acceptance: Acceptance) -> bool:
    """Whether candidate score ``val`` replaces ``best`` (:class:`~fedleak.attacks.engine.stages.Score` both):
    its total is lower by more than the margin and, for ``accept: layers``, no parameter's loss is higher."""
    if not val.total < best.total * (1 - acceptance.margin):
        return False
    return acceptance.accept != "layers" or all(v <= b for v, b in zip(val.layers, best.layers))


def _check_divisible(x: torch.Tensor, scale: int) -> None:
    if x.shape[-1] % scale or x.shape[-2] % scale:
        raise ConfigError(f"enhancer: image size {x.shape[-2]}x{x.shape[-1]} is not divisible by scale {scale}")


# ---------------------------------------------------------------------------------------------- none
ENHANCERS.register("none", doc="no post-processing (default)", options=NoOptions)(
    Enhancer(run=lambda x, opts: x.clone()))


# ---------------------------------------------------------------------------------------------- learned
class LearnedOptions(Options):
    weights: Optional[str] = Field(None, description="weights file (default: the shipped weights)")
    scale: int = Field(4, ge=1, strict=True, description="ROG's latent factor; must match the weights")

    @field_validator("weights", mode="before")
    @classmethod
    def _path(cls, v):
        if v is not None and not isinstance(v, (str, Path)):
            raise ValueError("must be a file path")
        return None if v is None else str(v)


def weights_path(opts: LearnedOptions) -> Path:
    """The weights file of a ``learned`` section: ``weights`` or the shipped default."""
    return Path(opts.weights).expanduser() if opts.weights else EN.default_weights_path()


@lru_cache(maxsize=4)
def _net_cached(path: str, mtime: float, size: int):
    return EN.load(path)


def _net(path: Path):
    if not path.is_file():
        EN.load(path)  # raises the one-line "not found" error
    st = path.stat()
    return _net_cached(str(path.resolve()), st.st_mtime, st.st_size)


def _check_learned(opts: LearnedOptions) -> None:
    _, arch = _net(weights_path(opts))
    if int(arch["scale"]) != opts.scale:
        raise ConfigError(f"enhancer.scale={opts.scale} but the weights were trained for scale {arch['scale']}")


def _run_learned(x: torch.Tensor, opts: LearnedOptions) -> torch.Tensor:
    _check_divisible(x, opts.scale)
    net, _ = _net(weights_path(opts))
    dev = current_device()  # the run's device (fedleak.device); the result comes back on the CPU
    with torch.no_grad():
        return torch.cat([net.to(dev).enhance(x[i:i + 16].to(dev)).cpu() for i in range(0, x.shape[0], 16)])


ENHANCERS.register("learned", options=LearnedOptions,
                   doc="ROG's learned post-processing network (denoise + x4 upsampling); weights: FILE")(
    Enhancer(run=_run_learned, check=_check_learned))


# ---------------------------------------------------------------------------------------------- classical
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
    """Latent of ``x``, denoised per image (TV with ``weight`` or NLM with ``h``; 0 = off), upsampled again."""
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


class ClassicalOptions(Options):
    method: Literal["tv", "nlm"] = "tv"
    weight: Optional[float] = Field(None, ge=0, strict=True, description=f"TV weight (default {CLASSICAL_TV_WEIGHT})")
    h: Optional[float] = Field(None, ge=0, strict=True, description=f"NLM h (default {CLASSICAL_NLM_H})")
    scale: int = Field(4, ge=1, strict=True, description="ROG's latent factor")


def _run_classical(x: torch.Tensor, opts: ClassicalOptions) -> torch.Tensor:
    _check_divisible(x, opts.scale)
    return classical(x, opts.scale, opts.method, opts.weight, opts.h)


ENHANCERS.register("classical", options=ClassicalOptions,
                   doc="weight-free: recover ROG's x4 latent, denoise (TV or NLM), upsample again")(
    Enhancer(run=_run_classical))
