"""Attack an update captured from real FL code (``fedleak attack``): no simulation, no true images.

>>> req = CaptureRequest(update="grads.pt", model="lenet", weights="round5.pt", batch_size=1, shape=(3, 32, 32),
...                      overrides=["model.num_classes=10"])
>>> run_dir, metrics = run_capture(req)

The inputs are what a server has: the model it sent (a registered name or ``import:``, with the weights it
sent), the client's upload and the protocol metadata it knows (learning rate, local steps, batch size, the
input shape, shared labels, the declared obfuscation). The upload is either

* a fedleak update file (``fedleak simulate``, ``output.save_update``; :mod:`fedleak.client.update_io`), which
  carries its own metadata, so the flags are optional; or
* a file saved by any PyTorch FL code, read with ``weights_only=True`` or as safetensors: a ``state_dict`` of
  gradients (FedSGD; with ``local_steps > 1`` a FedAvg pseudo-gradient, (theta0 - theta_tau) / lr), or of the
  client's new weights (FedAvg: the update is the delta ``theta0 - theta_tau`` against the sent weights, the
  convention of :mod:`fedleak.client.protocols`; the client is assumed to run plain SGD at ``lr``).

From them this module builds the :class:`~fedleak.server.view.ServerView` and the
:class:`~fedleak.client.update.Update` and runs the runner's stages (:mod:`fedleak.experiment.runner`:
prepare, attack, enhance, finish) around them; only the client and evaluation stages are left out, because
there are no true images. ``metrics.json`` then holds what is computable without them (matching loss,
recovered labels, iterations, time) and marks the image metrics as not computable (``"captured": true``).
"""
from __future__ import annotations

import datetime as _dt
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from fedleak.client.update import Update
from fedleak.errors import ConfigError, DataError, FedleakError, NumericalError

#: the file a captured run folder holds beside the usual ones (``fedleak run --resume`` refuses such folders)
CAPTURE_FILE = "capture.json"
KINDS = ("auto", "gradients", "weights")
#: ``auto``: a file this close to the sent weights (relative L2 distance) is the client's new weights
WEIGHTS_DISTANCE = 0.5
#: image metrics that need the true images
NOT_COMPUTABLE = ["psnr", "ssim", "ssim_rog", "perceptual", "label_accuracy"]


@dataclass
class CaptureRequest:
    """What ``fedleak attack`` was given (None: not given; taken from the file's metadata when it has any)."""

    update: str
    model: Optional[str] = None
    weights: Optional[str] = None
    update_kind: str = "auto"
    lr: Optional[float] = None
    local_steps: Optional[int] = None
    batch_size: Optional[int] = None
    shape: Optional[tuple[int, int, int]] = None  # (C, H, W)
    labels: Optional[list[int]] = None
    attack: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    out: Optional[str] = None
    force: bool = False


@dataclass
class Captured:
    """The attacker's inputs built from a captured update, and what the run folder records about them."""

    cfg: Any
    view: Any
    update: Update
    info: dict


