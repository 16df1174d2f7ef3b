"""Figures for a run: the image grid and the loss curve (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported anywhere in this process
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedleak.io import atomic_path  # noqa: E402

MAX_COLUMNS = 8


def _hwc(x: Any) -> np.ndarray:
    t = x.detach().to("cpu", torch.float32) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.float().clamp(0, 1)
    if t.dim() == 3 and t.shape[0] in (1, 3):
        t = t.permute(1, 2, 0)
    a = t.numpy()
    return a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a


def _batch(x: Any) -> Sequence:
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        return [x]
    return list(x)


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def save_grid(originals: Any, recs: Any, path: str | Path, psnrs: Optional[Sequence[float]] = None,
              enhanced: Any = None, enhanced_psnrs: Optional[Sequence[float]] = None,
              title: Optional[str] = None) -> None:
    """Originals (top row) over reconstructions (second row), optionally enhanced reconstructions (third
    row); the PSNR of each reconstruction is written under it. Batches wider than 8 wrap into blocks.
    ``recs`` (and ``enhanced``) must already be in the same order as ``originals`` (see metrics.match)."""
    orig, rec = _batch(originals), _batch(recs)
    enh = _batch(enhanced) if enhanced is not None else None
    if len(orig) != len(rec) or (enh is not None and len(enh) != len(orig)):
        raise ValueError("save_grid: originals, reconstructions and enhanced must have the same length")
    n = len(orig)
    ncol = max(1, min(n, MAX_COLUMNS))
    blocks = max(1, math.ceil(n / ncol))
    kinds = [("original", orig, None), ("reconstruction", rec, psnrs)]
    if enh is not None:
        kinds.append(("enhanced", enh, enhanced_psnrs))
    nrow = blocks * len(kinds)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol + 0.6, 1.85 * nrow + (0.3 if title else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        b, c = divmod(i, ncol)
        for k, (label, imgs, values) in enumerate(kinds):
            ax = axes[b * len(kinds) + k, c]
            img = _hwc(imgs[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            if c == 0:
                ax.text(-0.08, 0.5, label, transform=ax.transAxes, rotation=90, ha="right", va="center",
                        fontsize=8)
            if values is not None and i < len(values) and values[i] is not None:
                ax.set_title(f"{float(values[i]):.2f} dB", fontsize=8, y=-0.16)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def save_loss(history: Sequence[float], path: str | Path, series: Optional[dict] = None,
              title: Optional[str] = None) -> None:
    """Matching loss per iteration (log y when all values are positive, else symlog). If ``series`` has a
    ``psnr`` entry (list of ``(iteration, value)`` pairs, or plain values one per iteration) it is drawn on a
    second y axis."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    h = np.asarray([float(v) for v in history], dtype=float)
    if h.size:
        x = np.arange(1, h.size + 1)
        ok = np.isfinite(h)
        ax.plot(x[ok], h[ok], color="tab:blue", lw=1.2, label="loss")
        ax.set_yscale("log" if ok.any() and (h[ok] > 0).all() else "symlog")
    else:
        ax.text(0.5, 0.5, "no iterations recorded", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("iteration")
    ax.set_ylabel("matching loss", color="tab:blue")
    ax.grid(True, which="both", alpha=0.3)
    ps = (series or {}).get("psnr")
    if ps:
        pts = [(int(p[0]), float(p[1])) if isinstance(p, (tuple, list)) else (i + 1, float(p))
               for i, p in enumerate(ps)]
        ax2 = ax.twinx()
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:orange", lw=1.2, marker=".", ms=3)
        ax2.set_ylabel("PSNR (dB)", color="tab:orange")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
