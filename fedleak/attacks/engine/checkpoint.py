"""Engine state: in-memory snapshots (roll-back after a NaN) and checkpoint files (resume after a kill).

A checkpoint is a ``torch.save`` of plain tensors and numbers, written atomically, loaded with
``weights_only=True``, and refused when it was made with other attack settings or for another update.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Optional

import torch

from fedleak.errors import ConfigError
from fedleak.io import atomic_path, torch_load_safely

#: options that do not change the result of the iterations already run (a checkpoint resumes across them)
_NOT_IN_KEY = ("checkpoint", "checkpoint_every", "resume", "threads", "callback_every", "iterations")


def snapshot(latent, label_param, opt, sched, history, run_best, it) -> dict:
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


def restore(snap, latent, label_param, opt, sched) -> int:
    """Put a snapshot (or a loaded checkpoint) back into the live objects; returns its iteration."""
    with torch.no_grad():
        latent.z.copy_(snap["z"])
        if label_param is not None:
            label_param.copy_(snap["label_param"])
    opt.load_state_dict(copy.deepcopy(snap["opt"]))
    sched.load_state_dict(copy.deepcopy(snap["sched"]))
    torch.set_rng_state(snap["torch_rng"])
    return snap["iteration"]


def config_key(cfg) -> dict:
    """The options a checkpoint must have been made with."""
    d = cfg.model_dump()
    for k in _NOT_IN_KEY:
        d.pop(k, None)
    if d.get("priors") is None:  # checkpoints from before the option existed still resume
        d.pop("priors", None)
    return d


def fingerprint(view, update) -> str:
    """SHA-256 of what is being attacked (update tensors and metadata, data shape): a checkpoint made for
    another update (other data, model, seed or obfuscation) is never resumed by mistake."""
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


def save_checkpoint(path: Path, cfg, restart: int, snap: dict, best: dict, meta: Optional[dict] = None) -> None:
    """Write the whole attack state to a temporary file and rename it over ``path``: a kill at any moment
    leaves either the previous checkpoint or the new one, never a torn file."""
    meta = meta or {}
    payload = {"version": 2, "config": config_key(cfg), "iterations": cfg.iterations, "restart": restart,
               "best": best, "fingerprint": meta.get("fingerprint"),
               "prior_history": [float(v) for v in meta.get("prior_history", [])],
               # multi-stage runs (fedleak.attacks.engine.stages): the stage, all stages' settings, earlier results
               "stage": meta.get("stage", 0), "stages_key": meta.get("stages_key"), "carry": meta.get("carry"),
               **snap}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Optional[Path], cfg, fingerprint: Optional[str] = None,
                    stages_key: Optional[list] = None) -> Optional[dict]:
    """Load a checkpoint with ``weights_only=True`` (a pickle that would build arbitrary objects or run code is
    refused, not executed) and check it belongs to these attack settings and this update (``stages_key``: the
    settings of every stage of a multi-stage run; None for a single-stage run)."""
    if path is None or not path.is_file():
        return None
    where = f"checkpoint {str(path)!r}"
    state = torch_load_safely(path, where, ConfigError, "; delete it to start over")
    required = ("config", "restart", "best", "z", "opt", "sched", "history", "run_best", "iteration", "torch_rng")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise ConfigError(f"{where} is not a fedleak attack checkpoint; delete it to start over")
    if state.get("config") != config_key(cfg) or state.get("stages_key") != stages_key:
        raise ConfigError(f"{where} was made with different attack settings; delete it to start over")
    if fingerprint is not None and state.get("fingerprint") not in (None, fingerprint):
        raise ConfigError(f"{where} was made for a different update (data, model, seed or obfuscation changed); "
                          "delete it to start over")
    if not (isinstance(state["restart"], int) and 0 <= state["restart"] < cfg.restarts):
        raise ConfigError(f"{where} is for restart {state['restart']!r} but the attack has {cfg.restarts}")
    return state
