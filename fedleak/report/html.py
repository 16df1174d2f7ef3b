"""Static HTML reports: one self-contained page (``report.html``) for a run folder or a sweep folder.

>>> write_report("experiments/lenet-fedsgd-rog-20260101-120000")   # -> .../report.html

Everything is embedded (images as base64 PNG ``data:`` URIs, text escaped), so the page opens from disk
in any browser, needs no server and can be mailed around.

* Run folder: status, summary metrics, the update (bits per parameter, epsilon, obfuscation), the original
  images next to their (matched) reconstructions with per-image metrics, the loss curve, the resolved
  config and the run log. The originals are not stored in the run folder: they are reloaded from the
  config's ``data`` section; if that fails the page shows ``grid.png`` (originals over reconstructions).
* Sweep folder: status, the results table, the frontier plots, each cell's image grid, the sweep file.

A folder without its COMPLETE marker (an interrupted or failed run, a sweep that has not finished) is
flagged on the page and refused unless ``allow_incomplete=True``.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Optional

from fedleak.errors import FedleakError
from fedleak.io import write_text

REPORT_NAME = "report.html"
#: embed the image grids of at most this many cells in a sweep page (the rest are linked)
MAX_EMBEDDED_CELLS = 100

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
padding:0 16px;color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:.9em}
.banner{padding:10px 14px;border-radius:6px;margin:14px 0;font-weight:600}
.ok{background:#e7f6ea;border:1px solid #9fd3aa}.warn{background:#fff4e0;border:1px solid #f0c36d}
.bad{background:#fde8e8;border:1px solid #e99}
table{border-collapse:collapse;font-size:.9em;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td,tr.interrupted td{background:#fdf0f0}td.id{white-space:nowrap}
img.px{image-rendering:pixelated;width:128px;height:128px;border:1px solid #ccc;background:#eee}
img.plot{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f9;border:1px solid #e4e4e8;padding:10px;overflow:auto;font-size:.85em;max-height:480px}
code{font-size:.9em}.gallery{display:flex;flex-wrap:wrap;gap:16px}.gallery figure{margin:0;width:280px}.gallery img.plot{max-width:280px}
figcaption{font-size:.85em;color:#444}
"""


# ------------------------------------------------------------------------------------------ helpers
def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return "" if v is None else _e(v)
    if isinstance(v, float) and not math.isfinite(v):
        return _e(v)
    return fmt.format(v)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def file_data_uri(path: Path) -> Optional[str]:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return png_data_uri(data) if data[:8] == b"\x89PNG\r\n\x1a\n" else None


