"""Regression tests for issue 16, the items left after round 2: the memory guard on every command (item 5),
output paths and disk-full stand-ins for ``simulate`` and ``run`` (item 6), scientific notation in YAML
(item 8), deep nesting / huge integers in sweep files (item 9), ``import:`` models built on the meta device
(item 10) and symlink loops (item 12)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedleak import cli
from fedleak.errors import ConfigError, DataError, FedleakError
from fedleak.io import COMPLETE_MARK

from test_reliability import FAKE  # registers the fast fake attack (tests/ is on sys.path: no package)

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.size=16", "--set", "data.batch_size=1"]


@pytest.fixture(autouse=True)
def _threads(keep_threads):
    yield


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert all(n in err for n in needles), err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    return err


def _cfg(path: Path, **extra) -> Path:
    raw = {"data": {"size": 16, "batch_size": 1}, "attack": {"name": FAKE, "iterations": 2}, **extra}
    path.write_text(yaml.safe_dump(raw))
    return path


def _no_result(d: Path) -> None:
    """Nothing in ``d`` claims to be a result: no COMPLETE, no metrics.json, no stray temporaries."""
    if d.exists():
        names = {p.name for p in d.iterdir()}
        assert COMPLETE_MARK not in names and "metrics.json" not in names, names
        assert not [n for n in names if n.endswith(".tmp")], names


# ------------------------------------------------------------------ 5. the memory guard on every command
def test_simulate_memory_guard_refuses_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDLEAK_MEMORY_LIMIT", "1M")
    out = tmp_path / "s"
    assert cli.main(["simulate", "--out", str(out), *SMALL]) == 2
    _one_line_error(capsys, "needs an estimated", "FEDLEAK_MEMORY_LIMIT", "--force")
    assert not out.exists()
    assert cli.main(["simulate", "--out", str(out), *SMALL, "--force"]) == 0  # the override
    assert (out / COMPLETE_MARK).is_file()


def test_every_sweep_cell_is_guarded_before_it_runs(tmp_path, monkeypatch):
    from fedleak.experiment.sweep import run_cell

    monkeypatch.setenv("FEDLEAK_MEMORY_LIMIT", "1M")
    d = tmp_path / "cell"
    row = run_cell({"id": "c0", "base": {"attack": {"name": FAKE, "iterations": 2}},
                    "overrides": ["data.size=16", "data.batch_size=1", "seed=0"], "cell_overrides": [],
                    "seed": 0, "attack": FAKE, "dir": str(d), "threads": 1, "request": {}})
    assert row["status"] == "failed" and "ResourceError" in row["error"] and "needs an estimated" in row["error"]
    assert not (d / "config.yaml").exists() and not (d / "run.log").exists()  # refused before the run began
    _no_result(d)


@pytest.mark.parametrize("argv", [
    ["train-victim", "--epochs", "1"],
    ["train-enhancer", "--data", "skimage", "--steps", "1", "-q"],
])
def test_training_commands_are_guarded(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.setenv("FEDLEAK_MEMORY_LIMIT", "1M")
    out = tmp_path / ("victims" if argv[0] == "train-victim" else "enh.safetensors")
    assert cli.main([*argv, "--out", str(out)]) == 2
    _one_line_error(capsys, "this training needs an estimated", "--force")
    assert not out.exists()


@pytest.mark.parametrize("argv", [["run", "--check"], ["simulate", *SMALL], ["train-victim", "--epochs", "0"],
                                  ["train-enhancer", "--data", "skimage", "--steps", "1", "-q"]])
def test_bad_memory_limit_is_refused_by_every_command(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.setenv("FEDLEAK_MEMORY_LIMIT", "abc")
    out = tmp_path / "o"
    assert cli.main([*argv, *([] if "--check" in argv else ["--out", str(out)])]) == 2
    _one_line_error(capsys, "FEDLEAK_MEMORY_LIMIT='abc' is not a size")
    assert not out.exists()


def _png_header_only(path: Path, w: int, h: int) -> None:
    import struct
    import zlib

    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_estimate_counts_image_decoding_from_headers_without_decoding(tmp_path, monkeypatch):
    """A 64-Mpx PNG (the issue's probe: 2.9 GB peak against an estimate of 0.98 GiB) adds C_DECODE bytes per
    pixel; the size comes from the header (the file here holds no pixel data at all) and nothing is decoded."""
    from PIL import ImageFile

    from fedleak.config.schema import load_config
    from fedleak.experiment import resources as R

    _png_header_only(tmp_path / "big.png", 8000, 8000)
    _png_header_only(tmp_path / "small.png", 100, 100)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded an image"))
    cfg = load_config(base={"data": {"source": str(tmp_path), "size": 16, "batch_size": 2, "labels": "none"}})
    est = R.estimate(cfg)
    assert est.details["largest_image_pixels"] == 64_000_000
    assert est.parts["image decoding"] == int(R.C_DECODE * 64_000_000)
    assert est.total > 2.9e9  # above the measured peak of the probe
    only_small = load_config(base={"data": {"source": str(tmp_path), "size": 16, "batch_size": 1, "start": 1, "labels": "none"}})
    assert R.estimate(only_small).parts["image decoding"] == int(R.C_DECODE * 10_000)  # only what is loaded
    monkeypatch.setenv("FEDLEAK_MEMORY_LIMIT", "2G")
    with pytest.raises(R.ResourceError, match="image decoding 3.34 GiB"):
        R.check(cfg)


def test_decoding_estimate_is_above_the_measured_decoding_peak(tmp_path):
    """Measured in a fresh process: the peak RSS added by loading a 4-Mpx RGB PNG is below
    ``C_DECODE`` x pixels, and not wildly (the estimate is within 3x)."""
    import numpy as np
    from PIL import Image

    from fedleak.experiment.resources import C_DECODE

    side = 2000
    a = (np.add.outer(np.arange(side), np.arange(side)) % 251).astype(np.uint8)
    Image.fromarray(np.stack([a, a.T, a], -1)).save(tmp_path / "p.png", compress_level=1)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak RSS")
    # the peak is VmHWM after resetting it (clear_refs 5) just before loading: an earlier import-time peak
    # (ru_maxrss) would otherwise hide or inflate the decoding's own peak
    code = ("import sys; from fedleak.client.data import load_image\n"
            "def st(k): return int([ln for ln in open('/proc/self/status') if ln.startswith(k)][0].split()[1]) * 1024\n"
            "open('/proc/self/clear_refs', 'w').write('5'); now = st('VmRSS'); load_image(sys.argv[1], 32)\n"
            "print(st('VmHWM') - now)")
    peak = int(subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png")], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout)
    est = C_DECODE * side * side
    assert peak < est < 3 * peak, (peak, est)


# ------------------------------------------------------------------ 6. output paths, disk full
def _limited(nbytes: int):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))  # Python ignores SIGXFSZ: writes get EFBIG
    return pre


@pytest.mark.parametrize("argv", [["simulate", *SMALL],
                                  ["run", *SMALL, "--set", f"attack={{name: rog, iterations: 2}}", "-q"]])
def test_disk_full_stand_in_is_one_line_and_leaves_no_result(tmp_path, argv):
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "fedleak", *argv, "--out", str(out)], capture_output=True, text=True,
                       preexec_fn=_limited(4096), env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert ("File too large" in p.stderr or "disk full" in p.stderr) and str(out) in p.stderr
    _no_result(out)
    if argv[0] == "run":
        assert "FAILED: OutputError" in (out / "run.log").read_text()


def test_a_failed_write_leaves_no_torn_file(tmp_path, monkeypatch):
    """A write that fails half-way (disk full) leaves neither the file nor its temporary: never a partial
    metrics.json."""
    import errno

    from fedleak.io import OutputError, write_json

    real = Path.write_text

    def half(self, text, *a, **k):
        real(self, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(OutputError, match="metrics.json.*No space left on device") as e:
        write_json(tmp_path / "metrics.json", {"a": list(range(100))})
    assert "\n" not in str(e.value) and isinstance(e.value, OSError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "simulate"])
def test_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch, command):
    """A read-only ``--out`` (stand-in that works as root too: creating any file there fails with EACCES)."""
    import errno
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "ro"
    args = ["run", str(_cfg(tmp_path / "c.yaml")), "-q"] if command == "run" else ["simulate", *SMALL]
    assert cli.main([*args, "--out", str(out)]) == 2
    _one_line_error(capsys, "Permission denied", str(out))
    _no_result(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_simulate_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for args in (["--out", str(ro)], ["--set", f"output.dir={ro}"]):
            assert cli.main(["simulate", *SMALL, *args]) == 2
            _one_line_error(capsys, str(ro))
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command", ["run", "simulate"])
def test_output_paths_under_a_file_are_one_line(tmp_path, capsys, command):
    f = tmp_path / "file"
    f.write_text("x")
    base = ["run", str(_cfg(tmp_path / "c.yaml")), "-q"] if command == "run" else ["simulate", *SMALL]
    for extra in (["--out", str(f)], ["--out", str(f / "sub")], ["--set", f"output.dir={f}"],
                  ["--set", f"output.dir={f / 'sub'}"]):
        assert cli.main([*base, *extra]) == 2
        _one_line_error(capsys, str(f))
    assert f.read_text() == "x"


def test_simulate_never_touches_a_complete_folder(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli.main(["simulate", "--out", str(out), *SMALL]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli.main(["simulate", "--out", str(out), *SMALL, "--set", "seed=5"]) == 2
    _one_line_error(capsys, "holds a complete run")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------ 4. DP budgets at --check (dpsgd too)
@pytest.mark.parametrize("obf", ["ldp(max_norm=1, epsilon=0.01)", "dpsgd(max_grad_norm=1, epsilon=0.01)"])
def test_unreachable_dp_budget_is_refused_at_check(capsys, obf):
    """Round 2 refused dpsgd's budget only once the run had started; ``--check`` passed it."""
    assert cli.main(["run", *SMALL, "--set", f"obfuscation={obf}", "--check"]) == 2
    _one_line_error(capsys, "is unreachable", "smallest reachable epsilon is about")
    assert cli.main(["run", *SMALL, "--set", "obfuscation=dpsgd(max_grad_norm=1, epsilon=5)", "--check"]) == 0


# ------------------------------------------------------------------ 8. scientific notation in YAML
def test_scientific_notation_in_yaml_files(tmp_path):
    from fedleak.config.schema import load_config

    p = tmp_path / "c.yaml"
    p.write_text("attack:\n  name: rog\n  lr: 1e-3\nprotocol:\n  lr: 5E1\nobfuscation:\n  - name: gaussian\n"
                 "    sigma: 1e-3\nmodel:\n  options: {a: +2.5e-1}\n")
    cfg = load_config(p)
    assert cfg.attack["lr"] == 1e-3 and cfg.protocol.lr == 50.0
    assert cfg.obfuscation == [{"name": "gaussian", "sigma": 1e-3}] and cfg.model.options == {"a": 0.25}
    # flow values of --set go through the same loader
    cfg = load_config(base={}, overrides=["attack={name: rog, lr: 1e-3}"])
    assert cfg.attack["lr"] == 1e-3
    # strings stay strings, booleans are still not numbers
    assert load_config(base={}, overrides=["output.name=e5"]).output.name == "e5"
    p.write_text("data:\n  batch_size: true\n")
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(p)


@pytest.mark.parametrize("assignment, needle", [("obfuscation=qsgd(levels=true)", "levels must be an integer"),
                                                ("obfuscation=gaussian(true)", "sigma must be a number"),
                                                ("attack.iterations=true", "iterations(:| must be an integer).*(valid integer|$)"),
                                                ("attack={name: rog, lr: true}", "lr must be")])
def test_booleans_are_still_not_numbers_in_named_options(assignment, needle):
    from fedleak.config.schema import load_config

    with pytest.raises(ConfigError, match=needle):
        load_config(base={}, overrides=[assignment])


def test_scientific_notation_in_sweep_files(tmp_path):
    from fedleak.experiment.sweep import load_sweep

    p = tmp_path / "s.yaml"
    p.write_text("base: {attack: {name: rog, lr: 1e-3}}\ngrid:\n  attack.lr: [1e-3, 1e-2]\n")
    sw = load_sweep(p)
    assert sw.base["attack"]["lr"] == 1e-3
    assert [c.overrides for c in sw.cells] == [["attack.lr=0.001"], ["attack.lr=0.01"]]


# ------------------------------------------------------------------ 9. deep nesting, huge integers
@pytest.mark.parametrize("text, needle", [
    ("grid:\n  data: [" + "[" * 5000 + "]" * 5000 + "]\n", "nested more than"),
    ("set: [" + "[" * 5000 + "]" * 5000 + "]\n", "nested more than"),
    ("seeds: [" + "9" * 5000 + "]\n", "more than 4300 digits"),
    ("grid:\n  seed: [1]\n  seed: [2]\n", "given twice"),
])
def test_bad_sweep_files_are_one_line(tmp_path, capsys, text, needle):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    assert cli.main(["sweep", str(p), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, needle, "sweep")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["file", "set"])
def test_huge_integers_name_the_limit(tmp_path, capsys, where):
    value = "9" * 5000
    if where == "file":
        (tmp_path / "c.yaml").write_text(f"model:\n  options: {{a: {value}}}\n")
        args = [str(tmp_path / "c.yaml")]
    else:
        args = ["--set", f"model.options={{a: {value}}}"]
    assert cli.main(["run", *args, "--check"]) == 2
    _one_line_error(capsys, "more than 4300 digits")


# ------------------------------------------------------------------ 10. import: models
@pytest.mark.parametrize("name, needle", [("import:subprocess:run", "standard-library function"),
                                          ("import:os:abort", "must name an nn.Module subclass"),
                                          ("import:os:system", "must name an nn.Module subclass")])
@pytest.mark.parametrize("check", [True, False])
def test_dangerous_import_models_are_refused_before_anything_runs(tmp_path, capsys, name, needle, check):
    out = tmp_path / "o"
    args = ["run", *SMALL, "--set", f"model.name={name}"] + (["--check"] if check else ["--out", str(out), "-q"])
    assert cli.main(args) == 2
    _one_line_error(capsys, needle)
    assert not out.exists()


def test_check_builds_import_models_on_the_meta_device(tmp_path, capsys, monkeypatch):
    (tmp_path / "fl_meta_probe.py").write_text(
        "import torch\nSEEN = []\n"
        "def make(num_classes, image_size):\n"
        "    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * image_size ** 2, num_classes))\n"
        "    SEEN.append(next(m.parameters()).device.type)\n    return m\n"
        "def not_a_module(num_classes):\n    SEEN.append('called')\n    return 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fl_meta_probe

    assert cli.main(["run", *SMALL, "--set", "model.name=import:fl_meta_probe:make", "--set", "model.num_classes=3",
                     "--check"]) == 0
    assert fl_meta_probe.SEEN and set(fl_meta_probe.SEEN) == {"meta"}  # never built with real memory
    capsys.readouterr()
    out = tmp_path / "o"
    assert cli.main(["run", *SMALL, "--set", "model.name=import:fl_meta_probe:not_a_module", "--out", str(out)]) == 2
    _one_line_error(capsys, "returned str, not an nn.Module")
    assert not out.exists()


# ------------------------------------------------------------------ 12. symlink loops
def _loop(d: Path) -> Path:
    (d / "loop_a").symlink_to(d / "loop_b")
    (d / "loop_b").symlink_to(d / "loop_a")
    return d / "loop_a"


def test_symlink_loops_are_reported_as_such(tmp_path, capsys):
    from fedleak.client.data import load_folder
    from fedleak.client.weights import read_state
    from fedleak.config.schema import load_config
    from fedleak.enhance.net import load as load_enhancer

    loop = _loop(tmp_path)
    with pytest.raises(ConfigError, match="is a symlink loop"):
        load_config(loop)
    for fn, err in ((lambda p: load_folder(p, 16), DataError), (read_state, DataError), (load_enhancer, ConfigError)):
        for p in (loop, loop / "x"):
            with pytest.raises(err, match="is a symlink loop"):
                fn(p)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "labels.csv").write_text(f"file,label\n{loop},1\n")
    with pytest.raises(DataError, match="is a symlink loop"):
        load_folder(tmp_path / "imgs", 16)
    assert cli.main(["run", str(loop), "--check"]) == 2
    _one_line_error(capsys, "is a symlink loop")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match="broken symbolic link"):
        load_folder(tmp_path / "gone", 16)


def test_every_round3_fix_keeps_errors_fedleak_errors():
    """The new error type for failed writes is a FedleakError (one line in the CLI) and an OSError (callers
    that tolerate a failed log write still do)."""
    from fedleak.io import OutputError

    assert issubclass(OutputError, FedleakError) and issubclass(OutputError, OSError)
