"""``fedleak sweep SWEEP.yaml [--backend local|ray] [--address ADDR] [--workers N] [--out DIR]``.

Runs every cell of the sweep (base config x grid/cells x seeds) as an ordinary run folder, writes the
results table (CSV, Markdown, JSON) and the frontier plots. Running the same command again resumes: cells
that finished are skipped. Exit codes: 0 every cell complete, 1 some cells failed (recorded in the table),
2 bad input, 130 interrupted. See :mod:`fedleak.sweep` for the file format.
"""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "sweep",
        help="run a grid of runs (defences x attacks x seeds) and tabulate/plot the leakage",
        description="Run a sweep: a base config plus a grid (cartesian product of --set-style key -> values) "
                    "or a list of override sets, each for every seed. Every cell is an ordinary run folder "
                    "under OUT/cells/; OUT holds results.csv/.md/.json and the frontier plots. Re-running "
                    "resumes (finished cells are skipped; failed or incomplete ones run again).",
    )
    p.add_argument("sweep", help="sweep YAML (base, set, grid and/or cells, seeds)")
    p.add_argument("--backend", choices=["local", "ray"], default=None,
                   help="local: process pool on this machine (default); ray: Ray tasks (pip install fedleak[ray])")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster address (e.g. auto or ray://host:10001); default: start a local Ray")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="cells run at once (default: the CPU cores, or the Ray cluster's CPUs)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per cell (default: max(1, cores // workers))")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="sweep folder (default: the sweep file's out:, else experiments/sweep-<file name>)")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-cell progress lines; print only the folder")
    return p


def main(args) -> int:
    from fedleak.errors import ConfigError
    from fedleak.experiment.sweep import run_sweep, table_markdown

    for name in ("workers", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name} must be at least 1, got {v}")
    folder, rows = run_sweep(args.sweep, out=args.out, backend=args.backend, workers=args.workers,
                             address=args.address, threads=args.threads, progress=not args.quiet)
    if args.quiet:
        print(folder)
    else:
        print(table_markdown(rows), end="")
        print(f"sweep folder: {folder}")
    return 0 if all(r["status"] == "complete" for r in rows) else 1
