"""``fedleak run CONFIG.yaml [--set k=v ...] [--out DIR] [--quiet]``: simulate, attack, evaluate, write a run folder.

Exit codes: 0 done, 2 bad input (one-line error), 130 interrupted (partial results written, no COMPLETE).
"""
from __future__ import annotations

import sys


def add_parser(sub):
    p = sub.add_parser(
        "run",
        help="simulate a client, attack its update, evaluate; write a run folder",
        description="Simulate one client round, attack the update with the server's knowledge only, evaluate "
                    "the reconstruction against the true images and write config.yaml, metrics.json, grid.png, "
                    "loss.png, reconstruction.pt, run.log and COMPLETE to the run folder. Ctrl-C stops the "
                    "attack early and still writes the (partial) results.",
    )
    p.add_argument("config", nargs="?", help="YAML config (defaults built in when omitted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set attack.iterations=50 (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default: OUTPUT_DIR/<output.name or model-protocol-attack-timestamp>)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary; print only the folder")
    p.add_argument("--enhancer", default=None, metavar="FILE",
                   help="post-process with the learned enhancer using these weights "
                        "(sets enhancer: {name: learned, weights: FILE}; see docs/enhancer.md)")
    return p


def main(args) -> int:
    from ..runner import run, summary_lines

    overrides = list(args.overrides)
    if getattr(args, "enhancer", None):
        import json

        overrides.append("enhancer=" + json.dumps({"name": "learned", "weights": str(args.enhancer)}))
    run_dir, metrics = run(args.config, overrides=overrides, out=args.out, progress=not args.quiet)
    if metrics.get("interrupted"):
        att = metrics.get("attack", {})
        done, planned = att.get("iterations_run"), att.get("iterations_planned")
        print(f"fedleak: interrupted after {done}{'/' + str(planned) if planned else ''} iteration(s); "
              f"partial results written to {run_dir} (no COMPLETE marker)", file=sys.stderr)
        if not args.quiet:
            for line in summary_lines(run_dir, metrics):
                print(line)
        return 130
    if args.quiet:
        print(run_dir)
    else:
        for line in summary_lines(run_dir, metrics):
            print(line)
    return 0
