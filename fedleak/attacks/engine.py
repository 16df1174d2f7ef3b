"""The gradient-matching attack engine. Named attacks (``presets.py``) are settings of :func:`run_engine`.

Parts:

* parameterisation of the unknown images: full-resolution ``pixels`` or a ``lowres`` latent upsampled
  bicubically by ``scale`` (ROG); ``box`` (projected to [0, 1] after each step) or ``sigmoid`` mapping;
* matching loss: ``l2`` or ``cosine``, per-parameter ``layer_weights``, obfuscation-aware ``aware`` mode;
* priors: total variation ``tv`` (optionally scaled by image side / ``tv_size``: the mean pixel difference of a
  natural image shrinks with resolution, so one weight then suits 32x32 and 128x128); outputs are clamped to [0, 1];
* optimisers: ``adam`` (optionally ``signed`` steps, as Inverting Gradients), ``lbfgs`` (DLG);
  schedules ``cosine`` (to ``final_lr_factor`` x lr), ``multistep`` (x0.1 at 3/8, 5/8, 7/8), ``none``;
* ``restarts`` keeping the lowest matching loss;
* labels: ``known`` (shared with the server), ``idlg``, ``yin``, ``llg``, ``optimize`` (DLG's joint soft
  labels) or ``auto`` (known if shared, else idlg for one image, llg for a batch);
* FedAvg updates are attacked by unrolling the client's local steps (``simulate.ForwardModel.fedavg``).

Long runs checkpoint atomically every ``checkpoint_every`` iterations to ``checkpoint`` and resume from it.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from fedleak.errors import ConfigError, NumericalError
from fedleak.attacks import Reconstruction
from fedleak.attacks.labels import METHODS as LABEL_METHODS
from fedleak.attacks.labels import recover_labels
from fedleak.attacks.matching import Matcher, matching_mode
from fedleak.attacks.simulate import ForwardModel


@dataclass
class EngineConfig:
    iterations: int = 100
    lr: float = 0.05
    optimizer: str = "adam"  # adam | lbfgs
    signed: bool = False  # use sign of the gradient in Adam (Inverting Gradients)
    schedule: str = "cosine"  # cosine | multistep | none
    final_lr_factor: float = 0.1
    param: str = "pixels"  # pixels | lowres
    scale: int = 4
    mapping: str = "box"  # box (project to [0,1]) | sigmoid | none (unconstrained; output clamped)
    init: str = "uniform"  # uniform | randn | gray
    loss: str = "l2"  # l2 | cosine
    layer_weights: Optional[dict[str, float]] = None
    tv: float = 0.0
    tv_size: Optional[int] = None  # if set, the TV weight is tv * (image side / tv_size)
    restarts: int = 1
    labels: str = "auto"
    aware: Any = "auto"  # auto | none | mask | sign | quant
    fast: bool = True  # Gram/low-rank evaluation of large linear layers
    big_threshold: int = 1 << 20
    seed: int = 0
    threads: Optional[int] = None
    checkpoint: Optional[str] = None
    checkpoint_every: int = 50
    resume: bool = True
    on_nan: str = "error"  # error | restart (from the last good state)
    max_nan_restarts: int = 3
    callback_every: int = 1
    lbfgs_inner: int = 1  # L-BFGS iterations per outer iteration
    line_search: Optional[str] = "strong_wolfe"  # L-BFGS line search (None: fixed step lr, as DLG)
    dtype: str = "float32"  # float32 | float64 (exact matching for tiny cases / L-BFGS)
    precision: str = "float32"  # float32 | bfloat16 (autocast of the simulated update) | auto (see below)

    def validate(self) -> "EngineConfig":
        def bad(what, valid):
            raise ConfigError(f"attack option {what}={getattr(self, what)!r}; valid: {valid}")

        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"attack option iterations must be a positive integer, got {self.iterations!r}")
        if self.iterations > 10_000_000:
            raise ConfigError(f"attack option iterations={self.iterations} is unreasonably large")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"attack option lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in ("adam", "lbfgs"):
            bad("optimizer", "adam, lbfgs")
        if self.schedule not in ("cosine", "multistep", "none"):
            bad("schedule", "cosine, multistep, none")
        if self.param not in ("pixels", "lowres"):
            bad("param", "pixels, lowres")
        if not isinstance(self.scale, int) or self.scale < 1:
            raise ConfigError(f"attack option scale must be a positive integer, got {self.scale!r}")
        if self.mapping not in ("box", "sigmoid", "none"):
            bad("mapping", "box, sigmoid, none")
        if self.init not in ("uniform", "randn", "gray"):
            bad("init", "uniform, randn, gray")
        if self.loss not in ("l2", "cosine"):
            bad("loss", "l2, cosine")
        if self.labels not in LABEL_METHODS:
            bad("labels", ", ".join(LABEL_METHODS))
        if self.dtype not in ("float32", "float64"):
            bad("dtype", "float32, float64")
        if self.precision not in PRECISIONS:
            bad("precision", ", ".join(PRECISIONS))
        if self.on_nan not in ("error", "restart"):
            bad("on_nan", "error, restart")
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise ConfigError(f"attack option restarts must be a positive integer, got {self.restarts!r}")
        if not (isinstance(self.tv, (int, float)) and self.tv >= 0):
            raise ConfigError(f"attack option tv must be >= 0, got {self.tv!r}")
        if self.tv_size is not None and (not isinstance(self.tv_size, int) or self.tv_size < 1):
            raise ConfigError(f"attack option tv_size must be a positive integer or null, got {self.tv_size!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise ConfigError(f"attack option checkpoint_every must be a positive integer, got {self.checkpoint_every!r}")
        matching_mode([], self.aware)  # validates the value
        return self


PRECISIONS = ("float32", "bfloat16", "auto")
#: smallest batch for which ``precision: auto`` picks bfloat16 (below it bfloat16 measured no faster)
AUTO_BF16_MIN_BATCH = 4


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (oneDNN: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(cfg: "EngineConfig", batch_size: int) -> Optional[torch.dtype]:
    """The autocast dtype of the simulated update, or None for full precision.

    ``auto`` picks bfloat16 only where benchmarks/speed.py and benchmarks/quality.py showed it pays and quality
    holds (docs/results.md): Adam, float32 latent, a batch of at least ``AUTO_BF16_MIN_BATCH`` images, and a CPU
    with native bfloat16. L-BFGS (DLG) and float64 runs always stay in full precision.
    """
    if cfg.precision == "float32" or cfg.dtype != "float32":
        return None
    if cfg.precision == "bfloat16":
        return torch.bfloat16
    if cfg.optimizer == "adam" and batch_size >= AUTO_BF16_MIN_BATCH and native_bfloat16():
        return torch.bfloat16
    return None


def total_variation(x: torch.Tensor) -> torch.Tensor:
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


class Latent:
    """The optimised variable and its map to images in [0, 1]."""

    def __init__(self, cfg: EngineConfig, shape: tuple[int, ...], generator: torch.Generator,
                 dtype: torch.dtype = torch.float32):
        b, c, h, w = shape
        self.cfg = cfg
        self.size = (h, w)
        if cfg.param == "lowres":
            if h % cfg.scale or w % cfg.scale:
                raise ConfigError(f"image size {h}x{w} is not divisible by attack scale {cfg.scale}")
            lshape = (b, c, h // cfg.scale, w // cfg.scale)
        else:
            lshape = (b, c, h, w)
        if cfg.init == "uniform":
            z = torch.rand(lshape, generator=generator)
        elif cfg.init == "randn":
            z = torch.randn(lshape, generator=generator)
            if cfg.mapping == "box":
                z = (0.5 + 0.25 * z).clamp(0, 1)
        else:
            z = torch.full(lshape, 0.5)
        if cfg.mapping == "sigmoid" and cfg.init != "randn":
            z = torch.logit(z.clamp(1e-3, 1 - 1e-3))
        self.z = z.to(dtype).requires_grad_(True)

    def images(self) -> torch.Tensor:
        z = self.z
        if self.cfg.mapping == "sigmoid":
            z = torch.sigmoid(z)
        if self.cfg.param == "lowres" and self.cfg.scale > 1:
            z = F.interpolate(z, size=self.size, mode="bicubic", align_corners=False)
        return z

    @torch.no_grad()
    def project(self):
        if self.cfg.mapping == "box":
            self.z.clamp_(0, 1)


def _lr_lambda(cfg: EngineConfig) -> Callable[[int], float]:
    T = cfg.iterations
    if cfg.schedule == "cosine":
        f = cfg.final_lr_factor
        return lambda t: f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(t, T) / T))
    if cfg.schedule == "multistep":
        ms = [int(T * 3 / 8), int(T * 5 / 8), int(T * 7 / 8)]
        return lambda t: 0.1 ** sum(t >= m for m in ms)
    return lambda t: 1.0


def check_update(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The update must have one tensor per model parameter, with the same shape and finite values."""
    out = {}
    for k, p in model.named_parameters():
        if k not in tensors:
            raise ConfigError(f"update has no tensor for model parameter {k!r} (does the model match?)")
        t = tensors[k]
        if tuple(t.shape) != tuple(p.shape):
            raise ConfigError(f"update tensor {k!r} has shape {tuple(t.shape)}, model expects {tuple(p.shape)}")
        if not torch.isfinite(t).all():
            raise NumericalError(f"update tensor {k!r} contains NaN or Inf")
        out[k] = t.detach().float()
    extra = set(tensors) - set(out)
    if extra:
        raise ConfigError(f"update has tensors the model does not: {sorted(extra)[:5]}")
    return out


