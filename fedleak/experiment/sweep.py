"""Sweeps: many ordinary runs (defences x attacks x seeds), a results table and frontier plots.

A sweep file (YAML, safe loader) looks like::

    base: configs/demo.yaml          # a run config: a path (relative to this file, else to the working
                                     # folder) or an inline mapping
    set: ["attack.iterations=50"]    # optional overrides applied to every cell (``--set`` syntax)
    grid:                            # optional: cartesian product, the first key varies slowest
      obfuscation: ["qsgd(2)", "qsgd(4)", "qsgd(16)"]
      attack: [rog, {name: idlg, iterations: 10}]
    cells:                           # optional: explicit override sets, appended after the grid
      - {obfuscation: "gaussian(0.01)", attack.name: rog}
      - ["obfuscation=topk(0.1)", "attack.name=rog"]
    seeds: [0, 1]                    # optional (default: the base config's seed); every set runs per seed
    out: experiments/sweep-demo      # optional default sweep folder (``--out`` wins)
    backend: local                   # optional defaults for the command-line options
    workers: 2

Grid and cell keys are ``--set`` keys (``a.b.c``) and the values are any YAML value; a cell may also be a
list of ``key=value`` strings. The seed is set through ``seeds`` only.

Every cell is an ordinary run folder written by :func:`fedleak.experiment.runner.run`. The sweep folder holds::

    sweep.yaml         the sweep as run: base config inlined, the cell plan (ids, overrides, seeds)
    cells/<id>/        one run folder per cell (+ cell.json: what the cell was asked to run)
    results.csv        one row per cell, sorted by cell id (no timing: equal seeds give equal tables)
    results.md         the same table in Markdown
    results.json       the same rows as JSON (typed values)
    psnr_vs_bits.png   PSNR against bits per parameter, one line per attack (only when some attack's cells
                       reach two different bits values)
    psnr_ssim_vs_epsilon.png   PSNR and SSIM against the privacy epsilon, one line per attack and DP relation
                       (``dp``: ldp or dpsgd; only when some such series reaches two different epsilons)
    sweep.log          what happened, with timing
    COMPLETE           written when every cell has been attempted (failed cells included)

Resuming: running the same sweep into the same folder skips every cell whose folder has a COMPLETE marker
and whose ``cell.json`` asks for exactly the same run (same base config, overrides and seed); everything
else (incomplete, failed, changed) is run again.

Backends: ``local`` (default) runs cells in a ``ProcessPoolExecutor`` with the *spawn* start method;
``ray`` runs the same function as Ray tasks (``ray.init(address=...)`` or a local Ray instance; an
already-initialised Ray is reused). Each cell runs with ``threads = max(1, cores // workers)`` torch threads
on both backends, so the same seeds give the same table. (torch's CPU results can change in the last
digits with the number of threads, so compare tables made with the same ``--workers``/``--threads``; each
cell's ``cell.json`` records its thread count. A resumed sweep keeps finished cells whatever their count.)
"""
from __future__ import annotations

import copy
import csv
import datetime as _dt
import io
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from fedleak.errors import ConfigError, FedleakError
from fedleak.io import COMPLETE_MARK, is_complete, mark_complete, write_json, write_text
from fedleak.progress import duration, eta_seconds

#: table columns, in order
COLUMNS = ["cell", "overrides", "seed", "attack", "bits_per_param", "epsilon", "dp", "psnr", "ssim", "ssim_rog",
           "perceptual", "label_acc", "status", "error"]
SPEC_KEYS = {"base", "set", "grid", "cells", "seeds", "out", "backend", "workers", "address", "threads"}
BACKENDS = ("local", "ray")
RAY_MISSING = "the ray backend needs Ray, which is not installed: pip install fedleak[ray]"


# ------------------------------------------------------------------------------------------ the plan
def flow(value: Any) -> str:
    """A value as a one-line YAML flow string that ``--set`` parses back to the same value."""
    from fedleak.config.schema import parse_value

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    elif text.endswith("..."):
        text = text[:-3].strip()
    if "\n" in text or parse_value(text) != value:
        text = json.dumps(value)
    return text


