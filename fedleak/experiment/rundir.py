"""What a run folder holds beyond the generic files of :mod:`fedleak.io`: the reconstruction file (one writer,
used by the runner and the Flower audit), the attack checkpoint's name, the ``timing`` split of
metrics.json, and the capture of library warnings into ``run.log`` (:func:`capture_warnings`)."""
from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from fedleak.io import atomic_path

#: the run folder's attack checkpoint (see :mod:`fedleak.experiment.runner`)
CHECKPOINT = "checkpoint.pt"
#: the run folder's reconstruction file
RECONSTRUCTION = "reconstruction.pt"
#: keys holding wall-clock durations: moved from anywhere in metrics.json into its ``timing`` key
TIMING_KEYS = {"seconds", "elapsed", "time", "wall_time"}


def _series_tensor(points: Sequence) -> torch.Tensor:
    """``[(iteration, value), ...]`` or ``[value, ...]`` -> a float64 (N, 2) tensor."""
    return torch.tensor([list(p) if isinstance(p, (list, tuple)) else [i, p] for i, p in enumerate(points)],
                        dtype=torch.float64)


def reconstruction_blob(rec, permutation: Sequence[int], enhanced: Optional[torch.Tensor] = None,
                        log: Optional[Callable[[str], None]] = None) -> dict:
    """The plain dict of tensors saved for a :class:`~fedleak.attacks.Reconstruction` (loads with
    ``weights_only=True``): images, permutation, loss_history, [labels], [enhanced], [series_<key>]. A series
    that is not numeric is left out (and said so through ``log``)."""
    blob = {"images": rec.images.detach().to("cpu", torch.float32).contiguous(),
            "permutation": torch.tensor(list(permutation), dtype=torch.int64),
            "loss_history": torch.tensor([float(v) for v in rec.loss_history], dtype=torch.float64)}
    if rec.labels is not None:
        blob["labels"] = torch.as_tensor(rec.labels).detach().cpu()
    if enhanced is not None:
        blob["enhanced"] = enhanced.detach().to("cpu", torch.float32).contiguous()
    for key, pts in (rec.series or {}).items():
        try:
            blob[f"series_{key}"] = _series_tensor(pts)
        except (TypeError, ValueError):  # user data (an attack's series), not a feature probe
            if log is not None:
                log(f"series {key!r} not saved (not numeric pairs)")
    return blob


def save_reconstruction(path: str | Path, rec, permutation: Sequence[int], enhanced: Optional[torch.Tensor] = None,
                        log: Optional[Callable[[str], None]] = None) -> Path:
    """Write :func:`reconstruction_blob` atomically to ``path`` (``torch.save``); returns the path."""
    path = Path(path)
    blob = reconstruction_blob(rec, permutation, enhanced, log)
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def move_timing(node: Any, path: list, out: dict) -> None:
    """Move every wall-clock duration (keys in :data:`TIMING_KEYS` or ending in ``_seconds``) out of ``node``
    into ``out`` under its dotted path, so the rest of metrics.json depends on the config and seed only."""
    if isinstance(node, dict):
        for k in list(node):
            if k in TIMING_KEYS or (isinstance(k, str) and k.endswith("_seconds")):
                out[".".join([*path, str(k)])] = node.pop(k)
            else:
                move_timing(node[k], [*path, str(k)], out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            move_timing(v, [*path, str(i)], out)


def write_metrics(run_dir: Path, metrics: dict, t_all: float) -> dict:
    """Write ``metrics.json`` (JSON-safe; the total and every other duration under ``timing``, so the rest
    depends on the config and seed only); returns what was written."""
    import time

    from fedleak.io import jsonable, write_json

    metrics["timing"]["total_seconds"] = round(time.perf_counter() - t_all, 4)
    metrics = jsonable(metrics)
    timing = metrics.pop("timing")
    moved: dict = {}
    move_timing(metrics, [], moved)
    metrics["timing"] = {**timing, **({"other": moved} if moved else {})}
    write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics


# ------------------------------------------------------------------------------- library warnings -> run.log
class _WarningSink(logging.Handler):
    """Where the warnings of one run go: its log once :func:`bind_warnings` named it (held until then).
    Each distinct warning (category, text, place) is written once."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.target: Optional[Callable[[str], None]] = None
        self.pending: list[str] = []
        self.seen: set = set()

    def write(self, line: str) -> None:
        if self.target is None:
            self.pending.append(line)
        else:
            self.target(line)

    def show(self, message, category, filename, lineno, file=None, line=None) -> None:  # warnings.showwarning
        key = (category, str(message), filename, lineno)
        if key not in self.seen:
            self.seen.add(key)
            where = "/".join(Path(str(filename)).parts[-3:])
            self.write(f"warning: {category.__name__}: {' '.join(str(message).split())} ({where}:{lineno})")

    def emit(self, record: logging.LogRecord) -> None:  # logging records of libraries (root handler)
        key = (record.name, record.levelno, record.getMessage())
        if key not in self.seen:
            self.seen.add(key)
            self.write(f"log {record.levelname.lower()} from {record.name}: {' '.join(record.getMessage().split())}")


_SINKS: list[_WarningSink] = []


def bind_warnings(log: Callable[[str], None]) -> None:
    """Send the library warnings of the run being captured (see :func:`capture_warnings`) to ``log``,
    with those that came before; outside a capture, nothing happens."""
    if _SINKS:
        sink = _SINKS[-1]
        sink.target = log
        for line in sink.pending:
            log(line)
        sink.pending.clear()


def capture_warnings(fn: Callable) -> Callable:
    """Decorator: while ``fn`` runs, Python warnings (``warnings.warn``, e.g. Opacus's ``UserWarning``) and
    library log records of level WARNING and above are written to the run's log (``run.log``, bound by
    :func:`bind_warnings`) instead of the console. The warning filters stay as they were (an ``error`` or
    ``ignore`` filter still applies); the previous handlers come back when ``fn`` returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        sink = _WarningSink()
        root = logging.getLogger()
        with warnings.catch_warnings():
            warnings.showwarning = sink.show
            root.addHandler(sink)
            _SINKS.append(sink)
            try:
                return fn(*args, **kwargs)
            finally:
                _SINKS.remove(sink)
                root.removeHandler(sink)

    return wrapper
