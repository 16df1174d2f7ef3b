"""Issue 7: loading files made by others never runs code.

The payload: a pickle whose ``__reduce__`` calls ``os.mkdir(marker)``. Loaded unsafely it creates the marker
folder (checked once, as a positive control); every fedleak loader must refuse it and leave no marker.
"""
from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

import fedleak
from fedleak import cli
from fedleak import io as runio
from fedleak.attacks import ATTACKS, Reconstruction, engine
from fedleak.attacks.presets import engine_config
from fedleak.config.schema import load_config
from fedleak.errors import ConfigError, DataError, FedleakError
from fedleak.client.update import Update

PKG = Path(fedleak.__file__).parent
from conftest import GREY_ATTACK as FAKE  # noqa: E402


@pytest.fixture(autouse=True)
def _threads(keep_threads):
    yield


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_torch_file(path: Path, marker: Path, wrap=lambda p: {"z": p}) -> Path:
    torch.save(wrap(Payload(marker)), path)
    return path


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "pwned"
    f = _evil_torch_file(tmp_path / "x.pt", marker)
    torch.load(f, weights_only=False)  # what an unsafe loader would do
    assert marker.is_dir()


def test_torch_default_load_is_weights_only(tmp_path):
    """Third-party loaders that call ``torch.load(f)`` without the flag (segment-anything's checkpoint loader)
    are safe too: this torch defaults to ``weights_only=True``."""
    marker = tmp_path / "pwned"
    f = _evil_torch_file(tmp_path / "x.pt", marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(f)
    assert not marker.exists()


def test_checkpoint_with_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ck = _evil_torch_file(tmp_path / "checkpoint.pt", marker,
                          wrap=lambda p: {"config": {}, "restart": 0, "best": {"loss": 1.0}, "z": p})
    with pytest.raises(ConfigError, match="refusing to load it"):
        engine.load_checkpoint(ck, engine_config("rog", None))
    assert not marker.exists()
    # through the CLI: a run folder whose checkpoint was swapped for the payload
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "threads": 1, "data": {"size": 16, "batch_size": 1}, "model": {"name": "lenet"},
        "attack": {"name": "rog", "iterations": 5}}))
    (run_dir / "checkpoint.pt").write_bytes(ck.read_bytes())
    assert cli.main(["run", "--resume", str(run_dir), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedleak: error:") and "\n" not in err and "refusing to load it" in err
    assert not marker.exists() and not (run_dir / "COMPLETE").exists()


def test_reconstruction_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    rec = _evil_torch_file(tmp_path / "reconstruction.pt", marker, wrap=lambda p: {"images": p})
    with pytest.raises(FedleakError, match="refusing to load it"):
        runio.load_tensors(rec)
    assert not marker.exists()
    report = pytest.importorskip("fedleak.report.html")
    # a report of a run folder holding the payload shows no reconstruction and runs nothing
    cfg = {"threads": 1, "data": {"size": 16, "batch_size": 1}, "model": {"name": "lenet"},
           "attack": {"name": FAKE}}
    d, _ = fedleak.run(cfg, out=tmp_path / "r", progress=False)
    (d / "reconstruction.pt").write_bytes(rec.read_bytes())
    page = report.write_report(d, allow_incomplete=True, out=tmp_path / "page.html").read_text()
    assert "no reconstruction available" in page
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.mkdir [{m}]", "!!python/object/new:os.mkdir [{m}]",
                                 "!!python/name:os.mkdir", "!!python/object:tests.test_safety.Payload {{marker: {m}}}"])
def test_yaml_with_python_tags_is_refused(tmp_path, capsys, tag):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"seed: 1\ndata: {tag.format(m=marker)}\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_config(cfg)
    assert "\n" not in str(e.value)
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedleak: error:") and "\n" not in err
    with pytest.raises(ConfigError):  # and as a --set value
        load_config(base={}, overrides=[f"data={tag.format(m=marker)}"])
    assert not marker.exists() and not (tmp_path / "out").exists()
    try:
        from fedleak.experiment.sweep import load_sweep
    except ImportError:
        return
    (tmp_path / "s.yaml").write_text(f"base: {tag.format(m=marker)}\n")
    with pytest.raises(FedleakError):
        load_sweep(tmp_path / "s.yaml")
    assert not marker.exists()


def test_update_and_enhancer_files_are_safetensors_only(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "update.safetensors"
    evil.write_bytes(pickle.dumps({"w": Payload(marker)}))
    with pytest.raises(DataError, match="not a valid fedleak update"):
        Update.load(evil)
    torch_zip = _evil_torch_file(tmp_path / "u2.safetensors", marker)  # a torch.save file under the wrong name
    with pytest.raises(DataError):
        Update.load(torch_zip)
    try:
        from fedleak.enhance import net as enhancer_net
    except ImportError:
        enhancer_net = None
    if enhancer_net is not None:
        for f in (evil, torch_zip):
            with pytest.raises(FedleakError, match="unreadable"):
                enhancer_net.load(f)
    assert not marker.exists()


def test_no_unsafe_loader_in_the_package():
    """Static audit: every ``torch.load`` passes ``weights_only=True``; no pickle/yaml.load/allow_pickle."""
    problems = []
    for f in sorted(PKG.rglob("*.py")):
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            owner = getattr(fn.value, "id", "") if isinstance(fn, ast.Attribute) else ""
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{f.relative_to(PKG)}:{node.lineno}"
            if owner == "torch" and name == "load":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where} torch.load without weights_only=True")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"):
                problems.append(f"{where} yaml.{name}")
            if owner in ("pickle", "cPickle", "dill", "joblib") and name in ("load", "loads"):
                problems.append(f"{where} {owner}.{name}")
            if "allow_pickle" in kw and not (isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
                problems.append(f"{where} allow_pickle")
    assert problems == []
