"""Regression tests for issue 16 (reliability, second round). Each failed on the code before its fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedleak import cli
from fedleak.errors import ConfigError
from fedleak.experiment.claim import claim_run_dir, release
from fedleak.io import COMPLETE_MARK, new_run_dir

from test_reliability import FAKE  # registers the fast fake attack (tests/ is on sys.path: no package)

ROOT = Path(__file__).resolve().parents[1]


def _cfg(path: Path, **extra) -> Path:
    raw = {"data": {"size": 16, "batch_size": 1}, "attack": {"name": FAKE, "iterations": 2}, **extra}
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert all(n in err for n in needles), err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


# ------------------------------------------------------------------- 1. exclusive claim of --out
def test_second_run_into_a_claimed_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "X"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from fedleak.experiment.claim import claim_run_dir;"
         f"claim_run_dir({str(out)!r}, 'COMPLETE'); print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["run", str(_cfg(tmp_path / "c.yaml")), "--out", str(out), "-q"]) != 0
        _one_line_error(capsys, "in use by another run")
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_claim_is_released_and_reclaimable_in_process(tmp_path):
    d = claim_run_dir(tmp_path / "d", COMPLETE_MARK)
    release(d)
    assert claim_run_dir(d, COMPLETE_MARK) == d
    release(d)


# ------------------------------------------------------------------- 2. complete folder untouched
def test_complete_folder_is_never_touched(tmp_path, capsys):
    out = tmp_path / "X"
    cfg = _cfg(tmp_path / "c.yaml")
    assert cli.main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    assert cli.main(["run", str(cfg), "--out", str(out), "-q", "--set", f"data.source={bad}"]) != 0
    _one_line_error(capsys, "holds a complete run")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before


# ------------------------------------------------------------------- 6. output paths
def test_out_under_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    cfg = _cfg(tmp_path / "c.yaml")
    for out in (f, f / "sub"):
        assert cli.main(["run", str(cfg), "--out", str(out), "-q"]) != 0
        _one_line_error(capsys, str(f))


def test_output_dir_that_is_a_file_or_read_only(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        new_run_dir(f, "run")
    with pytest.raises(ConfigError, match="cannot create"):
        new_run_dir(f / "sub", "run")
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        cfg = _cfg(tmp_path / "c.yaml", output={"dir": str(ro)})
        assert cli.main(["run", str(cfg), "-q"]) != 0
        _one_line_error(capsys, str(ro))
        assert cli.main(["run", str(cfg), "--out", str(ro), "-q"]) != 0
        _one_line_error(capsys, str(ro))
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------- 3. obfuscation strings / 8. 1e-3
@pytest.mark.parametrize("text, needle", [
    ("qsgd(", "unbalanced parentheses"),
    ("qsgd(4, levels=8)", "'levels' given twice"),
    ("gaussian(sigma=0.01, sigma=5)", "'sigma' given twice"),
    ("qsgd(4) x", "unexpected 'x'"),
    ("qsgd(4))", "unexpected ')'"),
    ("qsgd(4,)", "empty argument"),
])
def test_malformed_obfuscation_is_refused_with_a_position(tmp_path, capsys, text, needle):
    cfg = _cfg(tmp_path / "c.yaml")
    assert cli.main(["run", str(cfg), "--check", "--set", f"obfuscation={text}"]) != 0
    _one_line_error(capsys, needle, "column")


def test_scientific_notation_in_obfuscation_strings():
    from fedleak.config.schema import parse_pipeline

    assert parse_pipeline("gaussian(1e-3) -> qsgd(levels=16)") == [
        {"name": "gaussian", "sigma": 1e-3}, {"name": "qsgd", "levels": 16}]


@pytest.mark.parametrize("assignment", ["attack.lr=1e-3", "protocol.lr=1e-3"])
def test_scientific_notation_in_set(assignment):
    from fedleak.config.schema import apply_override

    raw: dict = {}
    apply_override(raw, assignment)
    section, key = assignment.split("=")[0].split(".")
    assert raw[section][key] == 1e-3


# ------------------------------------------------------------------- 7. negative label
def test_negative_label_names_the_row(tmp_path):
    from PIL import Image

    from fedleak.client.data import load_folder
    from fedleak.errors import DataError

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("file,label\na.png,1\nb.png,-3\n")
    with pytest.raises(DataError, match=r"labels.csv:3: label -3 is negative"):
        load_folder(tmp_path, 8)


# ------------------------------------------------------------------- 11. report of a non-mapping metrics.json
@pytest.mark.parametrize("content", ["[1, 2]", "3", '"x"', "null"])
def test_report_allow_incomplete_with_non_mapping_metrics(tmp_path, content):
    from fedleak.report.html import write_report

    (tmp_path / "config.yaml").write_text("attack: {name: rog}\n")
    (tmp_path / "metrics.json").write_text(content)
    assert write_report(tmp_path, allow_incomplete=True).is_file()


# ------------------------------------------------------------------- 12. booleans are not integers
@pytest.mark.parametrize("assignment", ["seed=true", "data.batch_size=true", "protocol.lr=false",
                                        "model.num_classes=true"])
def test_booleans_refused_as_numbers(assignment):
    from fedleak.config.schema import load_config

    with pytest.raises(ConfigError, match="must be a number"):
        load_config(None, [assignment])


# ------------------------------------------------------------------- 9. deep nesting, huge ints; 12. duplicate keys
@pytest.mark.parametrize("text, needle", [
    ("seed: 1\nseed: 2\n", "given twice"),
    ("data: " + "[" * 5000 + "]" * 5000 + "\n", "config"),
    ("seed: " + "9" * 5000 + "\n", "config"),
])
def test_bad_yaml_files_are_one_line(tmp_path, capsys, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    assert cli.main(["run", str(f), "--check"]) != 0
    _one_line_error(capsys, needle)


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, "9" * 5000])
def test_bad_set_values_are_one_line(capsys, value):
    assert cli.main(["run", "--check", "--set", f"seed={value}"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_bad_memory_limit_env_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDLEAK_MEMORY_LIMIT", "abc")
    assert cli.main(["run", str(_cfg(tmp_path / "c.yaml")), "--out", str(tmp_path / "o"), "-q"]) != 0
    _one_line_error(capsys, "FEDLEAK_MEMORY_LIMIT")


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    import signal
    import time

    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "fedleak", "run", "--out", str(out), "-q", "--set", "data.size=16",
                          "--set", "data.batch_size=1", "--set", "attack.iterations=100000"],
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "run.log").is_file() or "case:" not in (out / "run.log").read_text():
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert "INTERRUPTED" in (out / "run.log").read_text()
    assert (out / "metrics.json").is_file() and not (out / COMPLETE_MARK).exists()


def test_import_models_must_name_a_module_class_or_a_python_factory(tmp_path, capsys):
    """``import:os:abort`` would kill the process and ``import:subprocess:run`` run a program: both are refused in
    one line before anything is called (issue 16, item 10)."""
    from fedleak.client.models import build_model
    from fedleak.errors import ConfigError

    with pytest.raises(ConfigError, match="must name an nn.Module subclass or a Python factory function"):
        build_model("import:os:abort")
    with pytest.raises(ConfigError, match="standard-library function"):  # round 3: refused before it is called
        build_model("import:subprocess:run")
    model = build_model("import:torch.nn:Identity")  # a class: built with the keywords it declares (none)
    assert type(model).__name__ == "Identity"


@pytest.mark.parametrize("obf", ["ldp(max_norm=1, epsilon=0.01)", "dpsgd(max_grad_norm=1, epsilon=0.01)"])
def test_unreachable_dp_budget_is_one_line_naming_the_floor(tmp_path, capsys, obf):
    """Issue 16, item 4: ``--check`` (ldp: calibrated at config time) and the run refuse it in one line."""
    from fedleak import cli

    args = ["run", "--set", f"obfuscation={obf}", "--set", "data.size=16", "--set", "data.batch_size=1",
            "--set", "attack.iterations=1", "--out", str(tmp_path / "r"), "-q"]
    if obf.startswith("ldp"):
        args.append("--check")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unreachable" in err[0] and "smallest reachable epsilon is about" in err[0]
    assert not (tmp_path / "r" / "COMPLETE").exists()
