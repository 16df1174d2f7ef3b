"""``fedleak report PATH [--allow-incomplete] [--out FILE]``: one static HTML page for a run or a sweep.

Writes ``PATH/report.html`` (self-contained: images embedded as base64 PNG). Exit codes: 0 written,
2 bad input (not a run/sweep folder, or incomplete without ``--allow-incomplete``).
"""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "report",
        help="write a static HTML report (report.html) for a run or sweep folder",
        description="Write one self-contained HTML page for a run folder (config, originals next to "
                    "reconstructions with per-image metrics, loss curve) or a sweep folder (results table, "
                    "frontier plots, each cell's image grid). Opens from disk; no server needed.",
    )
    p.add_argument("path", help="a run folder (from fedleak run) or a sweep folder (from fedleak sweep)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="report a folder without a COMPLETE marker (it is flagged on the page)")
    p.add_argument("--out", default=None, metavar="FILE", help="write here instead of PATH/report.html")
    return p


def main(args) -> int:
    from fedleak.report.html import write_report

    print(write_report(args.path, allow_incomplete=args.allow_incomplete, out=args.out))
    return 0
