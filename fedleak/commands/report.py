"""``fedleak report PATH [--allow-incomplete] [--out FILE]``: one static HTML page for a run, a sweep or a
Flower audit folder.

Writes ``PATH/report.html`` (self-contained: images embedded as base64 PNG). A folder holding ``audit.json``
(written by ``fedleak.integrations.flower.AuditStrategy``) is rendered as an audit: one row and one image per
audited round and client. Exit codes: 0 written, 2 bad input (not a run/sweep/audit folder, or an
incomplete run or sweep without ``--allow-incomplete``).
"""
from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "report",
        help="write a static HTML report (report.html) for a run, sweep or Flower audit folder",
        description="Write one self-contained HTML page for a run folder (config, originals next to "
                    "reconstructions with per-image metrics, loss curve), a sweep folder (results table, "
                    "frontier plots, each cell's image grid) or a Flower audit folder (audit.json: one row and "
                    "image per audited round and client). Opens from disk; no server needed.",
    )
    p.add_argument("path", help="a run folder (fedleak run), a sweep folder (fedleak sweep) or an audit folder "
                                "(the out= of fedleak.integrations.flower.AuditStrategy)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="report a run or sweep folder without a COMPLETE marker (it is flagged on the page)")
    p.add_argument("--out", default=None, metavar="FILE", help="write here instead of PATH/report.html")
    return p


def main(args) -> int:
    from fedleak.errors import FedleakError
    from fedleak.report.audit import is_audit_dir, write_audit_report
    from fedleak.report.html import kind_of, write_report

    folder = Path(args.path)
    if folder.is_dir() and is_audit_dir(folder):
        print(write_audit_report(folder, out=args.out))
        return 0
    if folder.is_dir():
        try:
            kind_of(folder)
        except FedleakError:
            raise FedleakError(f"{str(folder)!r} is not a run folder (config.yaml, metrics.json), a sweep folder "
                               "(sweep.yaml, cells/) or a Flower audit folder (audit.json)") from None
    print(write_report(args.path, allow_incomplete=args.allow_incomplete, out=args.out))
    return 0