def _cell_overrides(cell: Any, where: str) -> list[str]:
    if isinstance(cell, str):
        cell = [cell]
    if isinstance(cell, dict):
        out = []
        for k, v in cell.items():
            if not isinstance(k, str) or not k or "=" in k:
                raise ConfigError(f"{where}: bad key {k!r} (use a --set key such as attack.iterations)")
            out.append(f"{k}={flow(v)}")
        return out
    if isinstance(cell, list):
        for s in cell:
            if not isinstance(s, str) or "=" not in s:
                raise ConfigError(f"{where}: expected key=value strings, got {s!r}")
        return list(cell)
    raise ConfigError(f"{where}: a cell must be a mapping of overrides or a list of key=value strings, "
                      f"got {type(cell).__name__}")


def _check_no_seed(ovs: list[str], where: str) -> None:
    for o in ovs:
        if o.partition("=")[0].strip() == "seed":
            raise ConfigError(f"{where}: set seeds with the top-level 'seeds:' list, not as an override")


class Cell:
    """One run of the sweep: ``overrides`` (cell-specific, as ``--set`` strings) under ``seed``."""

    def __init__(self, index: int, seed: int, overrides: list[str], cell_id: str):
        self.index, self.seed, self.overrides, self.id = index, seed, overrides, cell_id

    def __repr__(self):
        return f"Cell({self.id!r}, {self.overrides!r})"