# ------------------------------------------------------------------------------------------ parsing helpers
def parse_shape(text: str) -> tuple[int, int, int]:
    """``C,H,W`` -> a tuple (square images only: the attacks reconstruct H = W)."""
    try:
        c, h, w = (int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--shape must look like C,H,W (e.g. 3,32,32), got {text!r}") from None
    if h != w or c < 1 or h < 4:
        raise ConfigError(f"--shape {text!r}: images must be square with H = W >= 4 and C >= 1")
    return c, h, w


def parse_labels(text: str) -> list[int]:
    """``3,1,4`` or a file: a text file of integers (commas, spaces or lines), or a ``torch.save`` tensor/list
    (read with ``weights_only=True``)."""
    p = Path(text).expanduser()
    if p.is_file():
        if p.suffix.lower() in (".pt", ".pth", ".bin"):
            from fedleak.io import torch_load_safely

            obj = torch_load_safely(p, f"labels file {str(p)!r}", DataError)
            vals = obj.reshape(-1).tolist() if torch.is_tensor(obj) else obj
        else:
            vals = [v for v in re.split(r"[\s,;]+", p.read_text().strip()) if v]
    else:
        vals = [v for v in str(text).split(",") if v.strip()]
    try:
        labels = [int(v) for v in vals]
    except (TypeError, ValueError):
        raise ConfigError(f"--labels must be integers like 3,1,4 or a file of them, got {text!r}") from None
    if not labels or min(labels) < 0:
        raise ConfigError(f"--labels must be non-negative class indices, got {text!r}")
    return labels


# ------------------------------------------------------------------------------------------ reading the file
def _read(path: str) -> tuple[Any, Optional[dict], str]:
    """``(tensors, meta, format)``: the fedleak format decoded with its metadata, anything else as stored."""
    from fedleak.client.update_io import is_fedleak_update, read_tensor_file, read_tensors

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"update file {str(p)!r} not found")
    if is_fedleak_update(p):
        tensors, meta = read_tensors(p)
        return tensors, meta, "fedleak"
    tensors = read_tensor_file(p)
    return tensors, None, "safetensors" if p.suffix.lower() in (".safetensors", ".st") else "torch.save"


def _infer_classes(name: str, m: dict, size: int, channels: int, tensors: Any) -> Optional[int]:
    """The number of classes the update was computed with: the model is built twice on the meta device (no
    memory), with 2 and 3 classes, and the update's tensor for the parameter whose shape changes gives it."""
    from fedleak.client.models import build_model

    kw = dict(image_size=size, width=m.get("width", 1.0), activation=m.get("activation", "relu"), seed=0,
              **(m.get("options") or {}))
    if channels != 3:
        kw["channels"] = channels
    try:
        with torch.device("meta"):
            a, b = (build_model(name, num_classes=n, **kw) for n in (2, 3))
    except FedleakError:
        raise
    except Exception:  # a user model that does not build on the meta device: ask for model.num_classes
        return None
    sa, sb = a.state_dict(), b.state_dict()
    if isinstance(tensors, (list, tuple)):
        names = [k for k, _ in a.named_parameters()]
        tensors = dict(zip(names if len(names) == len(tensors) else list(sa), tensors))
    got = {k[len("module."):] if k.startswith("module.") else k: v for k, v in tensors.items()}
    for k, t in sa.items():
        if k in sb and k in got and t.shape != sb[k].shape and got[k].dim() == t.dim():
            d = next(i for i, (p, q) in enumerate(zip(t.shape, sb[k].shape)) if p != q)
            return int(got[k].shape[d])
    return None


