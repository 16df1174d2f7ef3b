"""End-to-end tests of ``fedleak run`` (CLI and Python API) on tiny configs."""
import json
import re
import sys

import pytest
import torch
import yaml

import fedleak
from fedleak import cli
from fedleak.experiment import runner
from fedleak.attacks import ATTACKS, Reconstruction
from fedleak.config.schema import load_config
from fedleak.options import Capabilities

FAKE = "test-fake-run"

if FAKE not in ATTACKS:

    from typing import Optional

    from conftest import SeededFakeOptions

    class _FakeOptions(SeededFakeOptions):
        iterations: int = 4
        interrupt_at: Optional[int] = None

    @ATTACKS.register(FAKE, doc="test attack: seeded noise images, optional simulated Ctrl-C",
                      options=_FakeOptions, caps=Capabilities(seeds=True))
    def _fake(view, update, options, callback=None):
        iterations, interrupt_at = options.iterations, options.interrupt_at
        g = torch.Generator().manual_seed(options.seed)
        best = torch.rand(view.batch_size, *view.image_shape, generator=g)
        history, interrupted = [], False
        try:
            for it in range(1, iterations + 1):
                if interrupt_at is not None and it == interrupt_at:
                    raise KeyboardInterrupt
                best = (best + torch.rand(best.shape, generator=g)) / 2
                history.append(1.0 / it)
                if callback:
                    callback({"iteration": it, "iterations": iterations, "loss": history[-1], "elapsed": 0.0})
        except KeyboardInterrupt:
            interrupted = True
        return Reconstruction(images=best, labels=update.labels, loss_history=history,
                              info={"interrupted": interrupted},
                              series={"psnr": [(i + 1, 10.0 + i) for i in range(len(history))]})

REAL = "rog" if "rog" in ATTACKS.names() else None
ATTACK = REAL or FAKE
FILES = ["config.yaml", "metrics.json", "grid.png", "loss.png", "reconstruction.pt", "run.log", "COMPLETE"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # runs set threads=1 from their config; give the process its setting back
    yield
    torch.set_num_threads(n)


def _strict_json(path):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=bad)


