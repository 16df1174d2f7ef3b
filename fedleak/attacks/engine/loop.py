"""The engine's run: :func:`prepare` the attacked problem, :func:`optimise` it with one stage's options.

:func:`run_engine` is the two in sequence. A stage is one :class:`~fedleak.attacks.engine.options.EngineConfig`;
the :class:`Problem` (the received update, recovered labels, the simulated client and the matcher) is what the
stages of a multi-stage attack share.

The problem is set up on :func:`fedleak.device.current_device` (the CPU unless the runner's ``device`` says
otherwise): labels are recovered on the CPU first, then the model, the target and the labels move; random draws
stay on CPU generators, so a seed means the same start on every device. Results come back on the CPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from fedleak.attacks.base import Reconstruction
from fedleak.attacks.engine.checkpoint import fingerprint, load_checkpoint, restore, save_checkpoint, snapshot
from fedleak.attacks.engine.latent import Latent
from fedleak.attacks.engine.options import EngineConfig
from fedleak.attacks.engine.parts import Parts, resolve_parts
from fedleak.attacks.engine.precision import resolve_precision
from fedleak.attacks.labels import recover_labels
from fedleak.attacks.matching import Matcher, matching_mode, quantiser_of
from fedleak.attacks.simulate import ForwardModel
from fedleak.device import current_device
from fedleak.errors import ConfigError, NumericalError


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


@dataclass
class Problem:
    """What the attack matches against: the received update as the attacker simulates it."""

    view: Any
    update: Any
    labels: Optional[torch.Tensor]  # None: optimised jointly (soft labels)
    label_method: str
    mode: str  # matching mode: plain | mask | sign | quant
    fwd: ForwardModel
    matcher: Matcher
    autocast: Optional[torch.dtype]
    shape: tuple[int, ...]
    start: Optional[torch.Tensor] = None  # the images ``init: previous`` starts from (the previous stage's)
    device: torch.device = torch.device("cpu")

    def simulate(self, x, y, soft):
        u = self.update
        if u.protocol == "fedavg":
            return self.fwd.fedavg(x, y, u.lr, u.local_steps or 1, u.local_batch_size, soft)
        return self.fwd.fedsgd(x, y, soft, skip=self.matcher.ignored)


def _layer_weights(cfg: EngineConfig, fwd: ForwardModel, image_shape: tuple[int, ...]) -> Optional[dict[str, float]]:
    """Parameter name -> weight in the matching loss: ``layer_weights`` by name pattern, ``big_weight`` on the
    large linear layers (``fwd.large_names``) and ``input_weight`` on the input layer (the three multiply); None
    when all are 1."""
    if not cfg.layer_weights and cfg.big_weight == 1.0 and cfg.input_weight == 1.0:
        return None
    weights = {k: float(w) for k in fwd.params for pat, w in (cfg.layer_weights or {}).items() if pat in k}
    for k in fwd.large_names:
        weights[k] = weights.get(k, 1.0) * cfg.big_weight
    if cfg.input_weight != 1.0:
        for k in fwd.input_layer(image_shape):
            weights[k] = weights.get(k, 1.0) * cfg.input_weight
    return weights


def prepare(view, update, cfg: EngineConfig, parts: Parts) -> Problem:
    """Build the attacker's model, check and normalise the update, recover labels, set up the matcher."""
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
    device = current_device()
    if device.type != "cpu":
        model.to(device)
        target = {k: v.to(device) for k, v in target.items()}
        labels = labels.to(device) if labels is not None else None
    mode = matching_mode(update.obfuscation, cfg.aware)
    quantiser = quantiser_of(update)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    autocast = resolve_precision(cfg, view.batch_size, device)
    fwd = ForwardModel(model, params, buffers, cfg.big_threshold, cfg.fast, autocast)
    matcher = Matcher(target, parts.loss, mode, _layer_weights(cfg, fwd, view.image_shape), tuple(fwd.big),
                      quantiser)
    return Problem(view, update, labels, label_method, mode, fwd, matcher, autocast,
                   (view.batch_size, *view.image_shape), device=device)


def run_engine(view, update, cfg: EngineConfig, callback=None) -> Reconstruction:
    """Run one engine stage on what the server saw (``cfg``: an :class:`EngineConfig` or a mapping of options)."""
    cfg = EngineConfig.model_validate(cfg)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    parts = resolve_parts(cfg)
    problem = prepare(view, update, cfg, parts)
    try:
        best, history, interrupted = optimise(problem, cfg, parts, callback, t_start)
    finally:
        problem.fwd.close()
    return reconstruction(problem, cfg, best, history, interrupted, t_start)