def tensor_png(img) -> bytes:
    """(C, H, W) tensor in [0, 1] -> PNG bytes at native resolution (the page scales it up, pixelated)."""
    import numpy as np
    from PIL import Image

    t = img.detach().float().clamp(0, 1).cpu()
    arr = (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _img(uri: Optional[str], alt: str, cls: str, kind: str = "") -> str:
    if not uri:
        return f'<span class="sub">({_e(alt)}: not available)</span>'
    k = f' data-kind="{_e(kind)}"' if kind else ""
    return f'<img class="{cls}" src="{uri}" alt="{_e(alt)}"{k}>'


def _read_text(p: Path) -> Optional[str]:
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _page(title: str, body: list[str]) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    from fedleak.version import __version__ as ver
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{_e(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + f"\n<p class=\"sub\">written by fedleak {_e(ver)} on {_e(stamp)}</p>\n</body>\n</html>\n")


def _status_banner(complete: bool, what: str, extra: str = "", reason: str = "") -> str:
    if complete:
        return f'<div class="banner ok" id="status" data-status="complete">{_e(what)} complete{_e(extra)}</div>'
    why = reason or f"this {what} has no COMPLETE marker: interrupted, failed or still running"
    return (f'<div class="banner warn" id="status" data-status="incomplete">INCOMPLETE: {_e(why)}. Results may be '
            f"partial or missing{_e(extra)}.</div>")


def run_status(folder: Path) -> tuple[bool, str]:
    """(complete, reason if not) for a run folder, through ``runio.check_complete`` when it exists."""
    from fedleak.io import check_complete

    try:
        check_complete(folder)
    except FedleakError as e:
        return False, str(e)
    return True, ""


def folder_status(folder: Path) -> tuple[str, bool, str]:
    """(kind, complete, reason) of a run or sweep folder."""
    kind = kind_of(folder)
    if kind == "sweep":
        from fedleak.experiment.sweep import sweep_complete

        ok = sweep_complete(folder)
        return kind, ok, "" if ok else (f"sweep folder {str(folder)!r} is incomplete (no COMPLETE marker: the "
                                        "sweep was interrupted or is still running)")
    return (kind, *run_status(folder))


# ------------------------------------------------------------------------------------------ run page
def _load_originals(cfg: dict, n: int):
    """Reload the client's images from the resolved config's ``data`` section, with the same loader and
    defaults as the run (evaluation only; never given to an attack)."""
    from fedleak.config.schema import DataConfig
    from fedleak.experiment.data import load_data
    from fedleak.options import validate_options

    data = load_data(validate_options(DataConfig, cfg.get("data") or {}, "config data"))
    if data.images.shape[0] != n:
        raise FedleakError(f"reloaded {data.images.shape[0]} image(s), the run has {n}")
    return data


def run_body(folder: Path, level: int = 1) -> tuple[str, list[str]]:
    """The title and HTML blocks describing one run folder."""
    import yaml

    complete, reason = run_status(folder)
    cfg_text = _read_text(folder / "config.yaml")
    cfg: dict = {}
    if cfg_text:
        try:
            cfg = yaml.safe_load(cfg_text) or {}
        except yaml.YAMLError:
            cfg = {}
    metrics: dict = {}
    mt = _read_text(folder / "metrics.json")
    if mt:
        try:
            metrics = json.loads(mt)
        except ValueError:
            metrics = {}
    if not isinstance(metrics, dict):  # e.g. a list or a number: shown as missing (--allow-incomplete)
        metrics = {}
    att = (metrics.get("attack") or {}).get("name") or (cfg.get("attack") or {}).get("name", "?")
    model = (cfg.get("model") or {}).get("name", "?")
    proto = (cfg.get("protocol") or {}).get("name", "?")
    title = f"fedleak run {folder.name}"
    h = f"h{level}"
    out = [f"<{h}>{_e(title)}</{h}>",
           f'<p class="sub">attack <b>{_e(att)}</b> &middot; model {_e(model)} &middot; protocol {_e(proto)} '
           f"&middot; folder <code>{_e(folder)}</code></p>",
           _status_banner(complete, "run", " (interrupted: the attack was stopped early)"
                          if metrics.get("interrupted") else "", reason)]
    s = metrics.get("summary") or {}
    upd = metrics.get("update") or {}
    stats = upd.get("stats") or {}
    if s:
        rows = [("PSNR (dB)", _num(s.get("psnr"), "{:.2f}")), ("SSIM", _num(s.get("ssim"))),
                ("ROG-SSIM", _num(s.get("ssim_rog"))), ("1 - HaarPSI (perceptual, lower = closer)",
                                                        _num(s.get("perceptual")))]
        if metrics.get("captured"):  # fedleak attack: no true images, so no image metrics
            rows = [("image metrics", "not computable: no true images (captured update)"),
                    ("final matching loss", _num(s.get("final_loss"), "{:.4g}")),
                    ("recovered labels", _e(s.get("recovered_labels")))]
        if "label_accuracy" in s:
            rows.append(("label accuracy", _num(s.get("label_accuracy"), "{:.2f}")))
        for k in ("psnr", "ssim"):
            if f"enhanced_{k}" in s:
                rows.append((f"enhanced {k.upper()}", _num(s.get(f"enhanced_{k}"))))
        rows.append(("bits per parameter", _num(s.get("bits_per_parameter"), "{:.4g}")))
        priv = stats.get("privacy") if isinstance(stats.get("privacy"), dict) else None
        if priv:
            rows.append(("privacy epsilon / delta", _privacy_cell(priv)))
        obf = upd.get("obfuscation") or []
        rows.append(("obfuscation", _e(" -> ".join(
            f"{o.get('name')}(" + ", ".join(f"{k}={v}" for k, v in o.items() if k != "name") + ")" for o in obf)
            or "none")))
        rows += _attack_rows(metrics.get("attack") or {})
        out.append(f"<{'h' + str(level + 1)}>Summary</{'h' + str(level + 1)}>")
        out.append('<table id="summary">' + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
                   + "</table>")
    out += _images_section(folder, cfg, metrics, level + 1)
    loss = file_data_uri(folder / "loss.png") if _iterative(metrics.get("attack") or {}) else None
    if loss:  # a one-shot attack (imprint readouts) has no loss curve: no empty panel
        out.append(f"<h{level + 1}>Matching loss</h{level + 1}>")
        out.append(_img(loss, "matching loss per iteration", "plot", "loss"))
    if cfg_text:
        out.append(f"<h{level + 1}>Config</h{level + 1}>")
        out.append(f'<pre id="config">{_e(cfg_text)}</pre>')
    log = _read_text(folder / "run.log")
    if log:
        out.append(f"<details><summary>run.log</summary><pre>{_e(log)}</pre></details>")
    return title, out


def _privacy_cell(priv: dict) -> str:
    """``epsilon / delta (mechanism)`` and the plain-words band with its neighbouring relation."""
    from fedleak.metrics.privacy_words import protection, relation

    eps, words = priv.get("epsilon"), protection(priv.get("epsilon"))
    band = (f' <b class="protection" data-protection="{_e(words)}">{_e(words)}</b>'
            f' <span class="sub">(neighbouring relation: {_e(relation(priv.get("mechanism")))})</span>') if words else ""
    return (f"{_num(eps, '{:.4g}')} / {_num(priv.get('delta'), '{:.2g}')} ({_e(priv.get('mechanism'))}){band}")


def _iterative(a: dict) -> bool:
    """Did the attack iterate (an optimisation with a loss per iteration), or was it a one-shot readout?"""
    return bool(a.get("iterations_planned") or a.get("iterations_run"))


def _attack_rows(a: dict) -> list[tuple[str, str]]:
    """Iterations run of planned for an iterative attack; what a one-shot readout (``imprint``,
    ``ldp-imprint``) recovered instead, from its ``info``."""
    if _iterative(a):
        planned = a.get("iterations_planned")
        return [("attack iterations", f"{_e(a.get('iterations_run'))}" + (f" of {_e(planned)}" if planned else ""))]
    info = a.get("info") or {}
    rows = [("attack", "one-shot readout (no iterations, no matching loss)")]
    if info.get("batch_size") is not None:
        rows.append(("images read out", f"{_e(info.get('returned'))} of {_e(info.get('batch_size'))} "
                                        f"({_e(info.get('recovered'))} bin(s) found, "
                                        f"{_e(info.get('padded_with_public_mean', 0))} filled with the public mean)"))
    if info.get("candidates") is not None:
        rows.append(("readout candidates", f"{_e(info.get('candidates'))} ({_e(info.get('merged_duplicates', 0))} "
                                           "merged as duplicates)"))
    if isinstance(info.get("sigma_used"), (int, float)):
        rows.append(("estimated noise", f"{_e(info.get('distribution_used'))}, sigma {_num(info['sigma_used'], '{:.3g}')}"))
    return rows


def _images_section(folder: Path, cfg: dict, metrics: dict, level: int) -> list[str]:
    import torch

    h = f"h{level}"
    out = [f"<{h}>Originals and reconstructions</{h}>"]
    try:
        blob = torch.load(folder / "reconstruction.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - missing or unreadable: say so on the page
        out.append(f'<p class="sub">no reconstruction available ({_e(type(e).__name__)}: {_e(e)})</p>')
        return out
    rec = blob["images"]
    raw = metrics.get("raw") or {}
    n = int(raw.get("num_images") or rec.shape[0])
    perm = [int(p) for p in blob.get("permutation", torch.arange(n)).tolist()][:n]
    per = raw.get("per_image") or {}
    enh = blob.get("enhanced")
    enh_perm = ((metrics.get("enhanced") or {}).get("permutation")) if enh is not None else None
    enh_per = ((metrics.get("enhanced") or {}).get("per_image")) or {}
    rec_labels = blob.get("labels")
    originals, why = None, ""
    try:
        originals = None if metrics.get("captured") else _load_originals(cfg, n)
    except Exception as e:  # noqa: BLE001 - data moved/unavailable: fall back to grid.png
        why = f"{type(e).__name__}: {e}"
    if metrics.get("captured"):  # fedleak attack: grid.png holds the reconstructions only
        out.append('<p class="sub">no original images: the update was captured (fedleak attack)</p>')
    elif originals is None:
        out.append(f'<p class="sub">the original images could not be reloaded from the config ({_e(why)}); '
                   "showing grid.png (originals over reconstructions)</p>")
        out.append(_img(file_data_uri(folder / "grid.png"), "grid of originals and reconstructions", "plot", "grid"))
    cols = ["#", "original", "reconstruction"] + (["enhanced"] if enh is not None else []) + \
        ["PSNR (dB)", "SSIM", "ROG-SSIM", "1 - HaarPSI"] + (["label true / recovered"] if rec_labels is not None else [])
    rows = []
    for i in range(n):
        j = perm[i] if i < len(perm) else i
        tds = [f'<td class="num">{i}</td>']
        if originals is not None:
            tds.append("<td>" + _img(png_data_uri(tensor_png(originals.images[i])), f"original {i}", "px",
                                     "original") + "</td>")
        else:
            tds.append('<td class="sub">-</td>')
        tds.append("<td>" + _img(png_data_uri(tensor_png(rec[j])), f"reconstruction {i}", "px", "reconstruction")
                   + "</td>")
        if enh is not None:
            ej = int(enh_perm[i]) if enh_perm and i < len(enh_perm) else i
            tds.append("<td>" + _img(png_data_uri(tensor_png(enh[ej])), f"enhanced {i}", "px", "enhanced") + "</td>")

        def pv(key, fmt="{:.4f}", src=per):
            v = (src.get(key) or [None] * n)
            return _num(v[i] if i < len(v) else None, fmt)

        tds += [f'<td class="num">{pv("psnr", "{:.2f}")}</td>', f'<td class="num">{pv("ssim")}</td>',
                f'<td class="num">{pv("ssim_rog")}</td>', f'<td class="num">{pv("perceptual")}</td>']
        if rec_labels is not None:
            rl = rec_labels.flatten().tolist()
            tl = _e(int(originals.labels[i])) if originals is not None else "?"
            tds.append(f"<td>{tl} / {_e(rl[j] if j < len(rl) else '?')}</td>")
        rows.append(f'<tr data-image="{i}">' + "".join(tds) + "</tr>")
    out.append('<table id="images"><thead><tr>' + "".join(f"<th>{_e(c)}</th>" for c in cols)
               + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return out


# ---------------------------------------------------------------------------------------- sweep page
_HEADERS = {"bits_per_param": "bits/param", "epsilon": "ε", "psnr": "PSNR (dB)", "ssim": "SSIM",
            "ssim_rog": "ROG-SSIM", "perceptual": "1 - HaarPSI", "label_acc": "label acc"}
_FMT = {"bits_per_param": "{:.4g}", "epsilon": "{:.4g}", "psnr": "{:.2f}", "label_acc": "{:.2f}"}


def sweep_body(folder: Path) -> tuple[str, list[str]]:
    from fedleak.experiment.sweep import COLUMNS, read_rows, sweep_complete

    complete = sweep_complete(folder)
    rows = read_rows(folder) if (folder / "results.json").is_file() else []
    title = f"fedleak sweep {folder.name}"
    n_bad = sum(1 for r in rows if r.get("status") != "complete")
    out = [f"<h1>{_e(title)}</h1>", f'<p class="sub">folder <code>{_e(folder)}</code> &middot; {len(rows)} cell(s)</p>',
           _status_banner(complete, "sweep", reason=folder_status(folder)[2])]
    if n_bad:
        out.append(f'<div class="banner bad" id="failed-cells">{n_bad} cell(s) failed or are incomplete: see the '
                   "status and error columns</div>")
    out.append("<h2>Results</h2>")
    head = "".join(f"<th>{_e(_HEADERS.get(c, c))}</th>" for c in COLUMNS)
    trs = []
    for r in rows:
        tds = []
        for c in COLUMNS:
            v = r.get(c)
            if c == "cell":
                tds.append(f'<td class="id"><a href="cells/{_e(v)}/">{_e(v)}</a></td>')
            elif c == "epsilon" and v is not None:
                from fedleak.metrics.privacy_words import protection

                tds.append(f'<td class="num">{_num(v, _FMT[c])} <span class="sub">({_e(protection(v))})</span></td>')
            elif c in _HEADERS:
                tds.append(f'<td class="num">{_num(v, _FMT.get(c, "{:.4f}"))}</td>')
            elif c == "overrides":
                tds.append(f"<td><code>{_e(v)}</code></td>")
            else:
                tds.append(f"<td>{_e(v)}</td>")
        trs.append(f'<tr class="{_e(r.get("status"))}" data-cell="{_e(r.get("cell"))}">' + "".join(tds) + "</tr>")
    out.append(f'<table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(trs)}</tbody></table>')
    plots = [(n, t) for n, t in (("psnr_vs_bits.png", "PSNR against bits per parameter"),
                                 ("psnr_ssim_vs_epsilon.png", "PSNR and SSIM against epsilon"))
             if (folder / n).is_file()]
    out.append("<h2>Frontiers</h2>")
    for n, t in plots:
        out.append(f"<figure>{_img(file_data_uri(folder / n), t, 'plot', 'frontier')}"
                   f"<figcaption>{_e(t)} (one line per attack, and per DP relation for epsilon; dots are single "
                   "cells, lines join the means)</figcaption></figure>")
    drawn = {n for n, _ in plots}
    if "psnr_vs_bits.png" not in drawn or (any(r.get("epsilon") is not None for r in rows)
                                          and "psnr_ssim_vs_epsilon.png" not in drawn):
        out.append('<p class="sub" id="no-frontier">A frontier plot is drawn only where the complete cells of '
                   "one series reach at least two different values on its axis (bits per parameter, epsilon); "
                   "see sweep.log for the plots not drawn.</p>")
    out.append("<h2>Cells</h2>")
    figs = []
    for k, r in enumerate(rows):
        cid = str(r.get("cell"))
        grid = folder / "cells" / cid / "grid.png"
        cap = (f"{cid}: {r.get('attack') or ''} &middot; <code>{_e(r.get('overrides'))}</code> &middot; "
               + (f"PSNR {_num(r.get('psnr'), '{:.2f}')} dB" if r.get("status") == "complete"
                  else f"<b>{_e(r.get('status'))}</b> {_e(r.get('error'))}"))
        if not grid.is_file():
            figs.append(f"<figure><figcaption>{cap} (no image grid)</figcaption></figure>")
        elif k < MAX_EMBEDDED_CELLS:
            figs.append(f"<figure>{_img(file_data_uri(grid), f'image grid of cell {cid}', 'plot', 'cell-grid')}"
                        f"<figcaption>{cap}</figcaption></figure>")
        else:
            figs.append(f'<figure><a href="cells/{_e(cid)}/grid.png">grid.png</a><figcaption>{cap}</figcaption></figure>')
    out.append('<div class="gallery">' + "".join(figs) + "</div>")
    spec = _read_text(folder / "sweep.yaml")
    if spec:
        out.append(f"<details><summary>sweep.yaml (base config inlined, cell plan)</summary><pre id=\"config\">"
                   f"{_e(spec)}</pre></details>")
    log = _read_text(folder / "sweep.log")
    if log:
        out.append(f"<details><summary>sweep.log</summary><pre>{_e(log)}</pre></details>")
    return title, out


# ------------------------------------------------------------------------------------------ entry
def kind_of(folder: Path) -> str:
    from fedleak.experiment.sweep import is_sweep_dir

    if is_sweep_dir(folder):
        return "sweep"
    if any((folder / f).is_file() for f in ("config.yaml", "metrics.json", "reconstruction.pt")):
        return "run"
    raise FedleakError(f"{str(folder)!r} is neither a run folder (config.yaml, metrics.json) nor a sweep folder "
                       "(sweep.yaml, cells/)")


def write_report(path: str | Path, allow_incomplete: bool = False, out: Optional[str | Path] = None) -> Path:
    """Write ``report.html`` (or ``out``) for the run or sweep folder ``path``; return the file's path.

    Refuses (``FedleakError``) a folder without its COMPLETE marker unless ``allow_incomplete``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FedleakError(f"{str(folder)!r} is not a folder")
    kind, complete, reason = folder_status(folder)
    if not complete and not allow_incomplete:
        raise FedleakError(f"{reason}; pass --allow-incomplete to report it anyway")
    title, body = sweep_body(folder) if kind == "sweep" else run_body(folder)
    target = Path(out) if out is not None else folder / REPORT_NAME
    write_text(target, _page(title, body))
    return target
