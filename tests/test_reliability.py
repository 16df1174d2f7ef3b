"""Issue 7: resumable runs (checkpoint, SIGKILL, --resume), determinism, atomic and verifiable results, the
memory guard and NaN/Inf handling."""
from __future__ import annotations

import builtins
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import fedleak
from fedleak import cli
from fedleak import io as runio
from fedleak.attacks import ATTACKS, Reconstruction
from fedleak.attacks import engine
from fedleak.attacks.engine import run_engine
from fedleak.attacks.presets import engine_config
from fedleak.experiment.case import Case
from fedleak.errors import ConfigError, FedleakError, NumericalError

FAKE = "test-fake-reliability"

if FAKE not in ATTACKS:

    from conftest import SeededFakeOptions

    @ATTACKS.register(FAKE, doc="test attack: seeded noise images (fast)", options=SeededFakeOptions)
    def _fake(view, update, options, callback=None):
        iterations = options.iterations
        g = torch.Generator().manual_seed(options.seed)
        x = torch.rand(view.batch_size, *view.image_shape, generator=g)
        hist = [1.0 / (i + 1) for i in range(iterations)]
        return Reconstruction(images=x, labels=update.labels, loss_history=hist, info={"seconds": 0.5})


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _write_cfg(path: Path, attack: dict, **extra) -> Path:
    cfg = {"seed": 5, "threads": 1, "data": {"source": "builtin", "size": 16, "batch_size": 1},
           "model": {"name": "lenet"}, "attack": attack, "output": {"dir": str(path.parent / "experiments")}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _without_timing(m: dict) -> dict:
    m = dict(m)
    m.pop("timing", None)
    return m


def _assert_close(a, b, where="metrics"):
    """Equal structure, equal strings/ints, floats equal to 1e-6 relative (float tolerance)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}.{i}")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------- engine checkpoints
@pytest.fixture(scope="module")
def tiny_case():
    torch.set_num_threads(1)
    case = Case({"seed": 3, "data": {"size": 16, "batch_size": 2}, "model": {"name": "lenet"},
                 "attack": {"name": "rog"}})
    return case.client_update(), case.server_view()


class _Kill(Exception):
    pass


@pytest.mark.parametrize("preset, opts, kill_at", [
    # two restarts, killed in the second: best-so-far and the first restart's history come from the file
    ("rog", dict(iterations=12, restarts=2, checkpoint_every=5), (1, 9)),
    # signed Adam, multistep schedule, jointly optimised soft labels (label_param in the state)
    ("inverting-gradients", dict(iterations=14, labels="optimize", checkpoint_every=4), (0, 11)),
    # L-BFGS state (curvature pairs) without line search
    ("dlg", dict(iterations=8, lbfgs_inner=2, labels="known", checkpoint_every=3), (0, 7)),
])
def test_engine_resume_is_exact(tiny_case, tmp_path, preset, opts, kill_at):
    update, view = tiny_case
    ck = tmp_path / "ck.pt"
    torch.manual_seed(0)
    ref = run_engine(view, update, engine_config(preset, update, seed=1, **opts))
    ref_rng = torch.get_rng_state()

    def killer(state):
        if (state["restart"], state["iteration"]) == kill_at:
            raise _Kill  # like a kill: no clean-up inside the engine, only the last checkpoint survives

    torch.manual_seed(0)
    with pytest.raises(_Kill):
        run_engine(view, update, engine_config(preset, update, seed=1, checkpoint=str(ck), **opts), callback=killer)
    st = torch.load(ck, weights_only=True)
    assert (st["restart"], st["iteration"]) < kill_at and st["iteration"] > 0
    assert {"z", "opt", "sched", "torch_rng", "history", "run_best", "best", "fingerprint"} <= set(st)
    assert st["opt"]["state"], "optimiser state (Adam moments / L-BFGS directions) is in the checkpoint"

    torch.manual_seed(999)  # a different global RNG state: the checkpoint's RNG state must win
    seen = []
    res = run_engine(view, update, engine_config(preset, update, seed=1, checkpoint=str(ck), **opts),
                     callback=lambda s: seen.append((s["restart"], s["iteration"])))
    assert seen[0] == (st["restart"], st["iteration"] + 1)  # continued, not restarted
    assert res.loss_history == ref.loss_history  # bit-identical, including the earlier restarts
    assert torch.equal(res.images, ref.images)
    assert res.info["best_loss"] == ref.info["best_loss"]
    assert res.info["best_restart"] == ref.info["best_restart"]
    assert torch.equal(torch.get_rng_state(), ref_rng)  # the global RNG continues where the run left it
    if res.labels is not None:
        assert torch.equal(res.labels, ref.labels)


def test_checkpoint_of_another_update_or_settings_is_refused(tiny_case, tmp_path):
    update, view = tiny_case
    ck = tmp_path / "ck.pt"
    run_engine(view, update, engine_config("rog", update, iterations=4, checkpoint_every=2, checkpoint=str(ck)))
    other = Case({"seed": 4, "data": {"size": 16, "batch_size": 2}, "model": {"name": "lenet"},
                  "attack": {"name": "rog"}})
    with pytest.raises(ConfigError, match="different update"):
        run_engine(other.server_view(), other.client_update(),
                   engine_config("rog", None, iterations=4, checkpoint=str(ck)))
    with pytest.raises(ConfigError, match="different attack settings"):
        run_engine(view, update, engine_config("rog", update, iterations=4, lr=0.01, checkpoint=str(ck)))
    ck.write_bytes(ck.read_bytes()[:100])  # truncated (cannot happen with atomic writes, but a copy might be)
    with pytest.raises(ConfigError, match="unreadable"):
        run_engine(view, update, engine_config("rog", update, iterations=4, checkpoint=str(ck)))


# ------------------------------------------------------------------------------ SIGKILL and --resume
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, capsys):
    iters = 150
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": "rog", "iterations": iters, "checkpoint_every": 10})
    killed, ref = tmp_path / "a" / "run", tmp_path / "b" / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fedleak", "run", str(cfg), "--out", str(killed), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (killed / "checkpoint.pt").exists() and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert (killed / "checkpoint.pt").exists(), "no checkpoint within 60 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    st = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert 0 < st["iteration"] < iters
    assert not (killed / "COMPLETE").exists() and not (killed / "metrics.json").exists()
    with pytest.raises(runio.IncompleteRunError, match="no COMPLETE"):
        runio.check_complete(killed)

    assert cli.main(["run", "--resume", str(killed), "-q"]) == 0
    assert cli.main(["run", str(cfg), "--out", str(ref), "-q"]) == 0
    capsys.readouterr()
    runio.check_complete(killed, verify=True)
    log = (killed / "run.log").read_text()
    assert f"resuming the attack from checkpoint.pt (restart 0, iteration {st['iteration']})" in log
    assert not (killed / "checkpoint.pt").exists()  # deleted once complete
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (killed, ref))
    assert a["attack"]["iterations_run"] == iters
    _assert_close(_without_timing(a), _without_timing(b))
    ra = torch.load(killed / "reconstruction.pt", weights_only=True)
    rb = torch.load(ref / "reconstruction.pt", weights_only=True)
    assert torch.allclose(ra["images"], rb["images"], atol=1e-6)
    assert torch.allclose(ra["loss_history"], rb["loss_history"], rtol=1e-6)

    # resuming a complete run does nothing and returns its metrics
    before = (killed / "metrics.json").read_bytes()
    run_dir, m = fedleak.run(resume=killed, progress=False)
    assert m == a and (killed / "metrics.json").read_bytes() == before


def test_ctrl_c_then_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C: partial results, exit 130, the checkpoint kept and the resume command printed; --resume then
    finishes the run exactly as if it had not been interrupted."""
    from fedleak.experiment import runner

    cfg = _write_cfg(tmp_path / "c.yaml", {"name": "rog", "iterations": 12, "checkpoint_every": 5})
    orig = runner.Progress.__call__

    def interrupting(self, state):
        orig(self, state)
        if state["iteration"] == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.Progress, "__call__", interrupting)
    out = tmp_path / "a" / "run"
    assert cli.main(["run", str(cfg), "--out", str(out), "-q"]) == 130
    err = capsys.readouterr().err
    assert f"fedleak run --resume {out}" in err and (out / "checkpoint.pt").is_file()
    assert json.loads((out / "metrics.json").read_text())["interrupted"] is True
    monkeypatch.setattr(runner.Progress, "__call__", orig)
    assert cli.main(["run", "--resume", str(out), "-q"]) == 0
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "b" / "run"), "-q"]) == 0
    a, b = (json.loads((tmp_path / d / "run" / "metrics.json").read_text()) for d in ("a", "b"))
    _assert_close(_without_timing(a), _without_timing(b))
    runio.check_complete(out)