def reconstruction(problem: Problem, cfg: EngineConfig, best: dict, history: list[float], interrupted: bool,
                   t_start: float) -> Reconstruction:
    """The result of a run whose last (or only) stage ran with ``cfg``."""
    info = {
        "attack_config": cfg.model_dump(),
        "label_method": problem.label_method,
        "matching_mode": problem.mode,
        "precision": str(problem.autocast).replace("torch.", "") if problem.autocast is not None else "float32",
        "device": str(problem.device),
        "fast_layers": sorted(problem.fwd.big),
        "best_loss": best["loss"],
        "best_restart": best.get("restart"),
        "seconds": time.perf_counter() - t_start,
        "interrupted": interrupted,
        "iterations_run": len(history),
    }
    labels = best["labels"].cpu() if best["labels"] is not None else None
    return Reconstruction(images=best["images"].clamp(0, 1).float().cpu(), labels=labels, loss_history=history,
                          info=info)


def optimise(problem: Problem, cfg: EngineConfig, parts: Parts, callback=None,
             t_start: Optional[float] = None, ckpt_meta: Optional[dict] = None) -> tuple[dict, list[float], bool]:
    """The restarts of one stage (resumed from ``cfg.checkpoint`` when it holds this stage's state).

    ``ckpt_meta``: what the checkpoint also records (a multi-stage run: ``stage``, ``stages_key``, ``carry``).
    Returns the best result (``loss``, ``images``, ``labels``, ``restart``), the loss history of all restarts
    and whether the run was interrupted."""
    t_start = time.perf_counter() if t_start is None else t_start
    best: dict[str, Any] = {"loss": math.inf}
    history: list[float] = []
    interrupted = False
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    # what a checkpoint must also match (the attacked update) and carry (history of finished restarts)
    meta = {"fingerprint": fingerprint(problem.view, problem.update) if ckpt else None, "prior_history": history,
            **(ckpt_meta or {})}
    state = load_checkpoint(ckpt, cfg, meta["fingerprint"], meta.get("stages_key")) if (ckpt and cfg.resume) else None
    start_restart = state["restart"] if state else 0
    if state:
        best = state["best"]
        history.extend(float(v) for v in state.get("prior_history", []))
    for r in range(start_restart, cfg.restarts):
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + r)
        res = _one_run(cfg, parts, problem, r, gen, callback, ckpt,
                       state if (state and state["restart"] == r) else None, best, t_start, meta)
        state = None
        history.extend(res["history"])
        interrupted = interrupted or res["interrupted"]
        if res["best_loss"] < best["loss"]:
            best = {"loss": res["best_loss"], "images": res["best_images"], "labels": res["labels"], "restart": r}
        if interrupted:
            break
    if "images" not in best:
        raise NumericalError("the attack produced no finite result")
    return best, history, interrupted


@dataclass
class _Run:
    """The live state of one restart."""

    latent: Latent
    label_param: Optional[torch.Tensor]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    history: list
    best: dict
    it: int = 0

    def labels(self, known: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return known if self.label_param is None else self.label_param.detach().argmax(1)

    def record_best(self, loss: float, known: Optional[torch.Tensor]) -> None:
        self.best = {"loss": loss, "images": self.latent.images().detach().clone(), "labels": self.labels(known)}

    def snapshot(self) -> dict:
        return snapshot(self.latent, self.label_param, self.opt, self.sched, self.history, self.best, self.it)


def _start(cfg: EngineConfig, parts: Parts, problem: Problem, gen: torch.Generator, state: Optional[dict]) -> _Run:
    latent = Latent(cfg, problem.shape, gen, getattr(torch, cfg.dtype), parts.param, problem.start)
    if problem.device.type != "cpu":  # drawn from the CPU generator, optimised on the device
        latent.z = latent.z.detach().to(problem.device).requires_grad_(True)
    label_param = None
    if problem.labels is None:
        label_param = torch.randn((problem.shape[0], problem.view.num_classes), generator=gen)
        label_param = label_param.to(problem.device, latent.z.dtype).requires_grad_(True)
    variables = [latent.z] + ([label_param] if label_param is not None else [])
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(variables, lr=cfg.lr)
    else:
        opt = torch.optim.LBFGS(variables, lr=cfg.lr, max_iter=cfg.lbfgs_inner, history_size=100,
                                line_search_fn=cfg.line_search, tolerance_grad=1e-12, tolerance_change=1e-14)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, parts.schedule(cfg))
    run = _Run(latent, label_param, opt, sched, [], {"loss": math.inf, "images": None})
    if state is not None:
        run.it = restore(state, latent, label_param, opt, sched)
        run.history = list(state["history"])
        run.best = state["run_best"]
    return run