def _config(tmp_path, attack=None, **extra):
    cfg = {
        "seed": 5,
        "threads": 1,
        "data": {"source": "builtin", "size": 16, "batch_size": 1},
        "model": {"name": "lenet"},
        "attack": attack or {"name": ATTACK, "iterations": 3},
        "output": {"dir": str(tmp_path / "experiments")},
        **extra,
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_cli_run_writes_complete_run_folder(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "run1"
    assert cli.main(["run", str(cfg), "--out", str(out), "--set", "data.start=1"]) == 0
    captured = capsys.readouterr()
    assert "mean PSNR" in captured.out and str(out) in captured.out
    for f in FILES:
        assert (out / f).is_file(), f
    m = _strict_json(out / "metrics.json")
    assert m["interrupted"] is False and m["seed"] == 5
    assert len(m["raw"]["per_image"]["psnr"]) == 1 and isinstance(m["raw"]["mean"]["ssim"], float)
    for k in ("psnr", "ssim", "ssim_rog", "perceptual"):
        assert k in m["raw"]["mean"] and k in m["summary"]
    assert m["update"]["stats"]["bits"] > 0 and "timing" in m and m["timing"]["total_seconds"] > 0
    assert m["attack"]["iterations_run"] == 3
    assert "enhanced" not in m
    # resolved config: overrides applied, seed recorded, still a valid config
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["data"]["start"] == 1 and resolved["seed"] == 5 and resolved["attack"]["seed"] == 5
    load_config(out / "config.yaml")
    blob = torch.load(out / "reconstruction.pt", weights_only=True)
    assert blob["images"].shape == (1, 3, 16, 16) and blob["loss_history"].numel() == 3
    log = (out / "run.log").read_text()
    assert "attack finished" in log and "mean PSNR" in log


def test_default_folder_name_and_quiet(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert cli.main(["run", str(cfg), "--quiet"]) == 0
    runs = list((tmp_path / "experiments").iterdir())
    assert len(runs) == 1
    assert re.fullmatch(rf"lenet-fedsgd-{ATTACK}-\d{{8}}-\d{{6}}", runs[0].name)
    out, err = capsys.readouterr()
    assert out.strip() == str(runs[0])  # quiet: only the folder
    assert "it/s" not in err  # no progress bar
    assert (runs[0] / "COMPLETE").is_file()


def test_output_name(tmp_path):
    cfg = _config(tmp_path, output={"dir": str(tmp_path / "e"), "name": "mine"})
    assert cli.main(["run", str(cfg), "-q"]) == 0
    assert cli.main(["run", str(cfg), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["mine", "mine-2"]


@pytest.mark.parametrize("args, needle", [
    (["--set", "data.sise=3"], "unknown key"),
    (["--set", "attack.name=nope"], "unknown attack"),
    (["--set", "metrics.foo=1"], "metrics"),
    (["--set", "data.batch_size=0"], "batch_size"),
])
def test_bad_config_exit_2_one_line(tmp_path, capsys, args, needle):
    cfg = _config(tmp_path)
    rc = cli.main(["run", str(cfg), "--out", str(tmp_path / "bad"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("fedleak: error:") and "\n" not in err and needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "bad" / "COMPLETE").exists()


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedleak: error:") and "not found" in err and "\n" not in err


def test_interrupted_run_keeps_folder_without_complete(tmp_path, capsys):
    cfg = _config(tmp_path, attack={"name": FAKE, "iterations": 6, "interrupt_at": 3})
    out = tmp_path / "int"
    out.mkdir()  # an existing, unfinished folder (a complete one is refused: issue 16)
    assert cli.main(["run", str(cfg), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and str(out) in err
    for f in FILES[:-1]:
        assert (out / f).is_file(), f
    assert not (out / "COMPLETE").exists()
    m = _strict_json(out / "metrics.json")
    assert m["interrupted"] is True and m["attack"]["iterations_run"] == 2
    assert "INTERRUPTED" in (out / "run.log").read_text()


@pytest.mark.skipif(REAL is None, reason="real attacks not available")
def test_ctrl_c_inside_real_attack(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised from the progress callback inside the real engine: partial result, 130."""
    orig = runner.Progress.__call__

    def interrupting(self, state):
        orig(self, state)
        if state["iteration"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.Progress, "__call__", interrupting)
    cfg = _config(tmp_path, attack={"name": REAL, "iterations": 50})
    out = tmp_path / "int2"
    assert cli.main(["run", str(cfg), "--out", str(out), "-q"]) == 130
    m = _strict_json(out / "metrics.json")
    assert m["interrupted"] is True and m["attack"]["iterations_run"] < 50
    assert (out / "grid.png").is_file() and not (out / "COMPLETE").exists()


def test_python_api_run(tmp_path):
    cfg = {"seed": 1, "threads": 1, "data": {"size": 16, "batch_size": 2}, "model": {"name": "lenet"},
           "attack": {"name": FAKE, "iterations": 2}, "output": {"dir": str(tmp_path)}}
    run_dir, metrics = fedleak.run(cfg, overrides=["seed=2"], out=tmp_path / "api", progress=False)
    assert run_dir == tmp_path / "api" and (run_dir / "COMPLETE").is_file()
    assert metrics["seed"] == 2 and len(metrics["raw"]["per_image"]["ssim"]) == 2
    # the fake returns the shared labels: all present; slot-wise accuracy follows the image matching
    assert metrics["raw"]["label_set_accuracy"] == 1.0
    perm = metrics["raw"]["permutation"]
    assert metrics["raw"]["label_accuracy"] == (1.0 if perm == [0, 1] else 0.0)
    assert metrics == _strict_json(run_dir / "metrics.json")
    blob = torch.load(run_dir / "reconstruction.pt", weights_only=True)
    assert blob["series_psnr"].shape == (2, 2)


def test_unknown_enhancer_is_config_error(tmp_path, capsys):
    cfg = _config(tmp_path, enhancer={"name": "denoise"})
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "enhancer" in err and "denoise" in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # rejected before any work


def test_enhancer_stage_reports_raw_and_enhanced(tmp_path, monkeypatch):
    import fedleak.enhance

    real, calls = fedleak.enhance.enhance, {}

    def spy(images, view, section, **kw):  # kw: update and rec, for the acceptance test
        calls.update(view=view, section=section)
        return real(images, view, section, **kw)

    monkeypatch.setattr(fedleak.enhance, "enhance", spy)
    cfg = _config(tmp_path, attack={"name": FAKE, "iterations": 2}, enhancer={"name": "Classical", "weight": 0.1})
    out = tmp_path / "enh"
    assert cli.main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    m = _strict_json(out / "metrics.json")
    assert "raw" in m and "enhanced" in m
    assert m["enhanced"]["per_image"]["psnr"] != m["raw"]["per_image"]["psnr"]
    assert "enhanced_psnr" in m["summary"]
    assert calls["section"] == {"name": "classical", "method": "tv", "weight": 0.1, "h": None, "scale": 4,
                                "accept": "layers", "blend": [0.0, 0.25, 0.5, 0.75, 1.0], "margin": 0.0}  # validated once, at the config edge, defaults filled in
    assert not hasattr(calls["view"], "images")  # the enhancer gets the server view, not the case
    assert torch.load(out / "reconstruction.pt", weights_only=True)["enhanced"].shape == (1, 3, 16, 16)


def test_attack_seed_follows_declared_capability(tmp_path):
    """The run seed becomes the attack seed only for attacks that declare ``seeds``; the managed checkpoint
    only for attacks that declare ``checkpoints``."""
    from conftest import GREY_ATTACK

    seeded = load_config(base={"seed": 7, "attack": {"name": FAKE}})
    assert seeded.sections.attack == {"name": FAKE, "seed": 7} and seeded.to_dict()["attack"] == {"name": FAKE}
    assert load_config(base={"seed": 7, "attack": {"name": FAKE, "seed": 1}}).sections.attack["seed"] == 1
    assert "seed" not in load_config(base={"seed": 7, "attack": {"name": GREY_ATTACK}}).sections.attack
    cfg = load_config(base={"seed": 7})
    cfg.seed = 9  # the resolved sections follow an assignment
    assert cfg.sections.attack == {"name": "rog-refine", "seed": 9}
    run_dir, _ = fedleak.run({"seed": 3, "threads": 1, "data": {"size": 16, "batch_size": 1},
                              "attack": {"name": GREY_ATTACK}}, out=tmp_path / "grey", progress=False)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["attack"] == {"name": GREY_ATTACK}
    assert "resuming" not in (run_dir / "run.log").read_text() and not (run_dir / "checkpoint.pt").exists()


def test_check_reuses_the_prepare_stage(tmp_path):
    cfg, attack_opts, _ = runner.check({"seed": 4, "attack": {"name": FAKE, "iterations": 2}})
    assert attack_opts == {"name": FAKE, "iterations": 2, "seed": 4} == cfg.sections.attack
    with pytest.raises(fedleak.ConfigError, match="metrics: psnr_cap"):
        runner.check({"metrics": {"psnr_cap": -1}})
    with pytest.raises(fedleak.ConfigError, match="metrics: match"):
        runner.check({"metrics": {"match": "yes"}})
    assert load_config(base={"metrics": {"psnr_cap": None}}).sections.metrics.evaluate_kwargs() == {
        "psnr_cap": None, "match_order": True}


@pytest.mark.skipif(REAL is None, reason="real attacks not available")
def test_sigint_subprocess(tmp_path):
    """A real Ctrl-C (SIGINT) during a long attack: exit 130, partial results, no COMPLETE."""
    import os
    import signal
    import subprocess
    import time

    cfg = _config(tmp_path, attack={"name": REAL, "iterations": 1_000_000})
    out = tmp_path / "sig"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FEDLEAK_PROGRESS_EVERY": "0.5"}  # stderr is a pipe: plain lines
    proc = subprocess.Popen([sys.executable, "-m", "fedleak", "run", str(cfg), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 40
        # wait until the attack is iterating (the progress bar shows a loss)
        buf = ""
        while time.time() < deadline and "loss=" not in buf:
            ch = proc.stderr.read(1)
            if not ch:
                break
            buf += ch
        assert "loss=" in buf, buf[-2000:]
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)  # writing the partial results can be slow on a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "partial results" in err
    m = _strict_json(out / "metrics.json")
    assert m["interrupted"] is True and 0 < m["attack"]["iterations_run"] < 1_000_000
    assert (out / "grid.png").is_file() and (out / "reconstruction.pt").is_file()
    assert not (out / "COMPLETE").exists()


def test_subject_masks_from_segmenter(tmp_path):
    pytest.importorskip("fedleak.client.segmentation")
    cfg = _config(tmp_path, attack={"name": FAKE, "iterations": 2})
    out = tmp_path / "seg"
    assert cli.main(["run", str(cfg), "--out", str(out), "-q", "--set", "data.segmenter=grabcut"]) == 0
    m = _strict_json(out / "metrics.json")
    assert "psnr_subject" in m["raw"]["mean"] and "ssim_subject" in m["raw"]["per_image"]


def test_plots_wrap_enhanced_and_odd_losses(tmp_path):
    from matplotlib.image import imread

    from fedleak.metrics import plots

    x = torch.rand(10, 3, 8, 8)
    plots.save_grid(x, x.flip(0), tmp_path / "g.png", psnrs=[float(i) for i in range(10)], enhanced=x,
                    enhanced_psnrs=[None] * 10)
    plots.save_grid(x[0], x[1], tmp_path / "one.png")  # a single (C, H, W) image
    img = imread(tmp_path / "g.png")
    assert img.shape[0] > img.shape[1] * 0.5  # 2 blocks x 3 rows
    plots.save_loss([3.0, -1.0, float("nan"), 0.5], tmp_path / "l.png", series={"psnr": [10.0, 11.0]})
    assert plots.save_loss([], tmp_path / "empty.png") is False  # no iterations: no plot (tests/test_logs.py)
    for f in ("g.png", "one.png", "l.png"):
        assert (tmp_path / f).stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    with pytest.raises(ValueError):
        plots.save_grid(x, x[:3], tmp_path / "bad.png")