def test_resume_errors_are_one_line(tmp_path, capsys):
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": FAKE})
    for args, needle in [(["--resume", str(tmp_path / "nope")], "no such run folder"),
                         (["--resume", str(tmp_path)], "no config.yaml"),
                         ([str(cfg), "--resume", str(tmp_path)], "do not also give a config"),
                         (["--resume", str(tmp_path), "--out", str(tmp_path / "o")], "do not also give --out")]:
        assert cli.main(["run", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fedleak: error:") and "\n" not in err and needle in err, err


def test_fresh_run_into_a_used_folder_never_resumes_its_checkpoint(tmp_path, capsys):
    """A stale checkpoint.pt (another run's attack state) in an --out folder is deleted, not resumed."""
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": "rog", "iterations": 6, "checkpoint_every": 2})
    out = tmp_path / "reused"
    assert cli.main(["run", str(cfg), "--out", str(out), "-q", "--set", "attack.checkpoint=null"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    # plant a checkpoint that matches the attack settings and the update but comes from a different
    # (longer) run, then run again: the result must be the fresh one
    other = tmp_path / "other"
    assert cli.main(["run", str(cfg), "--out", str(other), "-q", "--set", "attack.iterations=40",
                     "--set", "attack.checkpoint=" + str(tmp_path / "planted.pt")]) == 0
    (out / "checkpoint.pt").write_bytes((tmp_path / "planted.pt").read_bytes())
    (out / "COMPLETE").unlink()  # a complete folder is refused outright (issue 16); an unfinished one is reused
    assert cli.main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    second = json.loads((out / "metrics.json").read_text())
    for key in ("raw", "summary"):
        assert first[key] == second[key]
    assert second["attack"]["iterations_run"] == 6
    assert not (out / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------------- determinism
def test_same_config_and_seed_give_identical_metrics(tmp_path):
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": "rog", "iterations": 6},
                     obfuscation=[{"name": "randk", "sparsity": 0.5}])  # a random obfuscation: seeded too
    ms = []
    for d in ("a", "b"):
        run_dir, m = fedleak.run(cfg, out=tmp_path / d / "run", progress=False)
        ms.append(json.loads((run_dir / "metrics.json").read_text()))
    assert "timing" in ms[0] and ms[0]["timing"]["total_seconds"] > 0
    assert _without_timing(ms[0]) == _without_timing(ms[1])  # exact, not approximate

    # every wall-clock duration lives under "timing" (moved there from the attack info and update stats)
    def keys(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{path}.{k}"
                yield from keys(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from keys(v, f"{path}.{i}")

    leaked = [k for k in keys(_without_timing(ms[0])) if k.endswith("seconds") or k.endswith(".elapsed")]
    assert leaked == []
    assert "attack.info.seconds" in ms[0]["timing"]["other"]
    assert "update.stats.client_seconds" in ms[0]["timing"]["other"]


# --------------------------------------------------------------------------- atomic, complete results
def test_every_result_file_is_written_through_a_temporary_and_rename(tmp_path, monkeypatch):
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": "rog", "iterations": 4, "checkpoint_every": 2},
                     output={"save_update": True})
    out = tmp_path / "run"
    opened: list[Path] = []
    renamed: list[str] = []
    real_open, real_io_open, real_replace = builtins.open, io.open, os.replace

    def spy(real):
        def _open(file, mode="r", *a, **k):
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
                p = Path(file).resolve()
                if out.resolve() in p.parents:
                    opened.append(p)
            return real(file, mode, *a, **k)
        return _open

    def replace(src, dst, *a, **k):
        renamed.append(Path(dst).name)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    monkeypatch.setattr(os, "replace", replace)
    fedleak.run(cfg, out=out, progress=False)
    monkeypatch.undo()
    assert opened, "the spy saw no writes"
    direct = [p.name for p in opened if not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    assert direct == [], f"written in place: {direct}"
    assert not list(out.glob(".*.tmp"))
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "reconstruction.pt", "grid.png", "loss.png", "config.yaml", "update.safetensors",
            "run.log", "COMPLETE"} <= names
    # files written by C++/Rust writers (torch.save, safetensors) too: every file in the folder, and the
    # checkpoint deleted at the end, arrived by an atomic rename; COMPLETE was the last result renamed
    assert names <= set(renamed) and "checkpoint.pt" in renamed
    assert renamed.index("COMPLETE") > max(renamed.index(n) for n in names - {"COMPLETE", "run.log"})


def test_check_complete_manifest(tmp_path):
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": FAKE})
    d, _ = fedleak.run(cfg, out=tmp_path / "r", progress=False)
    runio.check_complete(d, verify=True)
    man = json.loads((d / "COMPLETE").read_text())
    assert set(man["files"]) == {"config.yaml", "metrics.json", "grid.png", "loss.png", "reconstruction.pt"}

    # same size, different content: only the hash sees it
    rec = d / "reconstruction.pt"
    data = bytearray(rec.read_bytes())
    data[-20] ^= 0xFF
    rec.write_bytes(bytes(data))
    runio.check_complete(d)
    with pytest.raises(runio.IncompleteRunError, match="changed since"):
        runio.check_complete(d, verify=True)
    assert not runio.is_complete(d, verify=True)

    (d / "metrics.json").write_text((d / "metrics.json").read_text() + " ")
    with pytest.raises(runio.IncompleteRunError, match="changed size"):
        runio.check_complete(d)
    (d / "grid.png").unlink()
    with pytest.raises(runio.IncompleteRunError, match="'grid.png' is missing"):
        runio.check_complete(d)
    (d / "COMPLETE").write_text("{not json")
    with pytest.raises(runio.IncompleteRunError, match="not a valid manifest"):
        runio.check_complete(d)
    (d / "COMPLETE").unlink()
    with pytest.raises(runio.IncompleteRunError, match="no COMPLETE marker"):
        runio.check_complete(d)
    assert issubclass(runio.IncompleteRunError, FedleakError)
    with pytest.raises(runio.IncompleteRunError, match="not a run folder"):
        runio.check_complete(tmp_path / "missing")

    # a legacy marker ("ok") passes with config.yaml + metrics.json, an interrupted run never does
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("seed: 0\n")
    (legacy / "metrics.json").write_text('{"interrupted": false}')
    (legacy / "COMPLETE").write_text("ok\n")
    runio.check_complete(legacy)
    (legacy / "metrics.json").write_text('{"interrupted": true}')
    with pytest.raises(runio.IncompleteRunError, match="interrupted"):
        runio.check_complete(legacy)


def test_report_and_sweep_refuse_tampered_or_incomplete_folders(tmp_path):
    report = pytest.importorskip("fedleak.report.html")
    sweep = pytest.importorskip("fedleak.experiment.sweep")
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": FAKE})
    d, _ = fedleak.run(cfg, out=tmp_path / "cell", progress=False)
    req = {"ask": 1}
    (d / "cell.json").write_text(json.dumps({"request": req}))
    report.write_report(d, out=tmp_path / "ok.html")
    assert sweep._finished(d, req) is not None
    (d / "metrics.json").write_text((d / "metrics.json").read_text().replace('"seed": 5', '"seed": 6 '))
    with pytest.raises(FedleakError, match="changed size"):
        report.write_report(d, out=tmp_path / "bad.html")
    assert sweep._finished(d, req) is None  # a sweep re-runs the cell instead of trusting it


# ----------------------------------------------------------------------------------- memory guard
def test_memory_guard_refuses_before_any_work(tmp_path, capsys):
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": FAKE})
    rc = cli.main(["run", str(cfg), "--set", "model.name=resnet18-rog", "--set", "data.size=1024",
                   "--set", "data.batch_size=4096"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("fedleak: error:") and "\n" not in err
    assert "GiB" in err and "available" in err and "--force" in err
    assert not (tmp_path / "experiments").exists()  # refused before the run folder was made
    # the same verdict from --check, which never writes anything
    assert cli.main(["run", str(cfg), "--check", "--set", "data.size=1024", "--set", "data.batch_size=4096",
                     "--set", "model.name=resnet18-rog"]) == 2
    assert cli.main(["run", str(cfg), "--check"]) == 0
    assert "estimated peak memory" in capsys.readouterr().out


def test_memory_limit_and_force(tmp_path, monkeypatch, capsys):
    from fedleak.experiment import resources

    cfg = _write_cfg(tmp_path / "c.yaml", {"name": FAKE})
    monkeypatch.setenv("FEDLEAK_MEMORY_LIMIT", "64M")
    assert resources.available_bytes() == (64 << 20, "FEDLEAK_MEMORY_LIMIT")
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "64 MiB is available (FEDLEAK_MEMORY_LIMIT)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "x"), "-q", "--force"]) == 0
    assert "memory guard overridden (--force)" in (tmp_path / "x" / "run.log").read_text()
    monkeypatch.setenv("FEDLEAK_MEMORY_LIMIT", "64G")
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "y"), "-q"]) == 0


_MEASURE = """
import json, sys, torch
torch.set_num_threads(1)
from fedleak.experiment import resources
from fedleak.experiment import runner
from fedleak.config.schema import load_config
cfg = json.loads(sys.argv[1])
est = resources.estimate(load_config(base=cfg))
runner.run(cfg, out=sys.argv[2], progress=False)
print(json.dumps({"estimate": est.total, "peak": resources.peak_rss()}))
"""


def test_memory_estimate_is_above_measured_peak_but_not_wildly(tmp_path):
    """Calibration check on a small FedAvg run (see docs/robustness.md for the full table)."""
    cfg = {"seed": 0, "threads": 1, "data": {"size": 64, "batch_size": 4}, "model": {"name": "lenet"},
           "protocol": {"name": "fedavg", "local_steps": 2}, "attack": {"name": "rog", "iterations": 2}}
    r = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(cfg), str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["peak"] <= got["estimate"] <= 3 * got["peak"], got


# ------------------------------------------------------------------------------------------ NaN/Inf
def test_nan_in_the_update_stops_with_one_line(tmp_path, monkeypatch, capsys):
    orig = Case.client_update

    def poisoned(self):
        u = orig(self)
        k = next(iter(u.tensors))
        t = u.tensors[k].clone()
        t.view(-1)[3] = float("inf")
        u.tensors[k] = t
        return u

    monkeypatch.setattr(Case, "client_update", poisoned)
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": "rog", "iterations": 3})
    out = tmp_path / "nan"
    assert cli.main(["run", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedleak: error:") and "\n" not in err and "NaN or Inf" in err
    assert not (out / "COMPLETE").exists() and "FAILED: NumericalError" in (out / "run.log").read_text()
    # the engine refuses such an update on its own too (API users who bypass the runner)
    case = Case({"data": {"size": 16}, "model": {"name": "lenet"}, "attack": {"name": "rog"}})
    with pytest.raises(NumericalError, match="NaN or Inf"):
        run_engine(case.server_view(), case.client_update(), engine_config("rog", None, iterations=2))


class _NaNAt:
    """Patch the engine's matcher so that chosen calls (1-based) return NaN."""

    def __init__(self, monkeypatch, bad):
        self.calls = 0
        base = engine.Matcher
        spy = self

        class M(base):
            def __call__(self, rep):
                out = super().__call__(rep)
                spy.calls += 1
                return out * float("nan") if bad(spy.calls) else out

        monkeypatch.setattr(engine.loop, "Matcher", M)


def test_nan_during_optimisation_error_path(tmp_path, monkeypatch, capsys):
    _NaNAt(monkeypatch, lambda n: n == 4)
    cfg = _write_cfg(tmp_path / "c.yaml", {"name": "rog", "iterations": 10})
    out = tmp_path / "r"
    assert cli.main(["run", str(cfg), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "NaN/Inf at iteration 4" in err and "on_nan: restart" in err
    assert not (out / "COMPLETE").exists()


def test_nan_during_optimisation_restart_path(tiny_case, tmp_path, monkeypatch):
    update, view = tiny_case
    nan = _NaNAt(monkeypatch, lambda n: n == 8)
    seen = []
    res = run_engine(view, update, engine_config("rog", update, iterations=12, checkpoint_every=5, on_nan="restart",
                                                 checkpoint=str(tmp_path / "ck.pt")),
                     callback=lambda s: seen.append(s["iteration"]))
    # iteration 8 failed: rolled back to the checkpoint at 5 and continued from 6 with a halved lr
    assert seen[:7] == [1, 2, 3, 4, 5, 6, 7] and seen[7:9] == [6, 7] and seen[-1] == 12
    assert len(res.loss_history) == 12 and all(math.isfinite(v) for v in res.loss_history)
    assert torch.isfinite(res.images).all() and nan.calls == 12 + 1 + 2
    # a NaN that keeps coming back: a bounded number of roll-backs, then a clear error
    _NaNAt(monkeypatch, lambda n: n >= 3)
    with pytest.raises(NumericalError, match="roll-backs did not help"):
        run_engine(view, update, engine_config("rog", update, iterations=12, checkpoint_every=5, on_nan="restart"))