def _raw_config(req: CaptureRequest, meta: Optional[dict], tensors: Any) -> tuple[dict, int]:
    """The run config (a plain dict) from ``--set``, the flags and the file's metadata, in that order of
    precedence for ``--set`` and flags, the metadata filling only what neither gave; and the channel count.
    Long: one flat mapping from every flag and metadata field to its config key (split, it only scatters)."""
    from fedleak.config.schema import apply_override

    raw: dict[str, Any] = {}
    for ov in req.overrides:
        apply_override(raw, ov)
    meta = meta or {}
    server = meta.get("server") or {}
    m, d, p = (raw.setdefault(k, {}) for k in ("model", "data", "protocol"))
    if req.model:
        m["name"] = req.model
    if req.weights:
        m["weights"] = req.weights
    for k in ("name", "weights", "num_classes", "width", "activation", "seed", "options"):
        if k not in m and server.get(k) is not None:
            m[k] = server[k]
    if "name" not in m:
        raise ConfigError("give --model NAME (a registered model or import:pkg.module:Factory): the model the "
                          "server sent")
    channels, size = _shape(req, server, d)
    if "num_classes" not in m:
        n = _infer_classes(m["name"], m, size, channels, tensors)
        if n is None:
            raise ConfigError("cannot tell the number of classes from the update; give --set model.num_classes=N")
        m["num_classes"] = n
    d["source"], d["size"] = "captured", size
    labels = req.labels if req.labels is not None else meta.get("labels")
    b = req.batch_size or d.get("batch_size") or (len(labels) if labels else None) or meta.get("batch_size")
    if not b:
        raise ConfigError("give --batch-size N (the number of images in the client's batch) or --labels")
    d["batch_size"] = int(b)
    if req.lr is not None:
        p["lr"] = req.lr
    elif meta.get("lr") is not None:
        p.setdefault("lr", meta["lr"])
    steps = req.local_steps or p.get("local_steps") or (
        max(1, int(meta.get("local_steps", 1)) // max(1, int(meta.get("epochs", 1)))) if meta else 1)
    p["local_steps"] = int(steps)
    if meta.get("protocol"):
        p.setdefault("name", meta["protocol"])
        if meta.get("kind") in ("delta", "pseudo-gradient"):
            p.setdefault("send", meta["kind"])
    for k in ("epochs", "local_batch_size"):
        if meta.get(k) is not None:
            p.setdefault(k, meta[k])
    p.setdefault("share_labels", labels is not None)
    if meta and "obfuscation" not in raw:
        raw["obfuscation"] = [dict(s) for s in meta.get("obfuscation") or []]
    if req.attack:
        prev = raw.get("attack")
        raw["attack"] = {**(prev if isinstance(prev, dict) else {}), "name": req.attack}
    return raw, channels


def _shape(req: CaptureRequest, server: dict, d: dict) -> tuple[int, int]:
    if req.shape is not None:
        return req.shape[0], req.shape[1]
    if d.get("size"):
        return int(server.get("channels", 3)), int(d["size"])
    if server.get("image_size"):
        return int(server.get("channels", 3)), int(server["image_size"])
    raise ConfigError("give --shape C,H,W or --image-size N: the input shape the server's model expects")


def _finish_config(raw: dict, req: CaptureRequest):
    """Validate the config; name the folder; turn the attack checkpoint off (a captured run is not resumed)."""
    from fedleak.attacks import ATTACKS
    from fedleak.config.ownership import DEFAULT_ATTACK
    from fedleak.config.schema import validate

    att = raw.get("attack") if isinstance(raw.get("attack"), dict) else {"name": raw.get("attack") or DEFAULT_ATTACK}
    att.setdefault("name", DEFAULT_ATTACK)
    raw["attack"] = att
    if "checkpoint" not in att and att["name"] in ATTACKS and ATTACKS.caps(att["name"]).checkpoints:
        att["checkpoint"] = None
    out = raw.setdefault("output", {})
    if not out.get("name") and req.out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out["name"] = re.sub(r"[^A-Za-z0-9._-]+", "_", f"capture-{raw['model']['name']}-{att['name']}-{stamp}")
    cfg = validate(raw)
    if cfg.server.get("name") != "honest":
        raise ConfigError("a captured update is attacked with the model as sent; the server section must be honest "
                          "(give the modified model itself with --model/--weights)")
    return cfg


# ------------------------------------------------------------------------------------------ model and update
def server_model(cfg, channels: int) -> tuple[nn.Module, dict, Optional[str]]:
    """The model the server sent: built from the config (seeded), ``model.weights`` loaded (one line naming
    missing/unexpected keys and shape mismatches); returns ``(model, build kwargs, weights SHA-256)``."""
    from fedleak.client.models import build_model, model_kwargs
    from fedleak.client.weights import load_weights

    kwargs = model_kwargs(cfg.model, cfg.data.size, cfg.seed)
    if channels != 3:
        kwargs["channels"] = channels
    model = build_model(cfg.model.name, **kwargs)
    sha = load_weights(model, cfg.model.weights, cfg.model.name) if cfg.model.weights else None
    return model, kwargs, sha


def _named(tensors: Any, model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """A dict of tensors by name: a list is matched to the parameters (or the state_dict) in order; a
    ``module.`` prefix (DataParallel) is dropped when the model's names have none."""
    if isinstance(tensors, (list, tuple)):
        for names in ([k for k, _ in model.named_parameters()], list(model.state_dict())):
            if len(names) == len(tensors):
                return dict(zip(names, tensors))
        raise DataError(f"{what} holds a list of {len(tensors)} tensor(s); the model has "
                        f"{len(list(model.parameters()))} parameter(s)")
    if tensors and all(k.startswith("module.") for k in tensors) and \
            not any(k.startswith("module.") for k in model.state_dict()):
        return {k[len("module."):]: v for k, v in tensors.items()}
    return dict(tensors)


def _mismatch(got: dict[str, torch.Tensor], want: dict[str, tuple], optional: set[str]) -> list[str]:
    missing = [k for k in want if k not in got and k not in optional]
    extra = [k for k in got if k not in want]
    shapes = [f"{k} {tuple(got[k].shape)} (model: {want[k]})" for k in want
              if k in got and tuple(got[k].shape) != tuple(want[k])]
    out = []
    for label, items in (("missing", missing), ("unexpected", extra), ("shape mismatch", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            out.append(f"{label}: {', '.join(items[:3])}{more}")
    return out


def _check(got: dict[str, torch.Tensor], model: nn.Module, weights_kind: bool, what: str, name: str) -> None:
    want = {k: tuple(v.shape) for k, v in (model.state_dict().items() if weights_kind
                                           else model.named_parameters())}
    buffers = {k for k, _ in model.named_buffers()} if weights_kind else set()
    problems = _mismatch(got, want, buffers)
    if problems:
        hint = "; check --model, --set model.num_classes / model.width and --shape" if any(
            p.startswith("shape") for p in problems) else ""
        raise DataError(f"{what} does not fit {name}: {'; '.join(problems)}{hint}")
    for k, t in got.items():
        if not torch.is_tensor(t):
            raise DataError(f"{what}: {k!r} is not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NumericalError(f"{what}: tensor {k!r} has {bad} NaN/Inf value(s); nothing to attack")


def detect_kind(got: dict[str, torch.Tensor], model: nn.Module) -> tuple[str, str]:
    """``(gradients | weights, why)``: a file that holds buffers (running statistics) or lies within
    :data:`WEIGHTS_DISTANCE` (relative L2) of the sent weights is the client's new weights."""
    buffers = [k for k, _ in model.named_buffers() if k in got]
    if buffers:
        return "weights", f"it holds buffer(s) such as {buffers[0]!r}, as a state_dict of weights does"
    params = dict(model.named_parameters())
    num = sum(float((got[k].double() - v.detach().double()).pow(2).sum()) for k, v in params.items() if k in got)
    den = sum(float(v.detach().double().pow(2).sum()) for v in params.values())
    r = math.sqrt(num) / max(math.sqrt(den), 1e-30)
    if r < WEIGHTS_DISTANCE:
        return "weights", f"it lies at relative distance {r:.3g} < {WEIGHTS_DISTANCE} from the sent weights"
    return "gradients", f"it lies at relative distance {r:.3g} >= {WEIGHTS_DISTANCE} from the sent weights"


def _stats(tensors: dict[str, torch.Tensor], file_bytes: int, meta_stats: Optional[dict]) -> dict:
    n = sum(t.numel() for t in tensors.values())
    stats = dict(meta_stats or {})
    stats.update({"num_parameters": n,
                  "sent_norm": math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values())),
                  "nonzero_fraction": sum(int((t != 0).sum()) for t in tensors.values()) / max(1, n),
                  "file_bytes": file_bytes, "file_bits_per_parameter": 8 * file_bytes / max(1, n)})
    stats.setdefault("bits_per_parameter", stats["file_bits_per_parameter"])
    return stats


def _foreign_update(got: dict, model: nn.Module, cfg, req: CaptureRequest, what: str, info: dict) -> Update:
    """The :class:`Update` of a file from foreign FL code: gradients, or new weights turned into the FedAvg
    delta ``theta0 - theta_tau`` (buffers such as BatchNorm running statistics are not part of the upload)."""
    kind = req.update_kind
    if kind == "auto":
        kind, why = detect_kind(got, model)
        info["kind_detection"] = f"{kind}: {why}"
    _check(got, model, kind == "weights", what, cfg.model.name)
    p = cfg.protocol
    params = dict(model.named_parameters())
    lr_given = req.lr is not None or "lr" in _set_keys(req)
    if kind == "weights" or p.local_steps > 1:
        if not lr_given:
            raise ConfigError(f"a {'weights' if kind == 'weights' else 'multi-step'} update is a FedAvg round: "
                              "give --lr (the client's learning rate; plain SGD is assumed)")
    if kind == "weights":
        info["ignored_buffers"] = sorted(k for k in got if k not in params)
        tensors = {k: (v.detach().float() - got[k].float()) for k, v in params.items()}
        ukind, protocol = "delta", "fedavg"
    else:
        tensors = {k: got[k].float() for k in params}
        ukind, protocol = ("pseudo-gradient", "fedavg") if p.local_steps > 1 else ("gradient", "fedsgd")
    return Update(tensors=tensors, kind=ukind, protocol=protocol, lr=p.lr if protocol == "fedavg" else None,
                  local_steps=p.local_steps * (p.epochs if protocol == "fedavg" else 1),
                  epochs=p.epochs if protocol == "fedavg" else 1,
                  local_batch_size=p.local_batch_size if protocol == "fedavg" else None)


def _set_keys(req: CaptureRequest) -> set[str]:
    return {ov.split("=", 1)[0].strip().split(".")[-1] for ov in req.overrides if "=" in ov}


def load_capture(req: CaptureRequest, log=None) -> Captured:
    """Read and check everything (one-line errors, nothing executed) and build the attacker's inputs."""
    from fedleak.client.obfuscations import build_pipeline
    from fedleak.io import sha256_file
    from fedleak.server.view import ServerView

    if req.update_kind not in KINDS:
        raise ConfigError(f"--update-kind must be one of {', '.join(KINDS)}, got {req.update_kind!r}")
    path = Path(req.update).expanduser()
    what = f"update file {str(path)!r}"
    tensors, meta, fmt = _read(req.update)
    raw, channels = _raw_config(req, meta, tensors)
    cfg = _finish_config(raw, req)
    model, kwargs, sha = server_model(cfg, channels)
    server = (meta or {}).get("server") or {}
    if server.get("scenario") not in (None, "honest"):
        raise ConfigError(f"{what} was simulated with server scenario {server['scenario']!r}; attack it with "
                          "fedleak run (the modified model it sent is not in the file)")
    if sha and server.get("weights_sha256") and sha != server["weights_sha256"] and not req.weights:
        raise DataError(f"{what} was simulated with other weights than {cfg.model.weights!r} (SHA-256 differs)")
    got = _named(tensors, model, what)
    info: dict[str, Any] = {"source": str(path), "sha256": sha256_file(path), "format": fmt,
                            "weights_sha256": sha}
    if meta is not None and req.update_kind == "auto":
        _check(got, model, False, what, cfg.model.name)
        m = {k: v for k, v in meta.items() if k not in ("server", "labels", "stats")}
        update = Update(tensors={k: got[k].float() for k, _ in model.named_parameters()}, **m)
        info["kind_detection"] = f"{update.kind}: from the file's metadata"
        if req.lr is not None and update.protocol == "fedavg":
            update.lr = req.lr  # a flag the user gave wins over the file's metadata
        if req.local_steps and update.protocol == "fedavg":
            update.local_steps = req.local_steps * update.epochs
    else:
        update = _foreign_update(got, model, cfg, req, what, info)
        cfg.protocol.name = update.protocol  # recorded in config.yaml as the server understood the round
        if update.kind == "delta":
            cfg.protocol.send = "delta"
        update.obfuscation = build_pipeline(cfg.obfuscation).describe()
    n = cfg.data.batch_size
    labels = req.labels if req.labels is not None else (meta or {}).get("labels")
    if labels is not None:
        if len(labels) != n or max(labels) >= cfg.model.num_classes:
            raise ConfigError(f"labels {list(labels)} must be {n} class index(es) below model.num_classes="
                              f"{cfg.model.num_classes}")
        update.labels = torch.tensor(labels, dtype=torch.long)
    update.batch_size = update.num_examples = n
    update.stats = _stats(update.tensors, path.stat().st_size, (meta or {}).get("stats"))
    view = ServerView(model_name=cfg.model.name, model_kwargs=kwargs,
                      global_state={k: v.detach().clone() for k, v in model.state_dict().items()},
                      image_size=cfg.data.size, channels=channels, num_classes=cfg.model.num_classes, batch_size=n)
    info.update(channels=channels, image_size=cfg.data.size, batch_size=n, kind=update.kind,
                protocol=update.protocol, lr=update.lr, local_steps=update.local_steps,
                labels_shared=update.labels is not None)
    if log is not None:
        log(f"captured update {str(path)!r} ({fmt}): {info.get('kind_detection', update.kind)}; protocol "
            f"{update.protocol}, {n} image(s) {channels}x{cfg.data.size}x{cfg.data.size}, model {cfg.model.name}"
            + (f" with weights {cfg.model.weights!r}" if cfg.model.weights else " (seeded initialisation)"))
        if info.get("ignored_buffers"):
            log(f"{len(info['ignored_buffers'])} buffer(s) of the new weights are not part of the upload: "
                f"{info['ignored_buffers'][:3]}")
    return Captured(cfg=cfg, view=view, update=update, info=info)


def server_record(case) -> dict:
    """What the server knows about the model it sent in a simulated round (``fedleak simulate`` writes it
    into the update file, so ``fedleak attack`` needs no model flags)."""
    cfg, kw = case.config, dict(case.model_kwargs)
    return {"name": cfg.model.name, "num_classes": cfg.model.num_classes, "width": cfg.model.width,
            "activation": cfg.model.activation, "seed": kw.get("seed"), "options": dict(cfg.model.options),
            "weights": cfg.model.weights, "weights_sha256": case.weights_sha256,
            "channels": int(case.images.shape[1]), "image_size": cfg.data.size,
            "scenario": cfg.server.get("name")}


# ------------------------------------------------------------------------------------------ the run
def save_tiles(images: torch.Tensor, path: Path, scale: int = 4, cols: int = 8) -> None:
    """The reconstructions side by side (nearest-neighbour upscaled), as a PNG: there are no originals."""
    import numpy as np
    from PIL import Image

    from fedleak.io import atomic_path

    x = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = x.shape
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    canvas = torch.ones(c, rows * (h + 2), cols * (w + 2))
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, r * (h + 2) + 1: r * (h + 2) + 1 + h, k * (w + 2) + 1: k * (w + 2) + 1 + w] = x[i]
    arr = (canvas.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _metrics(plan, run_dir: Path, cap: Captured, att, enhanced, t_enh: float) -> dict:
    """metrics.json of a captured run: only what is computable without the true images."""
    rec, hist, n = att.rec, att.history, cap.view.batch_size
    labels = None if rec.labels is None else [int(v) for v in torch.as_tensor(rec.labels).reshape(-1).tolist()]
    summary = {k: None for k in NOT_COMPUTABLE[:4]}
    summary.update({"final_loss": hist[-1] if hist else None, "best_loss": rec.info.get("best_loss"),
                    "iterations": len(hist), "recovered_labels": labels,
                    "bits_per_parameter": cap.update.stats.get("bits_per_parameter")})
    return {
        "name": run_dir.name, "interrupted": att.interrupted, "seed": plan.cfg.seed, "captured": True,
        "not_computable": {"metrics": NOT_COMPUTABLE, "why": "no true images: the update was captured"},
        "summary": summary,
        "raw": {"num_images": n, "permutation": list(range(n)), "per_image": {}, "labels": labels},
        "attack": {"name": plan.attack["name"], "options": {k: v for k, v in plan.attack.items() if k != "name"},
                   "iterations_run": len(hist), "iterations_planned": att.planned,
                   "final_loss": hist[-1] if hist else None, "best_loss": rec.info.get("best_loss"),
                   "info": {k: v for k, v in rec.info.items() if k != "attack_config"}},
        "model": {"name": plan.cfg.model.name, "weights": plan.cfg.model.weights,
                  "weights_sha256": cap.info.get("weights_sha256")},
        "update": {**{k: v for k, v in cap.info.items() if k != "weights_sha256"},
                   "obfuscation": cap.update.obfuscation, "stats": cap.update.stats},
        "timing": {"attack_seconds": round(att.seconds, 4), "enhance_seconds": round(t_enh, 4)},
    }


def _write(plan, folder, cap: Captured, att, enhanced, metrics: dict, t_all: float, log) -> dict:
    from fedleak.experiment.rundir import RECONSTRUCTION, save_reconstruction, write_metrics
    from fedleak.metrics import plots

    run_dir, rec = folder.path, att.rec
    save_reconstruction(run_dir / RECONSTRUCTION, rec, list(range(cap.view.batch_size)), enhanced=enhanced, log=log)
    save_tiles(enhanced if enhanced is not None else rec.images, run_dir / "grid.png")
    plots.save_loss(att.history, run_dir / "loss.png", series=rec.series,
                    title=f"{plan.attack['name']} matching loss (captured update)")
    metrics = write_metrics(run_dir, metrics, t_all)
    s = metrics["summary"]
    log(f"no true images: PSNR/SSIM not computable; final matching loss {s['final_loss']}, "
        f"recovered labels {s['recovered_labels']}")
    return metrics


def run_capture(req: CaptureRequest, progress: bool = True) -> tuple[Path, dict]:
    """Attack a captured update and write a run folder (config.yaml, capture.json, run.log, reconstruction.pt,
    grid.png, loss.png, metrics.json, COMPLETE); returns ``(run_dir, metrics)``. Everything is checked before
    the folder is created. The stages are the runner's: prepare (config, memory guard), attack, enhance,
    finish; there is no client stage and no evaluation against true images."""
    import platform

    from fedleak.experiment import runner as R
    from fedleak.experiment.claim import release, sigterm_as_interrupt
    from fedleak.io import write_json

    t_all = time.perf_counter()
    sigterm_as_interrupt()
    log = R.RunLog()
    log(f"fedleak attack: update {req.update!r}, model {req.model!r}, weights {req.weights!r}")
    cap = load_capture(req, log)
    plan = R.prepare(cap.cfg, force=req.force, log=log)
    if plan.cfg.threads:
        torch.set_num_threads(plan.cfg.threads)
    log(f"torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}")
    folder = R.open_folder(plan, req.out, False, log)
    try:
        write_json(folder.path / CAPTURE_FILE, {"request": {k: v for k, v in vars(req).items()}, **cap.info})
        client = R.ClientSide(case=None, update=cap.update, view=cap.view, seconds=0.0)
        att = R.attack_stage(plan, folder, client, progress, log)
        enhanced, t_enh = R.enhance_stage(plan.cfg, att.rec, cap.view, log)
        metrics = _metrics(plan, folder.path, cap, att, enhanced, t_enh)
        metrics = _write(plan, folder, cap, att, enhanced, metrics, t_all, log)
        R.finish_folder(folder, att.interrupted, log)
        return folder.path, metrics
    except BaseException as e:  # record what went wrong, then let the caller handle it
        log(f"FAILED: {type(e).__name__}: {e}")
        log.flush()
        raise
    finally:
        release(folder.path)


def summary_lines(run_dir: Path, metrics: dict) -> list[str]:
    s = metrics.get("summary", {})
    loss = s.get("final_loss")
    return [f"{metrics.get('raw', {}).get('num_images', '?')} image(s) reconstructed from the captured update: "
            f"{s.get('iterations')} iteration(s), final matching loss "
            f"{loss if loss is None else format(float(loss), '.4g')}, recovered labels {s.get('recovered_labels')}",
            "PSNR/SSIM not computable: there are no true images",
            f"run folder: {run_dir}"]
