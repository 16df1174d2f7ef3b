"""One complete experiment: simulate the client, attack what the server saw, score the result, write a run folder.

>>> run_dir, metrics = run("configs/demo.yaml", overrides=["attack.iterations=50"])

Run folder (``OUTPUT_DIR/<output.name or model-protocol-attack-YYYYmmdd-HHMMSS>``, or ``out``)::

    config.yaml        resolved config (every default filled in, including the attack seed)
    metrics.json       per-image and mean metrics ("raw", and "enhanced" when an enhancer ran), update
                       statistics (bits, privacy epsilon when present), attack info, timing, "interrupted"
    grid.png           originals over (matched) reconstructions [over enhanced], PSNR under each
    loss.png           matching loss per iteration (log scale) [+ PSNR series when the attack reports one];
                       not written for a one-shot attack (imprint readouts: no iterations)
    reconstruction.pt  ``torch.save`` of a plain dict of tensors (loads with ``weights_only=True``)
    run.log            what happened, with timestamps, and the library warnings of the run (not the console)
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
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from fedleak.config.schema import as_config
from fedleak.device import resolve_device, using_device
from fedleak.errors import ConfigError, NumericalError
from fedleak.experiment.rundir import CHECKPOINT, RECONSTRUCTION, TIMING_KEYS, move_timing, save_reconstruction  # noqa: F401
from fedleak.experiment.rundir import bind_warnings, capture_warnings, write_metrics
from fedleak.io import COMPLETE_MARK, new_run_dir, write_text
from fedleak.metrics.privacy_words import describe, protection
from fedleak.experiment.claim import claim_run_dir, release, sigterm_as_interrupt
from fedleak.progress import AttackProgress


class RunLog:
    """Collects timestamped lines; :meth:`flush` rewrites ``run.log`` atomically."""

    def __init__(self):
        self.lines: list[str] = []
        self.path: Optional[Path] = None
        self.t0 = time.perf_counter()
        bind_warnings(self)  # inside run(): library warnings go to this log, not the console

    def __call__(self, msg: str) -> None:
        now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.lines.append(f"{now} [{time.perf_counter() - self.t0:8.2f}s] {msg}")

    def flush(self) -> None:
        if self.path is not None:
            write_text(self.path, "\n".join(self.lines) + "\n")


class Progress(AttackProgress):
    """The attack callback: a progress display on stderr (:mod:`fedleak.progress`: a bar on a terminal or in a
    notebook, one plain line every ``FEDLEAK_PROGRESS_EVERY`` seconds otherwise) and a few loss lines in run.log."""

    def __init__(self, log: RunLog, enabled: bool, desc: str):
        super().__init__(log, enabled, desc, flush=log.flush)


def _subject_masks(cfg, case, log: RunLog):
    """Subject masks for the subject-region metrics: with ``data.segmenter`` set, the data set's own when
    ``data.subject_only`` already segmented it, else computed from the true images now (evaluation only)."""
    seg = str(cfg.data.segmenter or "none").lower().strip()
    if seg == "none":
        return None
    if cfg.data.subject_only:
        return case.data.masks  # set by client.segmentation.subject_only
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
    if (d / "capture.json").is_file():
        raise ConfigError(f"--resume {str(d)!r}: a captured-update run (fedleak attack); run that command again")
    return d


# ------------------------------------------------------------------------------------------ the stages
@dataclass
class Plan:
    """The prepare stage's result: the validated config (every named section checked once, see
    :attr:`RunConfig.sections`), the attack options as run and the memory estimate."""

    cfg: Any
    attack: dict
    memory: Any


@dataclass
class RunFolder:
    """The run folder and the attack options as called there (the managed checkpoint filled in)."""

    path: Path
    call_options: dict
    managed_checkpoint: bool

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT


@dataclass
class ClientSide:
    case: Any
    update: Any
    view: Any
    seconds: float


@dataclass
class Attacked:
    rec: Any
    history: list
    interrupted: bool
    planned: Optional[int]
    seconds: float


@dataclass
class Scores:
    raw: dict
    enhanced: Optional[dict]
    seconds: float
    server: dict  # what the server scenario did to the client's model, measured on the true batch


def prepare(config: Any = None, overrides: Optional[list[str]] = None, force: bool = False, log=None) -> Plan:
    """Stage 1 (also all of :func:`check`): load and validate the config, refuse a run that would not fit in
    memory (``force`` overrides)."""
    from fedleak.experiment.resources import check as check_memory

    cfg = as_config(config, overrides)
    for notice in cfg.notices if log is not None else []:
        log(notice)
    est = check_memory(cfg, force=force, log=log)
    return Plan(cfg=cfg, attack=dict(cfg.sections.attack), memory=est)


def _resume_stage(resume: str | Path, config: Any, overrides: Optional[list[str]], out: Any, log: RunLog
                  ) -> tuple[Path, Optional[dict]]:
    """``(run_dir, metrics)`` of a complete folder (nothing to do), else ``(run_dir, None)`` with its log
    re-read so that the resumed run appends to it."""
    from fedleak.io import is_complete

    if out is not None:
        raise ConfigError("--resume continues RUN_DIR in place; do not also give --out")
    d = _resume_source(resume, config, overrides)
    if is_complete(d):
        return d, json.loads((d / "metrics.json").read_text())
    try:
        log.lines = (d / "run.log").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        pass
    log("---- resume ----")
    return d, None


def open_folder(plan: Plan, out: Optional[str | Path], resuming: bool, log: RunLog) -> RunFolder:
    """Create (or re-use) the run folder, manage the attack checkpoint, write the resolved config.yaml."""
    from fedleak.attacks import ATTACKS
    from fedleak.io import load_tensors

    cfg = plan.cfg
    run_dir = _prepare_dir(cfg, out, resuming=resuming)
    log.path = run_dir / "run.log"
    call_opts = dict(plan.attack)
    managed = "checkpoint" not in plan.attack and ATTACKS.caps(plan.attack["name"]).checkpoints
    if managed:
        call_opts["checkpoint"] = str(run_dir / CHECKPOINT)
    if resuming:
        where = Path(call_opts["checkpoint"]) if call_opts.get("checkpoint") else None
        if where is not None and where.is_file():
            st = load_tensors(where)  # refuses pickled code like the engine does
            log(f"resuming the attack from {where.name} (restart {st.get('restart')}, iteration {st.get('iteration')})")
        else:
            log("no attack checkpoint to resume from: the attack starts from the beginning")
    write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.resolved_dict(), sort_keys=False))
    log(f"run folder {run_dir}")
    return RunFolder(path=run_dir, call_options=call_opts, managed_checkpoint=managed)


def client_stage(cfg, run_dir: Path, log: RunLog) -> ClientSide:
    """Stage 2, the client side (the only stage besides the evaluation that uses the true images)."""
    from fedleak.experiment.case import Case

    case = Case(cfg)
    t0 = time.perf_counter()
    update = case.client_update()
    seconds = time.perf_counter() - t0
    _check_update_finite(update)
    view = case.server_view()
    s = update.stats
    log(f"case: {cfg.data.batch_size} image(s) {cfg.data.size}x{cfg.data.size} from {cfg.data.source!r}, "
        f"model {cfg.model.name}, protocol {cfg.protocol.name}, obfuscation "
        f"{[o.get('name') for o in update.obfuscation] or 'none'}")
    log(f"update: {s.get('num_parameters')} parameters, {s.get('bits_per_parameter', float('nan')):.4g} bits/param, "
        f"relative error {s.get('relative_error', float('nan')):.4g}"
        + (f", epsilon {describe(s['privacy'].get('epsilon'), s['privacy'].get('mechanism'))}"
           if isinstance(s.get("privacy"), dict) else ""))
    if cfg.output.save_update:
        update.save(run_dir / "update.safetensors")
    log.flush()
    return ClientSide(case=case, update=update, view=view, seconds=seconds)


def attack_stage(plan: Plan, folder: RunFolder, client: ClientSide, progress: bool, log: RunLog) -> Attacked:
    """Stage 3, the server side: the attack sees the server view and the update only."""
    from fedleak.attacks import attack

    log(f"attack {plan.attack}")
    torch.manual_seed(plan.cfg.seed)
    t0 = time.perf_counter()
    cb = Progress(log, progress, plan.attack["name"])
    try:
        rec = attack(folder.call_options, client.view, client.update, callback=cb)
    finally:
        cb.close()
    seconds = time.perf_counter() - t0
    interrupted = bool(rec.info.get("interrupted", False))
    hist = [float(v) for v in rec.loss_history]
    for note in rec.info.get("notes", []):
        log(note)
    log(f"attack {'INTERRUPTED' if interrupted else 'finished'} after {len(hist)} iteration(s) in "
        f"{seconds:.2f}s" + (f", final loss {hist[-1]:.6g}" if hist else ""))
    return Attacked(rec=rec, history=hist, interrupted=interrupted, planned=cb.last.get("planned"),
                    seconds=seconds)


def enhance_stage(cfg, rec, view, log: RunLog, update=None) -> tuple[Optional[torch.Tensor], float]:
    """Stage 4 (when an enhancer is configured): server-side post-processing of the reconstruction;
    returns ``(enhanced images or None, seconds)``."""
    if not cfg.sections.enhancer_enabled:
        return None, 0.0
    from fedleak.enhance import enhance

    t0 = time.perf_counter()
    enhanced = enhance(rec.images, view, cfg.sections.enhancer, update=update, rec=rec)
    seconds = time.perf_counter() - t0
    log(f"enhancer {cfg.enhancer} ran in {seconds:.2f}s"
        + (f"; accepted blend weights {rec.info['enhancer_blend']}" if "enhancer_blend" in rec.info else ""))
    return enhanced, seconds


def evaluate_stage(cfg, case, rec, enhanced: Optional[torch.Tensor], log: RunLog) -> Scores:
    """Stage 5: the only place (after the attack) where the true images are compared."""
    from fedleak import metrics as M

    opts = cfg.sections.metrics.evaluate_kwargs()
    t0 = time.perf_counter()
    masks = _subject_masks(cfg, case, log)
    known = case.data.labels_known  # data.labels: none -> the labels are placeholders: no label metric
    raw = M.evaluate(case.images, rec, true_labels=case.labels if known else None, masks=masks, **opts)
    if not known:
        raw["label_metrics"] = "not computable: data.labels is none (the images have no true labels)"
        log("data.labels: none: label metrics not computed; the update carries no labels")
    enh = M.evaluate(case.images, enhanced, true_labels=None, masks=masks, **opts) if enhanced is not None else None
    server = case.scenario_metrics()
    return Scores(raw=raw, enhanced=enh, seconds=time.perf_counter() - t0, server=server)


def _summary(scores: Scores, stats: dict) -> dict:
    raw, enh = scores.raw, scores.enhanced
    summary = {k: raw["mean"][k] for k in ("psnr", "ssim", "ssim_rog", "perceptual")}
    if "label_accuracy" in raw:
        summary["label_accuracy"] = raw["label_accuracy"]
    if enh is not None:
        for k in ("psnr", "ssim", "ssim_rog", "perceptual"):
            summary[f"enhanced_{k}"] = enh["mean"][k]
    summary["bits_per_parameter"] = stats.get("bits_per_parameter")
    if isinstance(stats.get("privacy"), dict) and "epsilon" in stats["privacy"]:
        summary["epsilon"] = stats["privacy"]["epsilon"]
        summary["epsilon_protection"] = protection(summary["epsilon"])  # plain words, metrics/privacy_words.py
    return summary


def _metrics_doc(plan: Plan, run_dir: Path, client: ClientSide, att: Attacked, scores: Scores,
                 enhance_seconds: float) -> dict:
    """metrics.json before its wall-clock durations are moved into ``timing`` (see :func:`write_stage`)."""
    update, rec, hist = client.update, att.rec, att.history
    metrics: dict[str, Any] = {"name": run_dir.name, "interrupted": att.interrupted, "seed": plan.cfg.seed,
                               "summary": _summary(scores, update.stats), "raw": scores.raw}
    if scores.enhanced is not None:
        metrics["enhanced"] = scores.enhanced
    metrics["attack"] = {
        "name": plan.attack["name"],
        "options": {k: v for k, v in plan.attack.items() if k != "name"},
        "iterations_run": len(hist),
        "iterations_planned": att.planned,
        "final_loss": hist[-1] if hist else None,
        "best_loss": rec.info.get("best_loss"),
        "info": {k: v for k, v in rec.info.items() if k not in ("attack_config",)},
    }
    metrics["server"] = scores.server
    metrics["model"] = {"name": plan.cfg.model.name, "weights": plan.cfg.model.weights,
                        "weights_sha256": client.case.weights_sha256}
    metrics["update"] = {"kind": update.kind, "protocol": update.protocol, "obfuscation": update.obfuscation,
                         "labels_shared": update.labels is not None, "stats": update.stats}
    metrics["timing"] = {"client_seconds": round(client.seconds, 4), "attack_seconds": round(att.seconds, 4),
                         "enhance_seconds": round(enhance_seconds, 4), "evaluate_seconds": round(scores.seconds, 4)}
    return metrics


def write_stage(plan: Plan, folder: RunFolder, client: ClientSide, att: Attacked, enhanced: Optional[torch.Tensor],
                scores: Scores, metrics: dict, t_all: float, log: RunLog) -> dict:
    """Stage 6: reconstruction.pt, grid.png, loss.png and metrics.json (JSON-safe, durations under ``timing``)."""
    from fedleak.metrics import plots

    cfg, rec, run_dir, raw, enh = plan.cfg, att.rec, folder.path, scores.raw, scores.enhanced
    save_reconstruction(run_dir / RECONSTRUCTION, rec, raw["permutation"], enhanced=enhanced, log=log)
    rec_m = rec.images.detach().cpu()[raw["permutation"]]
    enh_m = enhanced.detach().cpu()[enh["permutation"]] if enhanced is not None else None
    title = (f"{cfg.attack['name']} | {cfg.model.name} {cfg.protocol.name} | "
             f"PSNR {metrics['summary']['psnr']:.2f} dB" + (" | INTERRUPTED" if att.interrupted else ""))
    plots.save_grid(client.case.images, rec_m, run_dir / "grid.png", psnrs=raw["per_image"]["psnr"],
                    enhanced=enh_m, enhanced_psnrs=enh["per_image"]["psnr"] if enh else None, title=title)
    plots.save_loss(att.history, run_dir / "loss.png", series=rec.series,
                    title=f"{plan.attack['name']} matching loss")
    metrics = write_metrics(run_dir, metrics, t_all)
    s = metrics["summary"]
    log(f"mean PSNR {s['psnr']:.3f} dB, SSIM {s['ssim']:.4f}, ROG-SSIM {s['ssim_rog']:.4f}, "
        f"1-HaarPSI {s['perceptual']:.4f}")
    return metrics


def finish_folder(folder: RunFolder, interrupted: bool, log: RunLog) -> None:
    """Mark a finished run COMPLETE (and drop its managed checkpoint); an interrupted one stays resumable."""
    from fedleak.io import check_complete, mark_complete

    ckpt_kept = folder.managed_checkpoint and folder.checkpoint.is_file()
    if interrupted:
        log("interrupted: results are partial; COMPLETE not written"
            + (f"; continue with: fedleak run --resume {folder.path}" if ckpt_kept else ""))
    log.flush()
    if not interrupted:
        mark_complete(folder.path)
        check_complete(folder.path)
        if ckpt_kept:
            folder.checkpoint.unlink()  # the run is complete: its working state is no longer needed


def check(config: Any = None, overrides: Optional[list[str]] = None, force: bool = False, log=None):
    """Everything ``run`` checks before it starts, without running (the prepare stage): config, every named
    section, the memory guard. Returns ``(cfg, attack_options, memory_estimate)``; raises a one-line
    :class:`~fedleak.errors.FedleakError` otherwise."""
    plan = prepare(config, overrides, force=force, log=log)
    return plan.cfg, plan.attack, plan.memory


@capture_warnings
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
    returned. ``force``: start even when the memory guard (:mod:`fedleak.experiment.resources`) estimates
    that the run does not fit in the available memory.

    The stages: :func:`prepare`, :func:`client_stage`, :func:`attack_stage`, :func:`enhance_stage`,
    :func:`evaluate_stage`, :func:`write_stage`.
    """
    t_all = time.perf_counter()
    sigterm_as_interrupt()
    log = RunLog()
    if resume is not None:
        out, done = _resume_stage(resume, config, overrides, out, log)
        if done is not None:
            return out, done
        config = out / "config.yaml"
    plan = prepare(config, overrides, force=force, log=log)
    if plan.cfg.threads:
        torch.set_num_threads(plan.cfg.threads)
    device = resolve_device(plan.cfg.device)  # the one resolution of ``device``: client, attack, enhancer
    log(f"fedleak run: config {config if isinstance(config, (str, Path)) else type(config).__name__}"
        + (f", overrides {overrides}" if overrides else ""))
    log(f"torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}, "
        f"device {device}")
    folder = open_folder(plan, out, resume is not None, log)
    try:
        with using_device(device):
            client = client_stage(plan.cfg, folder.path, log)
            att = attack_stage(plan, folder, client, progress, log)
            enhanced, t_enh = enhance_stage(plan.cfg, att.rec, client.view, log, client.update)
        scores = evaluate_stage(plan.cfg, client.case, att.rec, enhanced, log)
        metrics = _metrics_doc(plan, folder.path, client, att, scores, t_enh)
        metrics["device"] = str(device)
        metrics = write_stage(plan, folder, client, att, enhanced, scores, metrics, t_all, log)
        finish_folder(folder, att.interrupted, log)
        return folder.path, metrics
    except BaseException as e:  # record what went wrong, then let the caller handle it
        log(f"FAILED: {type(e).__name__}: {e}")
        try:
            log.flush()
        except OSError:
            pass
        raise
    finally:
        release(folder.path)  # the folder's claim ends with the run


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
    if s.get("epsilon") is not None:
        priv = ((metrics.get("update") or {}).get("stats") or {}).get("privacy") or {}
        out.append(f"privacy: epsilon {describe(s['epsilon'], priv.get('mechanism'))}"
                   + (f", delta {priv['delta']:.2g}" if isinstance(priv.get("delta"), (int, float)) else ""))
    out.append(f"run folder: {run_dir}")
    return out
