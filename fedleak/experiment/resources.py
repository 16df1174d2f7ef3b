"""Memory guard: estimate a run's peak memory before starting it and refuse a run that cannot fit.

An attack at paper scale that is OOM-killed after an hour loses everything and says nothing; refusing up
front, with the estimate and the limit, costs nothing. The estimate is deliberately simple and rough:

* the model is built on PyTorch's ``meta`` device (no memory, no compute): parameter count ``P``, the part of
  it in large linear layers (which the attack engine never differentiates densely) and the activations per
  image ``A`` (sum of the output sizes of all leaf modules on one image);
* ``model``: ``C_PARAMS`` float32 copies of the parameters (client model, the server's copy, raw and sent
  update, the engine's model and target) plus float64 temporaries of the largest tensor (update statistics);
* ``client``: one forward/backward over the client's (local) batch;
* ``attack``: the attacker's double-backward graph, ``C_ACT`` x activations per image x images per local
  step x local steps (FedAvg is unrolled: every step's graph is kept), plus the step gradients of the small
  (dense) parameters kept for every unrolled step;
* ``image decoding``: ``C_DECODE`` bytes per pixel of the largest image file the run decodes, its size read
  from the file's header without decoding it;
* plus the process as it is now (resident set) and a fixed slack for metrics, plots and the allocator.

The same guard covers ``fedleak simulate`` (no attack part), every sweep cell (each is a ``run``) and the two
training commands (:func:`training_estimate`: parameters, gradients, Adam moments, one training batch, the
training data and the decoding of the largest photo).

The coefficients were calibrated against the measured peak RSS of small runs (``docs/robustness.md``, table
"memory guard calibration"); the estimate was above the measurement for all of them.

The limit is ``MemAvailable`` from ``/proc/meminfo`` (or ``psutil`` when installed), further capped by a
cgroup memory limit when one applies. ``fedleak run --force`` (or ``run(..., force=True)``) skips the refusal;
``FEDLEAK_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix) replaces the measured limit.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fedleak.errors import FedleakError

#: float32 copies of all parameters alive at the peak (see the module docstring)
C_PARAMS = 4.0
#: bytes per element of the largest parameter tensor held transiently (the client's update statistics are
#: computed in float64: three temporaries of the largest tensor)
C_LARGEST = 24.0
#: multiple of (activations per image x images per step x steps) held by the attacker's double-backward graph
C_ACT = 8.0
#: multiple of the dense (small) parameters' size held per unrolled local step in the attack graph
C_STEP = 1.0
#: multiple of (activations x batch) for the client's forward/backward
C_CLIENT = 2.0
#: metrics, plots, allocator slack (the calibration table in docs/robustness.md was fitted with 256 MiB)
SLACK = 256 << 20
#: bytes per pixel while one image is decoded, converted to float32 RGB and resized (Pillow's decoded image, the
#: float32 array and the resize temporaries): measured 40 B/px for an RGB PNG and 46 B/px for a 16-bit grey PNG
#: (16 Mpx, ``ru_maxrss`` of a fresh process; docs/robustness.md), with a margin
C_DECODE = 56.0
#: refuse when the estimate exceeds this fraction of the available memory
HEADROOM = 0.9


class ResourceError(FedleakError):
    """The run would need more memory than is available."""


@dataclass
class Estimate:
    total: int  # bytes: the process now + everything the run adds
    added: int  # bytes the run adds on top of the current process
    parts: dict[str, int] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        ps = ", ".join(f"{k} {gib(v)}" for k, v in self.parts.items())
        return f"~{gib(self.total)} ({ps})"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def _status_bytes(key: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss() -> int:
    """Resident set size of this process in bytes (0 if unknown)."""
    rss = _status_bytes("VmRSS")
    if rss is not None:
        return rss
    try:
        import psutil  # type: ignore

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return 0


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (0 if unknown).

    ``VmHWM`` from ``/proc/self/status``: it belongs to the address space, which ``execve`` replaces, so a
    child started by a large process reports its own peak. ``ru_maxrss`` (the fallback off Linux) does not:
    Linux carries the parent's peak at fork over into the child's ``ru_maxrss``.
    """
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource
    import sys

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def _parse_bytes(text: str) -> Optional[int]:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text or "")
    if not m:
        return None
    mult = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def _cgroup_available() -> Optional[int]:
    """Room left under a cgroup memory limit (v2 or v1), or None when no limit applies."""
    cands = [(Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current"), Path("/sys/fs/cgroup/memory.stat"),
              "inactive_file"),
             (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
              Path("/sys/fs/cgroup/memory/memory.stat"), "total_inactive_file")]
    for lim_p, use_p, stat_p, inactive_key in cands:
        try:
            lim_t = lim_p.read_text().strip()
            if lim_t == "max":
                return None
            limit = int(lim_t)
            usage = int(use_p.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:  # "unlimited"
            return None
        inactive = 0
        try:
            for line in stat_p.read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == inactive_key:
                    inactive = int(v)
        except (OSError, ValueError):
            pass
        return max(0, limit - (usage - inactive))  # page cache that can be dropped is not "used"
    return None


def available_bytes() -> tuple[Optional[int], str]:
    """``(bytes, where it came from)``: memory a new allocation can get without swapping or being killed."""
    env = os.environ.get("FEDLEAK_MEMORY_LIMIT")
    if env:
        v = _parse_bytes(env)
        if v is None:
            from fedleak.errors import ConfigError

            raise ConfigError(f"FEDLEAK_MEMORY_LIMIT={env!r} is not a size (bytes, or a number with K/M/G)")
        return v, "FEDLEAK_MEMORY_LIMIT"
    avail, src = None, "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail, src = int(line.split()[1]) * 1024, "MemAvailable"
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            import psutil  # type: ignore

            avail, src = int(psutil.virtual_memory().available), "psutil"
        except Exception:
            pass
    cg = _cgroup_available()
    if cg is not None and (avail is None or cg < avail):
        avail, src = cg, "cgroup memory limit"
    return avail, src


def _profile(build, image_size: int, threshold: int) -> dict:
    """Parameter count, big-linear parameter count, largest tensor and activations per image of the model
    ``build()`` makes, built and run on PyTorch's ``meta`` device (no memory, no compute)."""
    import torch
    from torch import nn

    with torch.device("meta"):
        model = build()
    params = sum(p.numel() for p in model.parameters())
    largest = max((p.numel() for p in model.parameters()), default=0)
    big = sum(m.weight.numel() for m in model.modules()
              if isinstance(m, nn.Linear) and m.weight.numel() >= threshold)
    acts = [0]

    def hook(mod, inputs, out):
        for o in (out if isinstance(out, (tuple, list)) else [out]):
            if torch.is_tensor(o):
                acts[0] += o.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return {"params": params, "big_params": big, "largest": largest, "acts_per_image": acts[0]}


def model_profile(cfg) -> dict:
    """:func:`_profile` of the config's model (``model:`` section at ``data.size``)."""
    from fedleak.attacks.engine import EngineConfig
    from fedleak.client.models import build_model

    kw = dict(num_classes=cfg.model.num_classes, image_size=cfg.data.size, width=cfg.model.width,
              activation=cfg.model.activation, seed=0, **cfg.model.options)
    threshold = cfg.attack.get("big_threshold", EngineConfig.model_fields["big_threshold"].default)
    if not isinstance(threshold, int):
        threshold = EngineConfig.model_fields["big_threshold"].default
    return _profile(lambda: build_model(cfg.model.name, **kw), cfg.data.size, threshold)


def image_pixels(paths) -> list[int]:
    """Pixel counts of image files, read from their headers (Pillow's ``Image.open`` does not decode); a file
    that cannot be opened, or that the loader would refuse as a decompression bomb, counts 0 (the loader
    reports it)."""
    import warnings

    from PIL import Image

    out = []
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(p) as im:
                    w, h = im.size
            out.append(int(w) * int(h))
        except Exception:  # unreadable, a bomb, not an image: the loader gives the one-line error
            out.append(0)
    return out


def data_files(data) -> list[Path]:
    """The image files a ``data:`` section will decode (``start`` .. ``start + batch_size``), without decoding
    them; none for the pip-installed public sets (already small arrays) and for a folder that is not there
    (the loader reports that)."""
    from fedleak.client.data import builtin_listing, folder_listing, sample_order
    from fedleak.client.public_data import DATASETS

    if data.source in DATASETS:  # pip-installed arrays, already small
        return []
    if data.source == "builtin":
        listing = builtin_listing(data.size, data.resize)
    elif Path(data.source).expanduser().is_dir():
        try:
            listing = folder_listing(data.source, data.size, data.resize, data.labels)
        except FedleakError:  # e.g. a flat folder without labels: the loader gives the one-line error
            return []
    else:  # .npz arrays, import: datasets (no image file to decode), or a missing folder (the loader says so)
        return []
    order = sample_order(listing, data.shuffle, data.seed)[data.start: data.start + data.batch_size]
    return [listing.files[i] for i in order]


def decode_bytes(pixels: list[int]) -> int:
    """Transient memory of decoding the largest of these images (they are decoded one at a time)."""
    return int(C_DECODE * max(pixels, default=0))


def _load_run_libraries() -> None:
    """Import what a run imports anyway (plots, metrics, image I/O): their resident size is part of the peak,
    and it differs between installations, so it is measured rather than modelled."""
    import importlib

    for name in ("matplotlib.pyplot", "scipy.optimize", "skimage.metrics", "cv2", "fedleak.metrics.scores",
                 "fedleak.metrics.plots"):
        try:
            importlib.import_module(name)
        except Exception:  # optional or broken library: the run will report it itself
            pass


def estimate(cfg, stage: str = "run") -> Estimate:
    """Rough peak memory of ``fedleak run`` (``stage="run"``) or of ``fedleak simulate`` (``"simulate"``: the
    client side only, no attack) for a validated :class:`~fedleak.config.RunConfig`."""
    prof = model_profile(cfg)
    P, Pbig, A = prof["params"], prof["big_params"], prof["acts_per_image"]
    B = cfg.data.batch_size
    p = cfg.protocol
    if p.name == "fedavg":
        steps = p.local_steps * p.epochs
        per_step = min(B, p.local_batch_size or B)
    else:
        steps, per_step = 1, B
    dtype = cfg.attack.get("dtype", "float32")
    ab = 8 if dtype == "float64" else 4
    restarts = cfg.attack.get("restarts", 1)
    restarts = restarts if isinstance(restarts, int) and restarts > 0 else 1
    pixels = image_pixels(data_files(cfg.data))
    parts = {
        "model": int(C_PARAMS * P * 4 + (P * (ab - 4) * 2)  # float64 attack: model + target copies double
                     + C_LARGEST * prof["largest"]),
        "client": int(C_CLIENT * A * per_step * 4),
        "attack": int(C_ACT * A * per_step * steps * ab + C_STEP * (P - Pbig) * steps * ab
                      + 4 * B * 3 * cfg.data.size ** 2 * ab * (2 + restarts)),  # latents, Adam moments, best images
        "image decoding": decode_bytes(pixels),
        "slack": SLACK,
    }
    if stage == "simulate":
        del parts["attack"]
    details = {"params": P, "big_linear_params": Pbig, "activations_per_image": A, "images_per_step": per_step,
               "local_steps": steps, "largest_image_pixels": max(pixels, default=0)}
    return _with_process(parts, details)


def _with_process(parts: dict, details: dict) -> Estimate:
    added = sum(parts.values())
    _load_run_libraries()  # so that "process now" includes the libraries every run loads
    now = current_rss()
    return Estimate(total=now + added, added=added, parts={"process now": now, **parts}, details=details)


def training_estimate(build, image_size: int, batch: int, data_bytes: int, pixels: list[int],
                      eval_batch: int = 0) -> Estimate:
    """Peak memory of training the model ``build()`` makes with Adam (``train-victim``, ``train-enhancer``):
    parameters, gradients and two Adam moments; one forward/backward over ``batch`` images of ``image_size``
    (plus a no-grad evaluation batch); the training data held in memory (``data_bytes``); decoding the largest
    image file (``pixels``: their pixel counts)."""
    try:
        prof = _profile(build, image_size, 1 << 62)
    except FedleakError:
        raise
    except Exception:  # a shape the model cannot take: the command reports it; estimate the rest
        prof = {"params": 0, "big_params": 0, "largest": 0, "acts_per_image": 0}
    parts = {"model": int(4 * prof["params"] * 4),
             "training": int(C_CLIENT * prof["acts_per_image"] * batch * 4 + prof["acts_per_image"] * eval_batch * 4),
             "data": int(data_bytes), "image decoding": decode_bytes(pixels), "slack": SLACK}
    return _with_process(parts, {**prof, "largest_image_pixels": max(pixels, default=0)})


def guard(est: Estimate, force: bool = False, available: Optional[int] = None, log=None,
          hint: str = "reduce data.batch_size, data.size or protocol.local_steps", what: str = "this run"
          ) -> Estimate:
    """Raise :class:`ResourceError` (one line: the estimate, its parts and the limit) when ``est`` does not fit
    in ``HEADROOM`` x the available memory, unless ``force`` (then it is logged)."""
    src = "given"
    if available is None:
        available, src = available_bytes()
    if log:
        log(f"memory estimate {est.describe()}; available {gib(available) if available else '?'} ({src})")
    if available is not None and est.added > HEADROOM * available:
        msg = (f"{what} needs an estimated {gib(est.total)} of memory ({gib(est.added)} more than now: "
               + ", ".join(f"{k} {gib(v)}" for k, v in est.parts.items() if k != "process now")
               + f") but only {gib(available)} is available ({src}); {hint}, or pass --force to try anyway")
        if not force:
            raise ResourceError(msg)
        if log:
            log("memory guard overridden (--force): " + msg)
    return est


def check(cfg, force: bool = False, available: Optional[int] = None, log=None, stage: str = "run"
          ) -> Optional[Estimate]:
    """Estimate the run's memory (:func:`estimate`) and :func:`guard` it. Returns the estimate (None when the
    model cannot be profiled, e.g. an ``import:`` model that does not run on the meta device)."""
    available_bytes()  # a bad FEDLEAK_MEMORY_LIMIT is refused even when no estimate can be made
    try:
        est = estimate(cfg, stage)
    except FedleakError:
        raise
    except Exception as e:  # a custom model that cannot run on the meta device: no estimate, no refusal
        if log:
            log(f"memory estimate unavailable ({type(e).__name__}: {e}); not checked")
        return None
    hint = ("reduce data.batch_size or data.size" if stage == "simulate"
            else "reduce data.batch_size, data.size or protocol.local_steps")
    return guard(est, force=force, available=available, log=log, hint=hint)


def victim_estimate(plan) -> Estimate:
    """:func:`training_estimate` of ``fedleak train-victim`` for a validated
    :class:`~fedleak.experiment.victims.VictimPlan`: the whole public data set is held as float32 images of
    ``plan.size`` (train and test split, plus the resize temporaries), accuracy runs in batches of 256."""
    from fedleak.client.models import build_model
    from fedleak.client.public_data import load_public

    small = load_public(plan.data, "all", 8)  # 8x8: only the count and the classes are needed
    n, n_cls = int(small.labels.numel()), int(small.labels.max()) + 1
    kwargs = dict(num_classes=n_cls, image_size=plan.size, width=plan.width, seed=plan.seed)
    return training_estimate(lambda: build_model(plan.model, **kwargs), plan.size, plan.batch_size,
                             data_bytes=3 * n * 3 * plan.size ** 2 * 4, pixels=[], eval_batch=256)


def enhancer_estimate(data: str, arch: dict, batch: int, patch: int, pool: int, crop_size: int) -> Estimate:
    """:func:`training_estimate` of ``fedleak train-enhancer``: every training photo is held decoded (float32
    RGB), the clean-crop pool as uint8, and one batch of ``batch`` patches trains the network."""
    from fedleak.enhance import net as EN
    from fedleak.enhance.data import photo_paths

    pixels = image_pixels(photo_paths(data))
    return training_estimate(lambda: EN.build(arch), patch, batch,
                             data_bytes=12 * sum(pixels) + pool * 3 * crop_size ** 2, pixels=pixels)
