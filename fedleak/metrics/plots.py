"""Figures for a run (the image grid, the loss curve) and a sweep (the frontiers), with matplotlib's Agg
backend, written atomically.

Degenerate plots are not drawn: a loss curve needs at least two finite loss values (a one-shot readout such
as ``imprint`` has none), and a frontier needs one series whose complete cells reach at least two different
values on its x axis (a bits frontier where every cell sends 32 bits per parameter says nothing). A plot not
drawn is removed if an earlier run left one, and the reason is logged."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

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


def loss_drawable(history: Sequence[float]) -> bool:
    """A loss curve says something only with at least two finite values."""
    return sum(1 for v in history if math.isfinite(float(v))) >= 2


def save_loss(history: Sequence[float], path: str | Path, series: Optional[dict] = None,
              title: Optional[str] = None) -> bool:
    """Matching loss per iteration (log y when all values are positive, else symlog). If ``series`` has a
    ``psnr`` entry (list of ``(iteration, value)`` pairs, or plain values one per iteration) it is drawn on a
    second y axis. Returns False, writing nothing (and removing a stale ``path``), when the history has fewer
    than two finite values (see :func:`loss_drawable`)."""
    path = Path(path)
    if not loss_drawable(history):
        path.unlink(missing_ok=True)
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    h = np.asarray([float(v) for v in history], dtype=float)
    x = np.arange(1, h.size + 1)
    ok = np.isfinite(h)
    ax.plot(x[ok], h[ok], color="tab:blue", lw=1.2, label="loss")
    ax.set_yscale("log" if (h[ok] > 0).all() else "symlog")
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
    return True


# ------------------------------------------------------------------------------------ sweep frontiers
def frontier_series(rows: list[dict], x: str, y: str, by_relation: bool = False
                    ) -> dict[str, tuple[list, list, list, list]]:
    """Per series (an attack; with ``by_relation`` an attack and the DP relation of its epsilon, the row's
    ``dp``): (x of each complete cell, its y, the distinct x, the mean y per distinct x)."""
    from fedleak.metrics.privacy_words import relation

    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if not r.get("attack") or r.get("status") != "complete" or r.get(x) is None or r.get(y) is None:
            continue
        label = str(r["attack"])
        if by_relation and r.get("dp"):
            label += f", {r['dp']} ({relation(r['dp'])})"
        groups.setdefault(label, []).append((r[x], r[y]))
    out = {}
    for label in sorted(groups):
        pts = groups[label]
        xs = sorted({p[0] for p in pts})
        means = [sum(p[1] for p in pts if p[0] == v) / sum(1 for p in pts if p[0] == v) for v in xs]
        out[label] = ([p[0] for p in pts], [p[1] for p in pts], xs, means)
    return out


def frontier_drawable(series: dict) -> bool:
    """At least one series reaches two different x values (else there is no frontier to see)."""
    return any(len(mx) >= 2 for _, _, mx, _ in series.values())


def _log_axis(ax, values: list[float], base: float) -> None:
    pos = [v for v in values if v > 0]
    if pos and len(pos) == len(values) and max(pos) / min(pos) > 4:
        ax.set_xscale("log", base=base)


def _draw_series(ax, series: dict, base: float, legend: str) -> None:
    """One line per series (mean over seeds) with the single cells as dots."""
    allx = []
    for label, (px, py, mx, my) in series.items():
        line, = ax.plot(mx, my, marker="o", lw=1.5, label=label)
        ax.scatter(px, py, s=12, alpha=0.5, color=line.get_color())
        allx += px
    _log_axis(ax, allx, base)
    ax.legend(title=legend, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def _not_drawn(path: Path, why: str, log: Optional[Callable[[str], None]]) -> None:
    path.unlink(missing_ok=True)
    if log is not None:
        log(f"{path.name} not drawn: {why}")


def save_frontiers(rows: list[dict], folder: str | Path, log: Optional[Callable[[str], None]] = None) -> list[Path]:
    """A sweep's frontier plots from its table rows: ``psnr_vs_bits.png`` (one line per attack) and
    ``psnr_ssim_vs_epsilon.png`` (one line per attack and DP relation: an ``ldp`` epsilon protects a whole
    update, a ``dpsgd`` one an example, so the two never share a line). Each is drawn only when
    :func:`frontier_drawable`; returns the files written."""
    folder = Path(folder)
    written = []
    bits = frontier_series(rows, "bits_per_param", "psnr")
    if frontier_drawable(bits):
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw_series(ax, bits, 2, "attack")
        ax.set_xlabel("bits per parameter (on the wire)")
        ax.set_ylabel("PSNR (dB), higher = more leakage")
        ax.set_title("Leakage against communication", fontsize=10)
        fig.tight_layout()
        save_figure(fig, folder / "psnr_vs_bits.png")
        written.append(folder / "psnr_vs_bits.png")
    else:
        values = sorted({p for px, _, _, _ in bits.values() for p in px})
        _not_drawn(folder / "psnr_vs_bits.png", "no complete cells with bits per parameter" if not values else
                   f"every series has a single bits-per-parameter value ({', '.join(f'{v:.4g}' for v in values)})",
                   log)
    eps = {y: frontier_series(rows, "epsilon", y, by_relation=True) for y in ("psnr", "ssim")}
    if frontier_drawable(eps["psnr"]) or frontier_drawable(eps["ssim"]):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, y, lab in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
            if eps[y]:
                _draw_series(ax, eps[y], 10, "attack, DP relation")
            ax.set_xlabel("privacy epsilon (per round)")
            ax.set_ylabel(lab)
        fig.suptitle("Leakage against the privacy budget (epsilons of different relations are not comparable)",
                     fontsize=10)
        fig.tight_layout()
        save_figure(fig, folder / "psnr_ssim_vs_epsilon.png")
        written.append(folder / "psnr_ssim_vs_epsilon.png")
    elif any(r.get("epsilon") is not None for r in rows):
        _not_drawn(folder / "psnr_ssim_vs_epsilon.png", "no series (attack and DP relation) of complete cells "
                   "reaches two different epsilons", log)
    else:
        (folder / "psnr_ssim_vs_epsilon.png").unlink(missing_ok=True)
    return written