def resolve_labels(cfg: EngineConfig, view, update, model, target) -> tuple[Optional[torch.Tensor], str]:
    method = cfg.labels
    if method == "auto":
        method = "known" if update.labels is not None else ("idlg" if view.batch_size == 1 else "llg")
    if method == "known":
        if update.labels is None:
            raise ConfigError("attack labels=known but the client did not share labels "
                              "(protocol.share_labels=false); use labels: idlg, yin, llg or optimize")
        return update.labels.clone().long(), method
    if method == "optimize":
        return None, method
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    return recover_labels(method, model, target, view.batch_size, view.image_shape, gen), method


def run_engine(view, update, cfg: EngineConfig, callback=None) -> Reconstruction:
    cfg.validate()
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = view.build_model()
    dtype = getattr(torch, cfg.dtype)
    model.to(dtype)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    target = check_update(model, update.tensors)
    if update.kind == "delta":
        if not update.lr:
            raise ConfigError("update is a weight delta but its learning rate is unknown")
        target = {k: v / update.lr for k, v in target.items()}
    target = {k: v.to(dtype) for k, v in target.items()}
    labels, label_method = resolve_labels(cfg, view, update, model, target)
    mode = matching_mode(update.obfuscation, cfg.aware)
    quant_levels = None
    if mode == "quant":
        quant_levels = int(update.obfuscation[-1].get("levels", 0)) or None
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    autocast = resolve_precision(cfg, view.batch_size)
    fwd = ForwardModel(model, params, buffers, cfg.big_threshold, cfg.fast, autocast)
    weights = None
    if cfg.layer_weights:
        weights = {}
        for k in params:
            for pat, w in cfg.layer_weights.items():
                if pat in k:
                    weights[k] = float(w)
    matcher = Matcher(target, cfg.loss, mode, weights, tuple(fwd.big), quant_levels)
    fedavg = update.protocol == "fedavg"
    steps = update.local_steps or 1

    def simulate(x, y, soft):
        if fedavg:
            return fwd.fedavg(x, y, update.lr, steps, update.local_batch_size, soft)
        return fwd.fedsgd(x, y, soft)

    B = view.batch_size
    shape = (B, *view.image_shape)
    best: dict[str, Any] = {"loss": math.inf}
    history: list[float] = []
    interrupted = False
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    # what a checkpoint must also match (the attacked update) and carry (history of finished restarts)
    ckpt_meta = {"fingerprint": _fingerprint(view, update) if ckpt else None, "prior_history": history}
    state = _load_checkpoint(ckpt, cfg, ckpt_meta["fingerprint"]) if (ckpt and cfg.resume) else None
    start_restart = state["restart"] if state else 0
    if state:
        best = state["best"]
        history.extend(float(v) for v in state.get("prior_history", []))
    try:
        for r in range(start_restart, cfg.restarts):
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + r)
            res = _one_run(cfg, r, gen, shape, labels, view, simulate, matcher, callback, ckpt,
                           state if (state and state["restart"] == r) else None, best, t_start, ckpt_meta)
            state = None
            history.extend(res["history"])
            if res["interrupted"]:
                interrupted = True
            if res["best_loss"] < best["loss"]:
                best = {"loss": res["best_loss"], "images": res["best_images"], "labels": res["labels"],
                        "restart": r}
            if interrupted:
                break
    finally:
        fwd.close()
    if "images" not in best:
        raise NumericalError("the attack produced no finite result")
    info = {
        "attack_config": asdict(cfg),
        "label_method": label_method,
        "matching_mode": mode,
        "precision": str(autocast).replace("torch.", "") if autocast is not None else "float32",
        "fast_layers": sorted(fwd.big),
        "best_loss": best["loss"],
        "best_restart": best.get("restart"),
        "seconds": time.perf_counter() - t_start,
        "interrupted": interrupted,
        "iterations_run": len(history),
    }
    return Reconstruction(images=best["images"].clamp(0, 1).float(), labels=best["labels"], loss_history=history, info=info)


