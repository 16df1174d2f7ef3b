"""``fedleak`` command line. Each sub-command lives in ``fedleak.commands.<name>`` and provides
``add_parser(subparsers)`` and ``main(args) -> int``. User errors print one line, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

from fedleak.errors import FedleakError

COMMANDS = ["list", "simulate", "run", "attack", "sweep", "report", "train-enhancer", "train-victim"]


def build_parser() -> argparse.ArgumentParser:
    from fedleak.version import __version__

    parser = argparse.ArgumentParser(prog="fedleak", description="Audit federated learning privacy by attacking it.")
    parser.add_argument("--version", action="version", version=f"fedleak {__version__}",
                        help="print fedleak's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)
        p = mod.add_parser(sub)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except FedleakError as e:
        print(f"fedleak: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedleak: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`: not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
