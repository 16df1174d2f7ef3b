"""The generic I/O layer of every stage: atomic result files, JSON-safe values, safe torch loading, and the
run folders' COMPLETE manifests."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from fedleak.errors import ConfigError, FedleakError

COMPLETE_MARK = "COMPLETE"


class OutputError(FedleakError, OSError):
    """A result file could not be written (read-only folder, disk full, file-size limit, a parent that is a
    file). Also an ``OSError``, so callers that tolerate a failed write (the run log) still do."""


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    native = " ".join(str(e).split())[:120] or type(e).__name__
    return f"the file system refused the write (disk full, a file-size limit or a read-only file system?): {native}"


def _is_write_failure(e: BaseException) -> bool:
    """An ``OSError``, or what torch's (``RuntimeError``) and safetensors' (``SafetensorError``) native writers
    raise when the file system refuses a write."""
    return isinstance(e, (OSError, RuntimeError)) or type(e).__name__ == "SafetensorError"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only if the block succeeds. A failure to
    create, write (:func:`_is_write_failure`) or rename
    the file raises :class:`OutputError` (one line); the temporary is removed, so ``path`` is either the old
    file, the complete new one, or absent, never a torn file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o644)
        _fsync(tmp)  # the data reaches the disk before the rename makes it visible (power loss, not just kill)
        os.replace(tmp, path)
    except Exception as e:
        if isinstance(e, FedleakError) or not _is_write_failure(e):
            raise
        raise OutputError(f"cannot write {str(path)!r}: {_reason(e)}") from None
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def path_problem(path: str | Path, missing: str = "does not exist") -> str:
    """Why ``path`` cannot be opened, for an error message: ``"is a symlink loop"`` (``ELOOP``: a link that
    points back to itself, directly or through other links, also in a parent), ``"is a broken symbolic link
    (to ...)"``, ``"is under a file, not a folder"``, or ``missing``."""
    p = Path(path)
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop (a link that points back to itself)"
        if e.errno == errno.ENOTDIR:
            return "is under a file, not a folder"
        if os.path.islink(p):
            try:
                return f"is a broken symbolic link (to {os.readlink(p)!r})"
            except OSError:
                pass
    return missing


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np
    import torch

    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def jsonable(o: Any, depth: int = 0) -> Any:
    """``o`` as plain JSON values: non-finite floats become their ``repr``, small tensors lists (larger ones a
    ``tensor(shape)`` note), numpy scalars numbers, paths strings, anything else (or nested deeper than 8)
    its ``repr``. Pure: ``o`` is not modified."""
    import numpy as np
    import torch

    if depth > 8:
        return repr(o)
    if o is None or isinstance(o, (bool, int, str)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else repr(o)
    if isinstance(o, torch.Tensor):
        return jsonable(o.tolist(), depth + 1) if o.numel() <= 64 else f"tensor{tuple(o.shape)}"
    if isinstance(o, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v, depth + 1) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return jsonable(o.item(), depth + 1)
    return repr(o)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without fsync
        pass
    finally:
        os.close(fd)


#: files of a run folder that are not results: logs (``*.log``) keep growing after the marker; the checkpoint
#: is working state (deleted when the run completes); temporaries start with a dot
NOT_RESULTS = {COMPLETE_MARK, "checkpoint.pt", "report.html"}  # report.html may be (re)written later


class IncompleteRunError(FedleakError):
    """A run folder is missing its COMPLETE marker, or its results do not match the marker's manifest."""


def _manifest(run_dir: Path) -> dict:
    files = {}
    for f in sorted(run_dir.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name not in NOT_RESULTS and f.suffix != ".log":
            files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    return _sha256(Path(path))


def mark_complete(run_dir: str | Path) -> None:
    """Write ``COMPLETE`` last: a JSON manifest (name, size, SHA-256) of every result file in the folder."""
    run_dir = Path(run_dir)
    write_json(run_dir / COMPLETE_MARK, {"complete": True, "files": _manifest(run_dir)})


def check_complete(run_dir: str | Path, verify: bool = False) -> None:
    """Return None if ``run_dir`` is a finished run whose results are all present and unchanged; else raise
    :class:`IncompleteRunError` (a :class:`FedleakError`) with a one-line reason.

    Checks: the folder exists; ``COMPLETE`` exists and is a manifest; every listed file exists with the
    recorded size (``verify=True`` also compares SHA-256); ``metrics.json``, when listed, parses and is not
    ``interrupted``. A legacy marker (plain text ``ok``, before manifests) passes if ``config.yaml`` and
    ``metrics.json`` exist and parse.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise IncompleteRunError(f"{str(d)!r} {path_problem(d, 'is not a run folder')}")
    mark = d / COMPLETE_MARK
    if not mark.is_file():
        hint = "; fedleak run --resume continues it" if (d / "checkpoint.pt").is_file() else ""
        raise IncompleteRunError(f"run folder {str(d)!r} is incomplete (no {COMPLETE_MARK} marker: interrupted, "
                                 f"killed, failed or still running{hint})")
    try:
        text = mark.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise IncompleteRunError(f"run folder {str(d)!r}: unreadable {COMPLETE_MARK} marker ({e})") from None
    if text.strip() == "ok":  # legacy marker
        files = {n: None for n in ("config.yaml", "metrics.json")}
    else:
        try:
            man = json.loads(text)
            files = man["files"]
            if man.get("complete") is not True or not isinstance(files, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise IncompleteRunError(f"run folder {str(d)!r}: {COMPLETE_MARK} marker is not a valid manifest") from None
    for name, rec in files.items():
        f = d / name
        if not f.is_file():
            raise IncompleteRunError(f"run folder {str(d)!r}: result file {name!r} is missing")
        if rec is not None:
            if f.stat().st_size != rec.get("bytes"):
                raise IncompleteRunError(f"run folder {str(d)!r}: {name!r} changed size since the run completed "
                                         f"({f.stat().st_size} bytes, manifest {rec.get('bytes')})")
            if verify and _sha256(f) != rec.get("sha256"):
                raise IncompleteRunError(f"run folder {str(d)!r}: {name!r} changed since the run completed (SHA-256)")
    if "metrics.json" in files:
        try:
            m = json.loads((d / "metrics.json").read_text())
        except (OSError, ValueError) as e:
            raise IncompleteRunError(f"run folder {str(d)!r}: metrics.json is unreadable ({type(e).__name__})") from None
        if isinstance(m, dict) and m.get("interrupted"):
            raise IncompleteRunError(f"run folder {str(d)!r}: metrics.json is from an interrupted run")


def is_complete(run_dir: str | Path, verify: bool = False) -> bool:
    """``True`` when :func:`check_complete` passes."""
    try:
        check_complete(run_dir, verify=verify)
    except IncompleteRunError:
        return False
    return True


def torch_load_safely(path: Path, what: str, error: type[FedleakError] = FedleakError, hint: str = ""):
    """``torch.load(path, weights_only=True)``: only tensors, numbers, strings and containers are accepted, so a
    file carrying a pickled object (which could run code) is refused with ``error`` instead of executed; an
    unreadable file also raises ``error``. ``what`` names the file in the message, ``hint`` ends it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
            raise error(f"{what} holds Python objects other than tensors and numbers; refusing to load it "
                        f"(loading could run code){hint}") from None
        raise error(f"{what} is unreadable ({type(e).__name__}){hint}") from None


def load_tensors(path: str | Path) -> dict:
    """Load a ``torch.save`` result file (``reconstruction.pt``, checkpoints) safely (:func:`torch_load_safely`)."""
    p = Path(path)
    if not p.is_file():
        raise FedleakError(f"{str(p)!r} not found")
    obj = torch_load_safely(p, repr(str(p)))
    if not isinstance(obj, dict):
        raise FedleakError(f"{str(p)!r} does not hold a dict of tensors (got {type(obj).__name__})")
    return obj


def new_run_dir(base: str | Path, name: str) -> Path:
    """Create ``base/name`` (or ``base/name-2``, ...) and return it."""
    base = Path(base)
    if base.exists() and not base.is_dir():
        raise ConfigError(f"output.dir {str(base)!r} exists and is not a folder")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output.dir {str(base)!r}: {e.strerror or e}") from None
    for i in range(1, 10_000):
        d = base / (name if i == 1 else f"{name}-{i}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot create a run folder in output.dir {str(base)!r}: {e.strerror or e}") from None
    raise RuntimeError(f"too many runs named {name!r} in {base}")
