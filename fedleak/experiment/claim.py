"""Exclusive claim of a run folder: two runs never share one, and a complete run is never touched.

:func:`claim_run_dir` creates the folder if needed, refuses a folder that holds a complete run (unless
``resuming``, whose caller returns the finished result before claiming) and takes an exclusive, non-blocking
``fcntl.flock`` on the folder itself (no lock file is left among the results). The lock is held by this process until :func:`release` or exit,
so a second run into the same folder is refused in one line while the first is alive.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fedleak.errors import ConfigError

_HELD: dict[str, int] = {}


def _make_dir(d: Path) -> None:
    if d.exists() and not d.is_dir():
        raise ConfigError(f"output folder {str(d)!r} exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"cannot create output folder {str(d)!r}: a parent is a file") from None
    except NotADirectoryError:
        raise ConfigError(f"cannot create output folder {str(d)!r}: a parent is not a folder") from None
    except OSError as e:
        raise ConfigError(f"cannot create output folder {str(d)!r}: {e.strerror or e}") from None


def release(d: str | Path) -> None:
    """Give up this process's claim on ``d`` (no-op when not held)."""
    fd = _HELD.pop(str(Path(d).resolve()), None)
    if fd is not None:
        os.close(fd)


def claim_run_dir(d: str | Path, complete_mark: str, resuming: bool = False) -> Path:
    """Create/claim ``d`` for one run; a one-line :class:`ConfigError` when it cannot be."""
    d = Path(d)
    _make_dir(d)
    if not resuming and (d / complete_mark).is_file():
        raise ConfigError(f"output folder {str(d)!r} holds a complete run; choose another --out "
                          "(the finished run is left untouched)")
    key = str(d.resolve())
    release(key)
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ConfigError(f"cannot open output folder {str(d)!r}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"output folder {str(d)!r} is in use by another run; choose another --out") from None
    _HELD[key] = fd
    if not os.access(d, os.W_OK):
        release(key)
        raise ConfigError(f"cannot write to output folder {str(d)!r}: permission denied")
    return d


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def sigterm_as_interrupt() -> None:
    """Handle SIGTERM like Ctrl-C (partial results, a line in run.log); only from the main thread."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
