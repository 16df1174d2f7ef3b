"""One complete experiment: simulate the client, attack what the server saw, score the result, write a run folder.

>>> run_dir, metrics = run("configs/demo.yaml", overrides=["attack.iterations=50"])

Run folder (``OUTPUT_DIR/<output.name or model-protocol-attack-YYYYmmdd-HHMMSS>``, or ``out``)::

    config.yaml        resolved config (every default filled in, including the attack seed)
    metrics.json       per-image and mean metrics ("raw", and "enhanced" when an enhancer ran), update
                       statistics (bits, privacy epsilon when present), attack info, timing, "interrupted"
    grid.png           originals over (matched) reconstructions [over enhanced], PSNR under each
    loss.png           matching loss per iteration (log scale) [+ PSNR series when the attack reports one]
    reconstruction.pt  ``torch.save`` of a plain dict of tensors (loads with ``weights_only=True``)
    run.log            what happened, with timestamps
    update.safetensors only with ``output.save_update: true``
    checkpoint.pt      the attack's state every ``attack.checkpoint_every`` iterations (attacks of the engine:
                       dlg, idlg, inverting-gradients, rog); kept while the run is unfinished so that
                       ``fedleak run --resume RUN_DIR`` continues it, deleted once the run is COMPLETE.
                       ``attack.checkpoint: null`` turns it off, a path puts it elsewhere (then it is kept)
    COMPLETE           written last, and only when the run finished (not when interrupted): a JSON manifest
                       (size, SHA-256) of the result files; ``runio.check_complete(run_dir)`` verifies it

``metrics.json`` is a function of the config and seed only, except its ``timing`` key (all wall-clock
durations, wherever an attack or the client reported them, are moved there) and ``name`` (the folder name):
two runs of one config give equal JSON once ``timing`` is dropped (``tests/test_reliability.py``).

The true images are used only by the client simulation and, after the attack has returned, by the
evaluation. The attack receives ``case.server_view()`` and the update, nothing else.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from fedleak.errors import ConfigError, NumericalError
from fedleak.io import COMPLETE_MARK, new_run_dir, write_json, write_text
from fedleak.experiment.claim import claim_run_dir, sigterm_as_interrupt

#: the run folder's attack checkpoint (see the module docstring)
CHECKPOINT = "checkpoint.pt"
#: keys holding wall-clock durations: moved from anywhere in metrics.json into its ``timing`` key
TIMING_KEYS = {"seconds", "elapsed", "time", "wall_time"}

#: keys accepted in the ``metrics:`` config section
METRIC_OPTIONS = {"psnr_cap": "PSNR reported for identical images (dB, default 100; null = inf)",
                  "match": "pair reconstructions with true images by optimal assignment (default true)"}


class RunLog:
    """Collects timestamped lines; :meth:`flush` rewrites ``run.log`` atomically."""

    def __init__(self):
        self.lines: list[str] = []
        self.path: Optional[Path] = None
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.lines.append(f"{now} [{time.perf_counter() - self.t0:8.2f}s] {msg}")

    def flush(self) -> None:
        if self.path is not None:
            write_text(self.path, "\n".join(self.lines) + "\n")


class Progress:
    """The attack callback: drives a tqdm bar on stderr and records a few loss lines in the log."""

    def __init__(self, log: RunLog, enabled: bool, desc: str):
        self.log, self.enabled, self.desc = log, enabled, desc
        self.bar = None
        self.last: dict[str, Any] = {}
        self.next_log = 0
        self.t_start = time.time()

    def __call__(self, state: dict) -> None:
        self.last = dict(state)
        it, total = int(state.get("iteration", 0)), int(state.get("iterations", 0) or 0)
        restarts = int(state.get("restarts", 1) or 1)
        r = int(state.get("restart", 0) or 0)
        pos, grand = r * total + it, total * restarts
        loss = state.get("loss")
        if self.enabled:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=grand or None, desc=self.desc, unit="it", file=sys.stderr,
                                dynamic_ncols=True, leave=True)
                # count elapsed time (and the rate) from the start of the attack, not from the first callback
                self.bar.start_t = self.bar.last_print_t = self.t_start
            self.bar.n = pos
            post = {}
            if loss is not None:
                post["loss"] = f"{float(loss):.4g}"
            if restarts > 1:
                post["restart"] = f"{r + 1}/{restarts}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()
        if pos >= self.next_log:
            el = state.get("elapsed")
            self.log(f"iteration {it}/{total}" + (f" (restart {r + 1}/{restarts})" if restarts > 1 else "")
                     + (f" loss {float(loss):.6g}" if loss is not None else "")
                     + (f" elapsed {float(el):.1f}s" if el is not None else ""))
            self.next_log = pos + max(1, grand // 10)
            self.log.flush()  # a killed run keeps its progress lines (about ten small atomic rewrites per run)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _load(config: Any, overrides: Optional[list[str]]):
    from fedleak.config.schema import RunConfig, load_config

    if isinstance(config, RunConfig):
        return load_config(base=config.to_dict(), overrides=overrides)
    if isinstance(config, dict):
        return load_config(base=config, overrides=overrides)
    return load_config(config, overrides)


def _metric_options(cfg) -> dict:
    opts = dict(cfg.metrics or {})
    bad = sorted(set(opts) - set(METRIC_OPTIONS))
    if bad:
        raise ConfigError(f"metrics: unknown option(s) {', '.join(map(repr, bad))}; valid: {', '.join(METRIC_OPTIONS)}")
    cap = opts.get("psnr_cap", 100.0)
    if cap is not None and not (isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0):
        raise ConfigError(f"metrics.psnr_cap must be a positive number or null, got {cap!r}")
    m = opts.get("match", True)
    if not isinstance(m, bool):
        raise ConfigError(f"metrics.match must be true or false, got {m!r}")
    return {"psnr_cap": None if cap is None else float(cap), "match_order": m}


def _enhancer_enabled(cfg) -> bool:
    name = str(cfg.enhancer.get("name", "none")).lower()
    return name not in ("none", "", "null")


def _check_enhancer(cfg) -> None:
    # ---- ENHANCER HOOK (1/2) -------------------------------------------------------------------------
    # The enhancement stage lives in ``fedleak.enhance`` (another module, maybe not installed yet). It must
    # provide ``enhance(images, view, enhancer_cfg) -> images`` using only the server's knowledge.
    if _enhancer_enabled(cfg) and importlib.util.find_spec("fedleak.enhance") is None:
        raise ConfigError(f"enhancer {cfg.enhancer.get('name')!r}: enhancement isn't available in this "
                          "installation (no fedleak.enhance module); set enhancer: none")
    if _enhancer_enabled(cfg):
        from fedleak.enhance import stage as _enhance_mod

        check = getattr(_enhance_mod, "check_config", None)  # optional part of the stage's interface
        if check is not None:
            check(cfg.enhancer)  # fail before the attack: bad options or weights file


def _attack_options(cfg) -> dict:
    """The attack section, with the run seed filled in as the attack seed when the attack takes one."""
    from fedleak.attacks import ATTACKS, check_attack_config

    opts = dict(cfg.attack)
    if "seed" not in opts:
        fn = ATTACKS.get(opts["name"])
        trial = {**opts, "seed": cfg.seed}
        try:
            check_attack_config(trial)
            ok = True
        except ConfigError:
            ok = False
        if ok and (getattr(fn, "validate", None) is not None or _takes(fn, "seed")):
            opts = trial
    return opts


def _takes(fn, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _jsonable(o: Any, depth: int = 0) -> Any:
    if depth > 8:
        return repr(o)
    if o is None or isinstance(o, (bool, int, str)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else repr(o)
    if isinstance(o, torch.Tensor):
        return _jsonable(o.tolist(), depth + 1) if o.numel() <= 64 else f"tensor{tuple(o.shape)}"
    if isinstance(o, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in o]
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return _jsonable(o.item(), depth + 1)
    except ImportError:  # pragma: no cover
        pass
    return repr(o)


def _subject_masks(cfg, case, log: RunLog):
    """Subject masks for the subject-region metrics: the data set's own (``masks`` attribute) if it has them,
    else, when ``data.segmenter`` is set, computed from the true images now (evaluation only)."""
    m = getattr(case.data, "masks", None)
    if m is not None:
        return m
    seg = str(cfg.data.segmenter or "none").lower()
    if seg == "none" or importlib.util.find_spec("fedleak.client.segmentation") is None:
        return None
    from fedleak.client import segmentation

    m = segmentation.masks(case.images, seg, cfg.data.sam_checkpoint)
    log(f"subject masks for the metrics from segmenter {seg!r} (mean coverage {float(m.float().mean()):.2f})")
    return m


def default_name(cfg) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.model.name}-{cfg.protocol.name}-{cfg.attack['name']}-{stamp}".replace("/", "_")


def _prepare_dir(cfg, out: Optional[str | Path], resuming: bool = False) -> Path:
    if out is not None:
        d = claim_run_dir(out, COMPLETE_MARK, resuming)  # exclusive; a complete run is refused, never touched
        if not resuming and (d / CHECKPOINT).is_file():
            (d / CHECKPOINT).unlink()  # a fresh run never continues another run's attack
        return d
    name = cfg.output.name or default_name(cfg)
    if any(s in name for s in ("/", "\\")) or name in (".", ".."):
        raise ConfigError(f"output.name {name!r} must be a plain folder name")
    return claim_run_dir(new_run_dir(cfg.output.dir, name), COMPLETE_MARK)


def _supports_checkpoint(attack_opts: dict) -> bool:
    """Whether the attack takes engine-style ``checkpoint`` options (the gradient-matching presets do)."""
    from fedleak.attacks import check_attack_config

    try:
        check_attack_config({**attack_opts, "checkpoint": "checkpoint.pt"})
    except (ConfigError, TypeError):
        return False
    return True


def _move_timing(node: Any, path: list, out: dict) -> None:
    """Move every wall-clock duration (keys in :data:`TIMING_KEYS` or ending in ``_seconds``) out of ``node``
    into ``out`` under its dotted path, so the rest of metrics.json depends on the config and seed only."""
    if isinstance(node, dict):
        for k in list(node):
            if k in TIMING_KEYS or (isinstance(k, str) and k.endswith("_seconds")):
                out[".".join([*path, str(k)])] = node.pop(k)
            else:
                _move_timing(node[k], [*path, str(k)], out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _move_timing(v, [*path, str(i)], out)


def _check_update_finite(update) -> None:
    bad = [k for k, t in update.tensors.items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NumericalError(f"the client's update contains NaN or Inf in {len(bad)} tensor(s) (first {bad[0]!r}); "
                             "check the obfuscation (noise scale, clipping) and protocol.lr")


def _resume_source(resume: str | Path, config: Any, overrides: Optional[list[str]]) -> Path:
    d = Path(resume)
    if config is not None or overrides:
        raise ConfigError("--resume re-reads RUN_DIR/config.yaml; do not also give a config or --set")
    if not d.is_dir():
        raise ConfigError(f"--resume {str(d)!r}: no such run folder")
    if not (d / "config.yaml").is_file():
        raise ConfigError(f"--resume {str(d)!r}: no config.yaml there, not a fedleak run folder")
    return d


def check(config: Any = None, overrides: Optional[list[str]] = None, force: bool = False, log=None):
    """Everything ``run`` checks before it starts, without running: config, metric options, enhancer, attack
    options and the memory guard. Returns ``(cfg, attack_options, memory_estimate)``; raises a one-line
    :class:`~fedleak.errors.FedleakError` otherwise."""
    from fedleak.experiment.resources import check as check_memory

    cfg = _load(config, overrides)
    _metric_options(cfg)
    _check_enhancer(cfg)
    attack_opts = _attack_options(cfg)
    est = check_memory(cfg, force=force, log=log)
    return cfg, attack_opts, est


def run(config: Any = None, overrides: Optional[list[str]] = None, out: Optional[str | Path] = None,
        progress: bool = True, resume: Optional[str | Path] = None, force: bool = False) -> tuple[Path, dict]:
    """Run one experiment end to end and return ``(run_dir, metrics)``.

    ``config``: a YAML path, a dict, a :class:`~fedleak.config.RunConfig` or None (all defaults);
    ``overrides``: ``["a.b=value", ...]``; ``out``: the run folder (default: a new folder under
    ``output.dir``); ``progress``: show a tqdm bar on stderr. If the attack is interrupted (Ctrl-C) the
    partial result is still written, ``metrics["interrupted"]`` is true and no COMPLETE marker is written.

    ``resume``: a run folder to continue (its ``config.yaml`` is re-read, the client's update recomputed
    deterministically and the attack resumed from ``checkpoint.pt`` when there is one; ``config``,
    ``overrides`` and ``out`` must then be None). A complete folder is not run again: its metrics are
    returned. ``force``: start even when the memory guard (:mod:`fedleak.resources`) estimates that the run
    does not fit in the available memory.
    """
    from fedleak import metrics as M
    from fedleak.metrics import plots
    from fedleak.attacks import attack
    from fedleak.experiment.case import Case
    from fedleak.io import mark_complete

    import json

    from fedleak.io import check_complete, is_complete, load_tensors
    from fedleak.experiment.resources import check as check_memory

    t_all = time.perf_counter()
    sigterm_as_interrupt()
    log = RunLog()
    if resume is not None:
        if out is not None:
            raise ConfigError("--resume continues RUN_DIR in place; do not also give --out")
        out = _resume_source(resume, config, overrides)
        if is_complete(out):
            return out, json.loads((out / "metrics.json").read_text())
        config = out / "config.yaml"
        try:
            log.lines = (out / "run.log").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            pass
        log("---- resume ----")
    cfg = _load(config, overrides)
    metric_opts = _metric_options(cfg)
    _check_enhancer(cfg)
    attack_opts = _attack_options(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resolved = cfg.to_dict()
    resolved["attack"] = attack_opts
    log(f"fedleak run: config {config if isinstance(config, (str, Path)) else type(config).__name__}"
        + (f", overrides {overrides}" if overrides else ""))
    log(f"torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}")
    # before any folder or work: refuse a run that would not fit in memory (--force overrides)
    check_memory(cfg, force=force, log=log)

    run_dir = _prepare_dir(cfg, out, resuming=resume is not None)
    log.path = run_dir / "run.log"
    ckpt_path = run_dir / CHECKPOINT
    call_opts = dict(attack_opts)
    managed_ckpt = "checkpoint" not in attack_opts and _supports_checkpoint(attack_opts)
    if managed_ckpt:
        call_opts["checkpoint"] = str(ckpt_path)
    if resume is not None:
        where = Path(call_opts["checkpoint"]) if call_opts.get("checkpoint") else None
        if where is not None and where.is_file():
            st = load_tensors(where)  # refuses pickled code like the engine does
            log(f"resuming the attack from {where.name} (restart {st.get('restart')}, iteration {st.get('iteration')})")
        else:
            log("no attack checkpoint to resume from: the attack starts from the beginning")
    write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    log(f"run folder {run_dir}")
    try:
        # ---- client side (uses the true images) -----------------------------------------------------
        case = Case(cfg)
        t0 = time.perf_counter()
        update = case.client_update()
        t_client = time.perf_counter() - t0
        _check_update_finite(update)
        view = case.server_view()
        s = update.stats
        log(f"case: {cfg.data.batch_size} image(s) {cfg.data.size}x{cfg.data.size} from {cfg.data.source!r}, "
            f"model {cfg.model.name}, protocol {cfg.protocol.name}, obfuscation "
            f"{[o.get('name') for o in update.obfuscation] or 'none'}")
        log(f"update: {s.get('num_parameters')} parameters, {s.get('bits_per_parameter', float('nan')):.4g} bits/param, "
            f"relative error {s.get('relative_error', float('nan')):.4g}"
            + (f", epsilon {s['privacy'].get('epsilon')}" if isinstance(s.get("privacy"), dict) else ""))
        if cfg.output.save_update:
            update.save(run_dir / "update.safetensors")
        log.flush()

        # ---- server side: the attack sees the server view and the update only -----------------------
        log(f"attack {attack_opts}")
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        cb = Progress(log, progress, attack_opts["name"])
        try:
            rec = attack(call_opts, view, update, callback=cb)
        finally:
            cb.close()
        t_attack = time.perf_counter() - t0
        interrupted = bool(rec.info.get("interrupted", False))
        hist = [float(v) for v in rec.loss_history]
        log(f"attack {'INTERRUPTED' if interrupted else 'finished'} after {len(hist)} iteration(s) in "
            f"{t_attack:.2f}s" + (f", final loss {hist[-1]:.6g}" if hist else ""))

        # ---- enhancement (optional) ----------------------------------------------------------------
        enhanced = None
        t_enh = 0.0
        if _enhancer_enabled(cfg):
            # ---- ENHANCER HOOK (2/2): server-side post-processing of the reconstruction -------------
            from fedleak.enhance import stage as _enhance_mod  # presence checked in _check_enhancer

            t0 = time.perf_counter()
            out_e = _enhance_mod.enhance(rec.images, view, cfg.enhancer)
            enhanced = getattr(out_e, "images", out_e)
            t_enh = time.perf_counter() - t0
            log(f"enhancer {cfg.enhancer} ran in {t_enh:.2f}s")

        # ---- evaluation: the only place (after the attack) where the true images are compared ------
        t0 = time.perf_counter()
        masks = _subject_masks(cfg, case, log)
        raw = M.evaluate(case.images, rec, true_labels=case.labels, masks=masks, **metric_opts)
        enh_metrics = None
        if enhanced is not None:
            enh_metrics = M.evaluate(case.images, enhanced, true_labels=None, masks=masks, **metric_opts)
        t_eval = time.perf_counter() - t0

        summary = {"psnr": raw["mean"]["psnr"], "ssim": raw["mean"]["ssim"], "ssim_rog": raw["mean"]["ssim_rog"],
                   "perceptual": raw["mean"]["perceptual"]}
        if "label_accuracy" in raw:
            summary["label_accuracy"] = raw["label_accuracy"]
        if enh_metrics is not None:
            for k in ("psnr", "ssim", "ssim_rog", "perceptual"):
                summary[f"enhanced_{k}"] = enh_metrics["mean"][k]
        summary["bits_per_parameter"] = s.get("bits_per_parameter")
        if isinstance(s.get("privacy"), dict) and "epsilon" in s["privacy"]:
            summary["epsilon"] = s["privacy"]["epsilon"]

        metrics: dict[str, Any] = {
            "name": run_dir.name,
            "interrupted": interrupted,
            "seed": cfg.seed,
            "summary": summary,
            "raw": raw,
        }
        if enh_metrics is not None:
            metrics["enhanced"] = enh_metrics
        metrics["attack"] = {
            "name": attack_opts["name"],
            "options": {k: v for k, v in attack_opts.items() if k != "name"},
            "iterations_run": len(hist),
            "iterations_planned": cb.last.get("iterations"),
            "final_loss": hist[-1] if hist else None,
            "best_loss": rec.info.get("best_loss"),
            "info": {k: v for k, v in rec.info.items() if k not in ("attack_config",)},
        }
        metrics["update"] = {"kind": update.kind, "protocol": update.protocol, "obfuscation": update.obfuscation,
                             "labels_shared": update.labels is not None, "stats": s}
        metrics["timing"] = {"client_seconds": round(t_client, 4), "attack_seconds": round(t_attack, 4),
                             "enhance_seconds": round(t_enh, 4), "evaluate_seconds": round(t_eval, 4)}

        # ---- outputs -------------------------------------------------------------------------------
        perm = raw["permutation"]
        blob = {"images": rec.images.detach().to("cpu", torch.float32).contiguous(),
                "permutation": torch.tensor(perm, dtype=torch.int64),
                "loss_history": torch.tensor(hist, dtype=torch.float64)}
        if rec.labels is not None:
            blob["labels"] = torch.as_tensor(rec.labels).detach().cpu()
        if enhanced is not None:
            blob["enhanced"] = enhanced.detach().to("cpu", torch.float32).contiguous()
        for key, pts in (rec.series or {}).items():
            try:
                blob[f"series_{key}"] = torch.tensor([list(p) if isinstance(p, (list, tuple)) else [i, p]
                                                      for i, p in enumerate(pts)], dtype=torch.float64)
            except (TypeError, ValueError):
                log(f"series {key!r} not saved (not numeric pairs)")
        from fedleak.io import atomic_path

        with atomic_path(run_dir / "reconstruction.pt") as tmp:
            torch.save(blob, tmp)
        rec_m = rec.images.detach().cpu()[perm]
        enh_m = enhanced.detach().cpu()[enh_metrics["permutation"]] if enhanced is not None else None
        title = (f"{cfg.attack['name']} | {cfg.model.name} {cfg.protocol.name} | "
                 f"PSNR {summary['psnr']:.2f} dB" + (" | INTERRUPTED" if interrupted else ""))
        plots.save_grid(case.images, rec_m, run_dir / "grid.png", psnrs=raw["per_image"]["psnr"],
                        enhanced=enh_m, enhanced_psnrs=enh_metrics["per_image"]["psnr"] if enh_metrics else None,
                        title=title)
        plots.save_loss(hist, run_dir / "loss.png", series=rec.series, title=f"{attack_opts['name']} matching loss")
        metrics["timing"]["total_seconds"] = round(time.perf_counter() - t_all, 4)
        metrics = _jsonable(metrics)
        timing = metrics.pop("timing")
        moved: dict = {}
        _move_timing(metrics, [], moved)
        metrics["timing"] = {**timing, **({"other": moved} if moved else {})}
        write_json(run_dir / "metrics.json", metrics)
        log(f"mean PSNR {summary['psnr']:.3f} dB, SSIM {summary['ssim']:.4f}, ROG-SSIM {summary['ssim_rog']:.4f}, "
            f"1-HaarPSI {summary['perceptual']:.4f}")
        if interrupted:
            log("interrupted: results are partial; COMPLETE not written"
                + (f"; continue with: fedleak run --resume {run_dir}" if managed_ckpt and ckpt_path.is_file() else ""))
        log.flush()
        if not interrupted:
            mark_complete(run_dir)
            check_complete(run_dir)
            if managed_ckpt and ckpt_path.is_file():
                ckpt_path.unlink()  # the run is complete: its working state is no longer needed
        return run_dir, metrics
    except BaseException as e:  # record what went wrong, then let the caller handle it
        log(f"FAILED: {type(e).__name__}: {e}")
        try:
            log.flush()
        except OSError:
            pass
        raise


def summary_lines(run_dir: Path, metrics: dict) -> list[str]:
    """A short human summary of a run."""
    s = metrics.get("summary", {})
    raw = metrics.get("raw", {})
    line = (f"{raw.get('num_images', '?')} image(s): mean PSNR {s.get('psnr', float('nan')):.2f} dB, "
            f"SSIM {s.get('ssim', float('nan')):.4f} (ROG-SSIM {s.get('ssim_rog', float('nan')):.4f}, "
            f"1-HaarPSI {s.get('perceptual', float('nan')):.4f})")
    if "label_accuracy" in s:
        line += f", labels {100 * s['label_accuracy']:.0f}% correct"
    out = [line]
    if "enhanced_psnr" in s:
        out.append(f"enhanced: mean PSNR {s['enhanced_psnr']:.2f} dB, SSIM {s['enhanced_ssim']:.4f}")
    out.append(f"run folder: {run_dir}")
    return out
