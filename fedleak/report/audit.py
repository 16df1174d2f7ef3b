"""The static HTML page of a Flower audit folder (``audit.json`` + one PNG/.pt per round and client, as
written by ``fedleak.integrations.flower.AuditStrategy``).

>>> write_audit_report("experiments/flower-audit")   # -> experiments/flower-audit/report.html

The page shows what was audited (attack and its options, model, image size, Flower API and strategy), a
summary (records by status; mean and best PSNR / SSIM over the scored ones), one table row per round and
client (status, examples, update kind, bits per parameter, iterations, the scores, seconds, error) and the
image of each audited update (originals over reconstructions when the audit knew the true data). An audit
folder has no end marker: the strategy rewrites ``audit.json`` after every record, so the page shows what
was audited so far.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from fedleak.errors import FedleakError
from fedleak.io import write_text
from fedleak.report.html import REPORT_NAME, _e, _img, _num, _page, file_data_uri

AUDIT_FILE = "audit.json"

#: (record key, column header, number format or None for text)
COLUMNS = (("round", "round", None), ("client", "client", None), ("cid", "Flower id", None),
           ("status", "status", None), ("num_examples", "examples", None), ("kind", "update", None),
           ("bits_per_parameter", "bits/param", "{:.4g}"), ("iterations", "iterations", None),
           ("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"), ("ssim_rog", "ROG-SSIM", "{:.4f}"),
           ("perceptual", "1 - HaarPSI", "{:.4f}"), ("label_accuracy", "label acc", "{:.2f}"),
           ("seconds", "seconds", "{:.1f}"), ("error", "error", None))


def is_audit_dir(folder: str | Path) -> bool:
    """Whether ``folder`` is a Flower audit folder (it holds ``audit.json``)."""
    return (Path(folder) / AUDIT_FILE).is_file()


def read_audit(folder: str | Path) -> dict:
    """``audit.json`` of ``folder``, checked to be an audit (a mapping with a list of ``records``)."""
    path = Path(folder) / AUDIT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FedleakError(f"cannot read {str(path)!r}: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise FedleakError(f"{str(path)!r} is not a fedleak audit (no list of 'records')")
    if not all(isinstance(r, dict) for r in data["records"]):
        raise FedleakError(f"{str(path)!r}: every record must be a mapping")
    return data


def _finite(v: Any) -> Optional[float]:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _summary(records: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    rows = [("records", _e(len(records))),
            ("by status", _e(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")),
            ("rounds", _e(", ".join(str(x) for x in sorted({r.get("round") for r in records}, key=str))))]
    for key, label, fmt in (("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}")):
        vals = [v for v in (_finite(r.get(key)) for r in records if r.get("status") == "ok") if v is not None]
        if vals:
            rows.append((f"{label}: mean / best over {len(vals)} scored",
                         f"{_num(sum(vals) / len(vals), fmt)} / {_num(max(vals), fmt)}"))
    return ['<h2>Summary</h2>', '<table id="summary">'
            + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"]


def _cell(r: dict, key: str, fmt: Optional[str]) -> str:
    v = r.get(key)
    if fmt is not None:
        return f'<td class="num">{_num(v, fmt)}</td>'
    if key == "kind" and v is not None:
        return f"<td>{_e(r.get('protocol'))} {_e(v)}</td>"
    return f'<td class="num">{_e(v)}</td>' if isinstance(v, (int, float)) else f"<td>{_e(v)}</td>"


def _table(records: list[dict]) -> list[str]:
    head = "".join(f"<th>{_e(h)}</th>" for _, h, _ in COLUMNS)
    rows = [f'<tr class="{_e(r.get("status"))}" data-round="{_e(r.get("round"))}" data-client="{_e(r.get("client"))}">'
            + "".join(_cell(r, k, f) for k, _, f in COLUMNS) + "</tr>" for r in records]
    return ["<h2>Audited updates</h2>",
            f'<table id="records"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>']


def _gallery(folder: Path, records: list[dict]) -> list[str]:
    figs = []
    for r in records:
        cap = f"round {_e(r.get('round'))}, client {_e(r.get('client'))}: "
        cap += (f"PSNR {_num(r.get('psnr'), '{:.2f}')} dB" if r.get("psnr") is not None
                else f"<b>{_e(r.get('status'))}</b> {_e(r.get('error') or '')}")
        name = r.get("images")
        uri = file_data_uri(folder / name) if isinstance(name, str) and "/" not in name else None
        body = _img(uri, f"round {r.get('round')} client {r.get('client')}", "plot", "audit-grid") if name else ""
        figs.append(f"<figure>{body}<figcaption>{cap}</figcaption></figure>")
    return ["<h2>Reconstructions</h2>", '<div class="gallery">' + "".join(figs) + "</div>"] if figs else []


def audit_body(folder: Path) -> tuple[str, list[str]]:
    """The title and HTML blocks describing one audit folder."""
    data = read_audit(folder)
    records = data["records"]
    att = data.get("attack") if isinstance(data.get("attack"), dict) else {"name": data.get("attack")}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    title = f"fedleak Flower audit {folder.name}"
    opts = ", ".join(f"{k}={v}" for k, v in att.items() if k != "name")
    out = [f"<h1>{_e(title)}</h1>",
           f'<p class="sub">attack <b>{_e(att.get("name"))}</b>{_e(f" ({opts})" if opts else "")} &middot; model '
           f'{_e(model.get("name", "?"))} &middot; {_e(data.get("image_size"))} px &middot; Flower '
           f'{_e(data.get("api", "?"))} API, strategy {_e(data.get("strategy", "?"))} &middot; folder '
           f"<code>{_e(folder)}</code></p>"]
    bad = sum(1 for r in records if r.get("status") == "failed")
    if bad:
        out.append(f'<div class="banner bad" id="status" data-status="failed">{bad} of {len(records)} audit(s) '
                   "failed: see the error column (the FL run itself was not affected)</div>")
    else:
        out.append(f'<div class="banner ok" id="status" data-status="ok">{len(records)} audited update(s), none '
                   "failed (an audit has no end marker: this is what was audited so far)</div>")
    out += _summary(records) + _table(records) + _gallery(folder, records)
    out.append(f"<details><summary>{AUDIT_FILE}</summary><pre id=\"config\">"
               f"{_e(json.dumps({k: v for k, v in data.items() if k != 'records'}, indent=2))}</pre></details>")
    return title, out


def write_audit_report(path: str | Path, out: Optional[str | Path] = None) -> Path:
    """Write ``report.html`` (or ``out``) for the audit folder ``path``; return the file's path."""
    folder = Path(path)
    if not is_audit_dir(folder):
        raise FedleakError(f"{str(folder)!r} is not a Flower audit folder (no {AUDIT_FILE})")
    title, body = audit_body(folder)
    target = Path(out) if out is not None else folder / REPORT_NAME
    write_text(target, _page(title, body))
    return target