def _one_run(cfg, r, gen, shape, labels, view, simulate, matcher, callback, ckpt, state, best, t_start,
             ckpt_meta=None):
    latent = Latent(cfg, shape, gen, getattr(torch, cfg.dtype))
    soft = labels is None
    label_param = None
    if soft:
        label_param = torch.randn((shape[0], view.num_classes), generator=gen).to(latent.z.dtype).requires_grad_(True)
    variables = [latent.z] + ([label_param] if soft else [])
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(variables, lr=cfg.lr)
    else:
        opt = torch.optim.LBFGS(variables, lr=cfg.lr, max_iter=cfg.lbfgs_inner, history_size=100,
                                line_search_fn=cfg.line_search, tolerance_grad=1e-12, tolerance_change=1e-14)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    history: list[float] = []
    run_best = {"loss": math.inf, "images": None}
    start_it = 0
    if state is not None:
        with torch.no_grad():
            latent.z.copy_(state["z"])
            if soft:
                label_param.copy_(state["label_param"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history = list(state["history"])
        run_best = state["run_best"]
        start_it = state["iteration"]
        torch.set_rng_state(state["torch_rng"])
    good = _snapshot(latent, label_param, opt, sched, history, run_best, start_it)
    nan_restarts = 0
    interrupted = False

    tv_weight = cfg.tv * (max(latent.size) / cfg.tv_size if cfg.tv_size else 1.0)

    def objective():
        x = latent.images()
        y = label_param if soft else labels
        loss = matcher(simulate(x, y, soft))
        total = loss + tv_weight * total_variation(x) if tv_weight else loss
        return total, loss

    it = start_it
    try:
        while it < cfg.iterations:
            try:
                lval = _step(cfg, opt, objective, latent)
            except _NaN:
                if cfg.on_nan == "restart" and nan_restarts < cfg.max_nan_restarts:
                    # roll back to the last good state and continue with half the learning rate (halved
                    # again for each further roll-back to the same state, so a retry is never identical)
                    nan_restarts += 1
                    good["fails"] = good.get("fails", 0) + 1
                    it = _restore(good, latent, label_param, opt, sched)
                    history = list(good["history"])
                    run_best = dict(good["run_best"])
                    factor = 0.5 ** good["fails"]
                    for g in opt.param_groups:
                        g["lr"] *= factor
                    sched.base_lrs = [b * factor for b in sched.base_lrs]
                    continue
                raise NumericalError(
                    f"the matching loss became NaN/Inf at iteration {it + 1} (restart {r}); try a lower lr"
                    + (" or on_nan: restart" if cfg.on_nan == "error" else f" ({nan_restarts} roll-backs did not help)")
                ) from None
            latent.project()
            sched.step()
            it += 1
            history.append(lval)
            if lval < run_best["loss"]:
                run_best = {"loss": lval, "images": latent.images().detach().clone(),
                            "labels": labels if not soft else label_param.detach().argmax(1)}
            if callback is not None and (it % cfg.callback_every == 0 or it == cfg.iterations):
                callback({"iteration": it, "iterations": cfg.iterations, "restart": r, "restarts": cfg.restarts,
                          "loss": lval, "best_loss": min(run_best["loss"], best["loss"]),
                          "elapsed": time.perf_counter() - t_start,
                          "images": lambda: latent.images().detach().clamp(0, 1)})
            if it % cfg.checkpoint_every == 0:
                good = _snapshot(latent, label_param, opt, sched, history, run_best, it)
                if ckpt is not None:
                    _save_checkpoint(ckpt, cfg, r, good, best, ckpt_meta)
    except KeyboardInterrupt:
        interrupted = True
    if run_best["images"] is None:
        run_best = {"loss": math.inf, "images": latent.images().detach().clone(),
                    "labels": labels if not soft else label_param.detach().argmax(1)}
    return {"history": history, "best_loss": run_best["loss"], "best_images": run_best["images"],
            "labels": run_best.get("labels"), "interrupted": interrupted}


class _NaN(Exception):
    pass


def _step(cfg, opt, objective, latent) -> float:
    if cfg.optimizer == "adam":
        opt.zero_grad(set_to_none=True)
        total, loss = objective()
        if not torch.isfinite(total):
            raise _NaN()
        total.backward()
        if not torch.isfinite(latent.z.grad).all():
            raise _NaN()
        if cfg.signed:
            latent.z.grad.sign_()
        opt.step()
        return float(loss.detach())
    vals = {}

    def closure():
        opt.zero_grad(set_to_none=True)
        total, loss = objective()
        if not torch.isfinite(total):
            raise _NaN()
        total.backward()
        vals["loss"] = float(loss.detach())
        return total

    opt.step(closure)
    return vals["loss"]


def _restore(snap, latent, label_param, opt, sched) -> int:
    import copy

    with torch.no_grad():
        latent.z.copy_(snap["z"])
        if label_param is not None:
            label_param.copy_(snap["label_param"])
    opt.load_state_dict(copy.deepcopy(snap["opt"]))
    sched.load_state_dict(copy.deepcopy(snap["sched"]))
    torch.set_rng_state(snap["torch_rng"])
    return snap["iteration"]


def _snapshot(latent, label_param, opt, sched, history, run_best, it):
    import copy

    return {
        "z": latent.z.detach().clone(),
        "label_param": None if label_param is None else label_param.detach().clone(),
        "opt": copy.deepcopy(opt.state_dict()),
        "sched": copy.deepcopy(sched.state_dict()),
        "history": list(history),
        "run_best": {k: (v.clone() if torch.is_tensor(v) else v) for k, v in run_best.items()},
        "iteration": it,
        "torch_rng": torch.get_rng_state(),
    }


def _config_key(cfg: EngineConfig) -> dict:
    d = asdict(cfg)
    for k in ("checkpoint", "checkpoint_every", "resume", "threads", "callback_every", "iterations"):
        d.pop(k, None)
    return d


def _fingerprint(view, update) -> str:
    """SHA-256 of what is being attacked (update tensors and metadata, data shape): a checkpoint made for
    another update (other data, model, seed or obfuscation) is never resumed by mistake."""
    import hashlib
    import json

    h = hashlib.sha256()
    meta = {"kind": update.kind, "protocol": update.protocol, "lr": update.lr, "steps": update.local_steps,
            "local_batch_size": update.local_batch_size, "batch": view.batch_size, "shape": list(view.image_shape),
            "labels": None if update.labels is None else [int(v) for v in update.labels.reshape(-1)]}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for k in sorted(update.tensors):
        t = update.tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _save_checkpoint(path: Path, cfg: EngineConfig, restart: int, snap: dict, best: dict,
                     meta: Optional[dict] = None) -> None:
    """Write the whole attack state (``torch.save`` of plain tensors/numbers only, so it loads with
    ``weights_only=True``) to a temporary file and rename it over ``path``: a kill at any moment leaves either
    the previous checkpoint or the new one, never a torn file."""
    from fedleak.io import atomic_path

    meta = meta or {}
    payload = {"version": 2, "config": _config_key(cfg), "iterations": cfg.iterations, "restart": restart,
               "best": best, "fingerprint": meta.get("fingerprint"),
               "prior_history": [float(v) for v in meta.get("prior_history", [])], **snap}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, cfg: EngineConfig, fingerprint: Optional[str] = None) -> Optional[dict]:
    """Load a checkpoint with ``weights_only=True`` (a pickle that would build arbitrary objects or run code is
    refused, not executed) and check it belongs to these attack settings and this update."""
    if path is None or not path.is_file():
        return None
    from fedleak.io import torch_load_safely

    where = f"checkpoint {str(path)!r}"
    state = torch_load_safely(path, where, ConfigError, "; delete it to start over")
    required = ("config", "restart", "best", "z", "opt", "sched", "history", "run_best", "iteration", "torch_rng")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise ConfigError(f"{where} is not a fedleak attack checkpoint; delete it to start over")
    if state.get("config") != _config_key(cfg):
        raise ConfigError(f"{where} was made with different attack settings; delete it to start over")
    if fingerprint is not None and state.get("fingerprint") not in (None, fingerprint):
        raise ConfigError(f"{where} was made for a different update (data, model, seed or obfuscation changed); "
                          "delete it to start over")
    if not (isinstance(state["restart"], int) and 0 <= state["restart"] < cfg.restarts):
        raise ConfigError(f"{where} is for restart {state['restart']!r} but the attack has {cfg.restarts}")
    return state