def _objective(run: _Run, problem: Problem, parts: Parts, cfg: EngineConfig) -> Callable[[], tuple]:
    """(matching loss + weighted priors, matching loss) of the current latent."""
    fwd = problem.fwd
    terms = [(w, prior.for_model(fwd.model, fwd.params, fwd.buffers))
             for w, prior in parts.prior_terms(cfg, max(run.latent.size), problem.shape[0])]
    soft = problem.labels is None

    def objective():
        x = run.latent.images()
        y = run.label_param if soft else problem.labels
        loss = problem.matcher(problem.simulate(x, y, soft))
        total = loss
        for w, penalty in terms:
            total = total + w * penalty(x)
        return total, loss

    return objective


def _one_run(cfg: EngineConfig, parts: Parts, problem: Problem, r: int, gen: torch.Generator, callback, ckpt,
             state: Optional[dict], best: dict, t_start: float, ckpt_meta: Optional[dict] = None) -> dict:
    """One restart: iterate from a fresh latent (or from ``state``), rolling back on NaN if asked."""
    run = _start(cfg, parts, problem, gen, state)
    objective = _objective(run, problem, parts, cfg)
    good = run.snapshot()
    nan_restarts = 0
    interrupted = False
    try:
        while run.it < cfg.iterations:
            try:
                total, lval = _step(cfg, run.opt, objective, run.latent)
            except _NaN:
                nan_restarts = _roll_back(cfg, run, good, nan_restarts, r)
                continue
            run.latent.project()
            run.sched.step()
            run.it += 1
            run.history.append(lval)
            score = total if cfg.result == "best-objective" else lval
            if cfg.result == "last" or score < run.best["loss"]:
                run.record_best(score, problem.labels)
            if callback is not None and (run.it % cfg.callback_every == 0 or run.it == cfg.iterations):
                callback(_progress(cfg, run, r, lval, best, t_start))
            if run.it % cfg.checkpoint_every == 0:
                good = run.snapshot()
                if ckpt is not None:
                    save_checkpoint(ckpt, cfg, r, good, best, ckpt_meta)
    except KeyboardInterrupt:
        interrupted = True
    if run.best["images"] is None:
        run.record_best(math.inf, problem.labels)
    return {"history": run.history, "best_loss": run.best["loss"], "best_images": run.best["images"],
            "labels": run.best.get("labels"), "interrupted": interrupted}


def _progress(cfg: EngineConfig, run: _Run, r: int, lval: float, best: dict, t_start: float) -> dict:
    latent = run.latent
    # planned: the whole attack's iterations; a multi-stage attack sets it to its stages' total
    return {"iteration": run.it, "iterations": cfg.iterations, "planned": cfg.iterations, "restart": r,
            "restarts": cfg.restarts, "loss": lval, "best_loss": min(run.best["loss"], best["loss"]),
            "elapsed": time.perf_counter() - t_start,
            "images": lambda: latent.images().detach().clamp(0, 1).cpu()}


def _roll_back(cfg: EngineConfig, run: _Run, good: dict, nan_restarts: int, r: int) -> int:
    """After a NaN: back to the last good state with half the learning rate (halved again for each further
    roll-back to the same state, so a retry is never identical), or a NumericalError. Returns the roll-back count."""
    if not (cfg.on_nan == "restart" and nan_restarts < cfg.max_nan_restarts):
        raise NumericalError(
            f"the matching loss became NaN/Inf at iteration {run.it + 1} (restart {r}); try a lower lr"
            + (" or on_nan: restart" if cfg.on_nan == "error" else f" ({nan_restarts} roll-backs did not help)")
        ) from None
    good["fails"] = good.get("fails", 0) + 1
    run.it = restore(good, run.latent, run.label_param, run.opt, run.sched)
    run.history = list(good["history"])
    run.best = dict(good["run_best"])
    factor = 0.5 ** good["fails"]
    for g in run.opt.param_groups:
        g["lr"] *= factor
    run.sched.base_lrs = [b * factor for b in run.sched.base_lrs]
    return nan_restarts + 1


class _NaN(Exception):
    pass


def _step(cfg: EngineConfig, opt, objective, latent: Latent) -> tuple[float, float]:
    """One optimiser step; returns the (objective, matching loss) evaluated in it."""
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
        return float(total.detach()), float(loss.detach())
    vals = {}

    def closure():
        opt.zero_grad(set_to_none=True)
        total, loss = objective()
        if not torch.isfinite(total):
            raise _NaN()
        total.backward()
        vals["total"], vals["loss"] = float(total.detach()), float(loss.detach())
        return total

    opt.step(closure)
    return vals["total"], vals["loss"]