class Sweep:
    """A parsed sweep file: ``base`` (raw config dict), ``common`` overrides, ``cells`` and options."""

    def __init__(self, spec: dict, where: str = "sweep", root: Optional[Path] = None):
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping at top level, got {type(spec).__name__}")
        bad = sorted(set(spec) - SPEC_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, bad))}; valid: {', '.join(sorted(SPEC_KEYS))}")
        self.where = where
        self.root = root or Path.cwd()
        self.base, self.base_source = self._base(spec.get("base"))
        common = spec.get("set") or []
        self.common = _cell_overrides(common, f"{where}: set")
        _check_no_seed(self.common, f"{where}: set")
        sets = self._grid(spec.get("grid")) + self._cells(spec.get("cells"))
        if not sets:
            sets = [[]]
        seeds = spec.get("seeds")
        if seeds is None:
            seeds = [self.base.get("seed", 0) or 0]
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = [seeds]
        if (not isinstance(seeds, list) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise ConfigError(f"{where}: seeds must be a list of non-negative integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{where}: seeds has duplicates: {seeds!r}")
        self.seeds = list(seeds)
        wi, ws = max(3, len(str(len(sets) - 1))), len(str(max(self.seeds)))
        self.cells = [Cell(i, s, ov, f"c{i:0{wi}d}-s{s:0{ws}d}")
                      for i, ov in enumerate(sets) for s in self.seeds]
        self.out = spec.get("out")
        self.backend = spec.get("backend")
        self.workers = spec.get("workers")
        self.address = spec.get("address")
        self.threads = spec.get("threads")
        for k, v in (("out", self.out), ("backend", self.backend), ("address", self.address)):
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{where}: {k} must be a string, got {v!r}")
        for k, v in (("workers", self.workers), ("threads", self.threads)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"{where}: {k} must be a positive integer, got {v!r}")

    # --- parsing helpers
    def _base(self, base: Any) -> tuple[dict, str]:
        from fedleak.config.schema import load_raw

        if base is None:
            return {}, "defaults"
        if isinstance(base, dict):
            return copy.deepcopy(base), "inline"
        if isinstance(base, str):
            p = Path(base).expanduser()
            if not p.is_absolute():
                cand = [self.root / p, Path.cwd() / p]
                found = next((c for c in cand if c.is_file()), None)
                if found is None:
                    raise ConfigError(f"{self.where}: base config {base!r} not found (looked in "
                                      f"{', '.join(str(c.parent) for c in cand)})")
                p = found
            return load_raw(p), str(p)
        raise ConfigError(f"{self.where}: base must be a config path or an inline mapping, got {type(base).__name__}")

    def _grid(self, grid: Any) -> list[list[str]]:
        if grid is None:
            return []
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{self.where}: grid must be a non-empty mapping of key -> list of values")
        keys, values = [], []
        for k, v in grid.items():
            if not isinstance(k, str) or not k or "=" in k:
                raise ConfigError(f"{self.where}: grid: bad key {k!r}")
            if k == "seed":
                raise ConfigError(f"{self.where}: grid: set seeds with the top-level 'seeds:' list")
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{self.where}: grid.{k} must be a non-empty list of values, got {v!r}")
            keys.append(k)
            values.append(v)
        return [[f"{k}={flow(v)}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]

    def _cells(self, cells: Any) -> list[list[str]]:
        if cells is None:
            return []
        if not isinstance(cells, list) or not cells:
            raise ConfigError(f"{self.where}: cells must be a non-empty list of override sets")
        out = []
        for i, c in enumerate(cells):
            ovs = _cell_overrides(c, f"{self.where}: cells[{i}]")
            _check_no_seed(ovs, f"{self.where}: cells[{i}]")
            out.append(ovs)
        return out

    # --- per cell
    def run_overrides(self, cell: Cell) -> list[str]:
        """Everything applied to the base config for this cell: common, cell-specific, then the seed."""
        return [*self.common, *cell.overrides, f"seed={cell.seed}"]

    def request(self, cell: Cell) -> dict:
        return {"id": cell.id, "base": self.base, "overrides": self.run_overrides(cell)}

    def to_dict(self) -> dict:
        return {"base": self.base, "base_source": self.base_source, "set": self.common, "seeds": self.seeds,
                "cells": [{"id": c.id, "overrides": c.overrides, "seed": c.seed} for c in self.cells]}


def load_sweep(source: str | Path | dict) -> Sweep:
    """Parse a sweep file (path) or a sweep mapping."""
    if isinstance(source, dict):
        return Sweep(source, "sweep")
    from fedleak.config.schema import load_raw

    p = Path(source)
    spec = load_raw(p, what="sweep")  # the config loader: duplicate keys, depth, huge integers, 1e-3 as a number
    return Sweep(spec, f"sweep {p.name}", root=p.resolve().parent)


# -------------------------------------------------------------------------------------- one cell
def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _err(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _num(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def row_from_metrics(cell_id: str, overrides: list[str], seed: int, metrics: dict) -> dict:
    s = metrics.get("summary", {}) or {}
    status = "interrupted" if metrics.get("interrupted") else "complete"
    return {"cell": cell_id, "overrides": "; ".join(overrides), "seed": seed,
            "attack": (metrics.get("attack") or {}).get("name", ""),
            "bits_per_param": _num(s.get("bits_per_parameter")), "epsilon": _num(s.get("epsilon")),
            "dp": (((metrics.get("update") or {}).get("stats") or {}).get("privacy") or {}).get("mechanism"),
            "psnr": _num(s.get("psnr")), "ssim": _num(s.get("ssim")), "ssim_rog": _num(s.get("ssim_rog")),
            "perceptual": _num(s.get("perceptual")), "label_acc": _num(s.get("label_accuracy")),
            "status": status, "error": ""}


def failed_row(cell_id: str, overrides: list[str], seed: int, attack: str, error: str,
               status: str = "failed") -> dict:
    row = {k: None for k in COLUMNS}
    row.update(cell=cell_id, overrides="; ".join(overrides), seed=seed, attack=attack, status=status, error=error)
    return row


def run_cell(task: dict) -> dict:
    """Run one cell (in a worker process or a Ray task) and return its table row (+ ``seconds``).

    ``task``: ``id``, ``base`` (raw config dict), ``overrides`` (all of them, seed included), ``cell_overrides``
    (shown in the table), ``seed``, ``attack`` (name, for the failure row), ``dir`` (absolute run folder),
    ``threads``. Never raises for a failing run: the row records the error.
    """
    t0 = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(int(task["threads"]))
        from fedleak.experiment.runner import run

        d = Path(task["dir"])
        d.mkdir(parents=True, exist_ok=True)
        for stale in (COMPLETE_MARK, "report.html", "error.txt"):  # never complete before the run is, and
            if (d / stale).is_file():                             # no page/error from an earlier attempt
                (d / stale).unlink()
        write_json(d / "cell.json", {"request": task["request"], "threads": int(task["threads"])})
        _, metrics = run(task["base"], overrides=task["overrides"], out=d, progress=False)
        row = row_from_metrics(task["id"], task["cell_overrides"], task["seed"], metrics)
    except KeyboardInterrupt:
        row = failed_row(task["id"], task["cell_overrides"], task["seed"], task.get("attack", ""),
                         "KeyboardInterrupt", status="interrupted")
    except Exception as e:  # noqa: BLE001 - a failing cell is recorded, the sweep goes on
        row = failed_row(task["id"], task["cell_overrides"], task["seed"], task.get("attack", ""), _err(e))
        try:
            write_text(Path(task["dir"]) / "error.txt", row["error"] + "\n")
        except OSError:
            pass
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ backends
def _local_backend(tasks: list[dict], workers: int, threads: int, on_done: Callable[[dict], None],
                   log: Callable[[str], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,))
    futures = {}
    try:
        futures = {ex.submit(run_cell, t): t for t in tasks}
        for fut in as_completed(futures):
            t = futures[fut]
            try:
                row = fut.result()
            except BrokenProcessPool as e:
                row = failed_row(t["id"], t["cell_overrides"], t["seed"], t["attack"],
                                 f"worker process died: {_err(e)}")
            except Exception as e:  # noqa: BLE001
                row = failed_row(t["id"], t["cell_overrides"], t["seed"], t["attack"], _err(e))
            on_done(row)
    except KeyboardInterrupt:
        log("interrupted: cancelling the cells that have not started")
        for f in futures:
            f.cancel()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def task_gpus(task: dict, cluster_gpus: float) -> int:
    """GPUs a cell's Ray task requests: 1 when it computes on CUDA (``device: cuda``, or ``auto`` on a cluster
    with GPUs), else 0. A cell whose config does not validate asks for none (its run records the error)."""
    from fedleak.config.schema import as_config

    try:
        dev = as_config(task["base"], task["overrides"]).device
    except FedleakError:
        return 0
    return 1 if dev.startswith("cuda") or (dev == "auto" and cluster_gpus > 0) else 0


def _ray_backend(tasks: list[dict], workers: Optional[int], address: Optional[str],
                 on_done: Callable[[dict], None], log: Callable[[str], None]) -> None:
    try:
        import ray
    except ImportError:
        raise FedleakError(RAY_MISSING) from None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
        if address:
            kw["address"] = address
        else:
            kw["num_cpus"] = workers or cores()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's note about accelerator env vars
            ray.init(**kw)
        started = True
        log(f"ray: started {'a connection to ' + address if address else 'a local instance'}")
    else:
        log("ray: using the already-initialised Ray instance")
    try:
        if not workers:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=0)(run_cell)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        queue = list(tasks)
        pending: dict[Any, dict] = {}
        try:
            while queue or pending:
                while queue and len(pending) < workers:
                    t = queue.pop(0)
                    pending[remote.options(num_gpus=task_gpus(t, gpus)).remote(t)] = t
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    t = pending.pop(ref)
                    try:
                        row = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a task that died (worker crash, ...)
                        row = failed_row(t["id"], t["cell_overrides"], t["seed"], t["attack"], _err(e))
                    on_done(row)
        except KeyboardInterrupt:
            log("interrupted: cancelling the Ray tasks that are still running")
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass
            raise
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------ outputs
def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return ""
    if kind == "csv":
        return f"{v:.10g}" if isinstance(v, float) else str(v)
    return str(v)


_MD_FMT = {"bits_per_param": "{:.4g}", "epsilon": "{:.4g}", "psnr": "{:.2f}", "ssim": "{:.4f}", "ssim_rog": "{:.4f}",
           "perceptual": "{:.4f}", "label_acc": "{:.2f}"}


def table_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_fmt(r.get(c), "csv") for c in COLUMNS])
    return buf.getvalue()


def table_markdown(rows: list[dict]) -> str:
    def cell(c, v):
        if v is None:
            return ""
        if c in _MD_FMT and isinstance(v, (int, float)) and not isinstance(v, bool):
            s = _MD_FMT[c].format(v)
        else:
            s = str(v)
        if c == "error" and len(s) > 200:
            s = s[:197] + "..."
        s = s.replace("|", "\\|").replace("\n", " ")
        return f"`{s}`" if c == "overrides" and s else s

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(c, r.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot_frontiers(rows: list[dict], folder: Path, log: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Write ``psnr_vs_bits.png`` and ``psnr_ssim_vs_epsilon.png`` where they show a frontier (see
    :func:`fedleak.metrics.plots.save_frontiers`: degenerate plots are not drawn, ldp and dpsgd epsilons are
    separate series)."""
    from fedleak.metrics import plots

    return plots.save_frontiers(rows, folder, log)


def write_tables(rows: list[dict], folder: Path) -> list[dict]:
    rows = sorted(rows, key=lambda r: r["cell"])
    clean = [{c: r.get(c) for c in COLUMNS} for r in rows]
    write_text(folder / "results.csv", table_csv(clean))
    write_text(folder / "results.md", table_markdown(clean))
    write_json(folder / "results.json", {"columns": COLUMNS, "rows": clean})
    return clean


# ------------------------------------------------------------------------------------------ driver
class _Log:
    def __init__(self, path: Path, echo: bool):
        self.path, self.echo = path, echo
        try:  # a resumed sweep appends to the log of the earlier invocations
            self.lines = path.read_text().rstrip("\n").splitlines() if path.is_file() else []
        except (OSError, UnicodeDecodeError):
            self.lines = []
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.lines.append(f"{now} [{time.perf_counter() - self.t0:8.2f}s] {msg}")
        if self.echo:
            print(f"fedleak sweep: {msg}", file=sys.stderr, flush=True)
        write_text(self.path, "\n".join(self.lines) + "\n")


def default_out(sweep: Sweep, source: Any) -> Path:
    """``out:`` from the sweep file, else ``<base output.dir or experiments>/sweep-<file stem>`` (relative to
    the working folder, like ``output.dir``), so running the same command again resumes."""
    if sweep.out:
        return Path(sweep.out).expanduser()
    output = sweep.base.get("output")
    base_dir = output.get("dir") if isinstance(output, dict) and output.get("dir") else "experiments"
    stem = Path(source).stem if isinstance(source, (str, Path)) else "sweep"
    return Path(base_dir) / f"sweep-{stem}"


def _finished(folder: Path, request: dict) -> Optional[dict]:
    """The cell's metrics when its folder is complete and ran exactly ``request``; else None."""
    if not is_complete(folder):
        return None
    try:
        got = json.loads((folder / "cell.json").read_text()).get("request")
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, AttributeError):
        return None
    if json.loads(json.dumps(request)) != got:
        return None
    return metrics


def _backend_options(sweep: Sweep, backend: Optional[str], workers: Optional[int], address: Optional[str],
                     threads: Optional[int]) -> tuple[str, Optional[str], Optional[int], int, int]:
    """``(backend, address, workers, effective workers, torch threads per cell)`` from the arguments, else the
    sweep file, else the defaults."""
    backend = (backend or sweep.backend or "local").lower()
    if backend not in BACKENDS:
        raise ConfigError(f"unknown sweep backend {backend!r}; valid: {', '.join(BACKENDS)}")
    address = address or sweep.address
    if address and backend != "ray":
        raise ConfigError("--address is only used with --backend ray")
    if backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:  # ray is an optional dependency
            raise FedleakError(RAY_MISSING)
    workers = workers or sweep.workers
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    n_cores = cores()
    eff_workers = workers or n_cores
    threads = threads or sweep.threads or max(1, n_cores // eff_workers)
    return backend, address, workers, eff_workers, threads


def _open_sweep_folder(sweep: Sweep, source: Any, out: Optional[str | Path]) -> Path:
    folder = Path(out) if out is not None else default_out(sweep, source if not isinstance(source, Sweep) else None)
    folder = folder.expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"sweep folder {str(folder)!r} exists and is not a folder")
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    if (folder / COMPLETE_MARK).is_file():
        (folder / COMPLETE_MARK).unlink()
    return folder


def _plan(sweep: Sweep, folder: Path, threads: int, log: Callable[[str], None]) -> tuple[dict, list[dict]]:
    """``(rows, tasks)``: the rows known now (invalid configs, finished cells of an earlier invocation) and the
    cells to run."""
    from fedleak.config.schema import load_config

    rows: dict[str, dict] = {}
    tasks: list[dict] = []
    for c in sweep.cells:
        ovs = sweep.run_overrides(c)
        d = folder / "cells" / c.id
        try:
            cfg = load_config(base=sweep.base, overrides=ovs)
        except FedleakError as e:
            rows[c.id] = failed_row(c.id, c.overrides, c.seed, "", _err(e))
            log(f"{c.id}: invalid config: {_err(e)}")
            continue
        req = sweep.request(c)
        done = _finished(d, req)
        if done is not None:
            rows[c.id] = row_from_metrics(c.id, c.overrides, c.seed, done)
            continue
        tasks.append({"id": c.id, "base": sweep.base, "overrides": ovs, "cell_overrides": c.overrides,
                      "seed": c.seed, "attack": str(cfg.attack["name"]), "dir": str(d), "threads": threads,
                      "request": req})
    skipped = sum(1 for r in rows.values() if r["status"] == "complete")
    if skipped:
        log(f"resuming: {skipped} finished cell(s) skipped, {len(tasks)} to run")
    return rows, tasks


def _recorder(rows: dict, n_total: int, folder: Path, log: Callable[[str], None]) -> Callable[[dict], None]:
    """The backends' ``on_done``: record a finished cell's row, log it, rewrite the tables."""
    n_done, n_before, t0 = [len(rows)], len(rows), time.perf_counter()

    def on_done(row: dict) -> None:
        n_done[0] += 1
        eta = eta_seconds(n_done[0] - n_before, n_total - n_before, time.perf_counter() - t0)
        secs = row.pop("seconds", None)
        rows[row["cell"]] = row
        what = (f"PSNR {row['psnr']:.2f} dB" if row["status"] == "complete" and row["psnr"] is not None
                else row["error"] or row["status"])
        log(f"[{n_done[0]}/{n_total}] {row['cell']} {row['attack']} {row['status']}: {what}"
            + (f" ({secs:.1f}s)" if secs is not None else "")
            + f"; elapsed {duration(time.perf_counter() - t0)}" + (f", ETA {duration(eta)}" if eta else ""))
        write_tables(list(rows.values()), folder)

    return on_done


def run_sweep(source: str | Path | dict | Sweep, out: Optional[str | Path] = None, backend: Optional[str] = None,
              workers: Optional[int] = None, address: Optional[str] = None, threads: Optional[int] = None,
              progress: bool = True) -> tuple[Path, list[dict]]:
    """Run (or resume) a sweep; return ``(sweep_dir, rows)`` with rows sorted by cell id.

    ``backend``: ``local`` (process pool, default) or ``ray``; ``workers``: parallel cells (default: the
    cores, or the Ray cluster's CPUs); ``threads``: torch threads per cell (default ``max(1, cores //
    workers)``); ``progress``: one line per finished cell on stderr.
    """
    sweep = source if isinstance(source, Sweep) else load_sweep(source)
    backend, address, workers, eff_workers, threads = _backend_options(sweep, backend, workers, address, threads)
    folder = _open_sweep_folder(sweep, source, out)
    log = _Log(folder / "sweep.log", progress)
    write_text(folder / "sweep.yaml", yaml.safe_dump({**sweep.to_dict(), "backend": backend}, sort_keys=False))
    log(f"{len(sweep.cells)} cell(s) ({len(sweep.cells) // len(sweep.seeds)} override set(s) x "
        f"{len(sweep.seeds)} seed(s)) into {folder}; backend {backend}"
        + (f" at {address}" if address else "") + f", workers {workers or 'auto'}, {threads} torch thread(s) each")
    rows, tasks = _plan(sweep, folder, threads, log)
    on_done = _recorder(rows, len(sweep.cells), folder, log)
    t0 = time.perf_counter()
    if tasks:
        if backend == "local":
            _local_backend(tasks, min(eff_workers, len(tasks)), threads, on_done, log)
        else:
            _ray_backend(tasks, workers, address, on_done, log)
    final = write_tables(list(rows.values()), folder)
    plot_frontiers(final, folder, log)
    n_fail = sum(1 for r in final if r["status"] != "complete")
    log(f"done in {time.perf_counter() - t0:.1f}s: {len(final) - n_fail} complete, {n_fail} failed/incomplete; "
        f"table {folder / 'results.md'}")
    mark_complete(folder)
    return folder, final


def read_rows(folder: str | Path) -> list[dict]:
    """The rows of a sweep folder's ``results.json``."""
    p = Path(folder) / "results.json"
    try:
        return json.loads(p.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FedleakError(f"{str(p)!r}: cannot read the sweep results ({e})") from None


def sweep_complete(folder: str | Path) -> bool:
    """A sweep folder is complete when its run loop reached the end (every cell attempted, some may have
    failed): its COMPLETE marker exists. (Run folders use :func:`fedleak.runio.is_complete`.)"""
    return (Path(folder) / COMPLETE_MARK).is_file()


def is_sweep_dir(folder: str | Path) -> bool:
    f = Path(folder)
    return (f / "sweep.yaml").is_file() and (f / "cells").is_dir()


__all__ = ["COLUMNS", "Sweep", "Cell", "load_sweep", "run_sweep", "run_cell", "table_csv", "table_markdown",
           "plot_frontiers", "read_rows", "is_sweep_dir", "sweep_complete", "flow"]

