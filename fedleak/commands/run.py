"""``fedleak run CONFIG.yaml [--set k=v ...] [--out DIR] [--quiet] [--force] [--check]``: simulate, attack,
evaluate, write a run folder. ``fedleak run --resume RUN_DIR`` continues an interrupted or killed run.

Exit codes: 0 done, 2 bad input (one-line error, also: would not fit in memory), 130 interrupted (partial
results written, no COMPLETE; ``--resume`` continues from the last checkpoint).
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
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted or killed run: re-read RUN_DIR/config.yaml, recompute the update "
                        "and resume the attack from RUN_DIR/checkpoint.pt (written every attack.checkpoint_every "
                        "iterations); a complete run is not run again")
    p.add_argument("--force", action="store_true",
                   help="start even if the estimated peak memory exceeds the available memory")
    p.add_argument("--check", action="store_true",
                   help="only validate the config and estimate memory; run nothing, write nothing")
    return p


def main(args) -> int:
    from fedleak.experiment.runner import check, run, summary_lines

    overrides = list(args.overrides)
    if args.enhancer:
        import json

        overrides.append("enhancer=" + json.dumps({"name": "learned", "weights": str(args.enhancer)}))
    if args.check:
        from fedleak.experiment.resources import available_bytes, gib

        cfg, attack_opts, est = check(args.config, overrides, force=args.force)
        avail, src = available_bytes()
        print(f"config OK: attack {attack_opts['name']}, model {cfg.model.name}, {cfg.data.batch_size} image(s) "
              f"{cfg.data.size}x{cfg.data.size}, protocol {cfg.protocol.name}")
        if est is not None:
            print(f"estimated peak memory {est.describe()}; available {gib(avail) if avail else '?'} ({src})")
        return 0
    run_dir, metrics = run(args.config, overrides=overrides or None, out=args.out, progress=not args.quiet,
                           resume=args.resume, force=args.force)
    if metrics.get("interrupted"):
        att = metrics.get("attack", {})
        done, planned = att.get("iterations_run"), att.get("iterations_planned")
        print(f"fedleak: interrupted after {done}{'/' + str(planned) if planned else ''} iteration(s); "
              f"partial results written to {run_dir} (no COMPLETE marker)"
              + (f"; continue with: fedleak run --resume {run_dir}" if (run_dir / "checkpoint.pt").is_file() else ""),
              file=sys.stderr)
        if not args.quiet:
            for line in summary_lines(run_dir, metrics):
                print(line)
        return 130
    return print_result(run_dir, metrics, args.quiet)


def print_result(run_dir, metrics: dict, quiet: bool, summary_lines=None) -> int:
    """The folder (``--quiet``) or the run's summary lines (``summary_lines(run_dir, metrics)``, default the
    runner's) on stdout; exit status 0."""
    if summary_lines is None:
        from fedleak.experiment.runner import summary_lines
    if quiet:
        print(run_dir)
    else:
        for line in summary_lines(run_dir, metrics):
            print(line)
    return 0
