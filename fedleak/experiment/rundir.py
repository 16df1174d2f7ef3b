"""What a run folder holds beyond the generic files of :mod:`fedleak.io`: the reconstruction file (one writer,
used by the runner and the Flower audit), the attack checkpoint's name and the ``timing`` split of
metrics.json."""
from __future__ import annotations

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
