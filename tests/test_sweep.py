"""``fedleak sweep``: the sweep file, cell plan, results table, resume, failures, and the local and Ray
backends (same seeds -> the same table)."""
import csv
import importlib.util
import io
import json
import warnings

import pytest
import yaml
from PIL import Image

from fedleak import cli
from fedleak.config.schema import parse_value
from fedleak.errors import ConfigError, FedleakError
from fedleak.experiment.sweep import COLUMNS, flow, load_sweep, plot_frontiers, run_sweep, table_csv, table_markdown

BASE = {
    "data": {"source": "builtin", "size": 16, "batch_size": 1},
    "model": {"name": "lenet", "num_classes": 1000},
    "attack": {"name": "rog", "iterations": 3},
}
# 2 x 2 grid (QSGD levels x attacks) + a cell that cannot run (8 builtin photos, 20 asked for) = 5 cells
SPEC = {
    "base": BASE,
    "grid": {"obfuscation": ["qsgd(2)", "qsgd(16)"], "attack.name": ["rog", "inverting-gradients"]},
    "cells": [{"data.batch_size": 20}],
    "seeds": [3],
}


# ------------------------------------------------------------------------------------ the sweep file
@pytest.mark.parametrize("value", ["rog", "qsgd(2)", "2", "true", "a: b", 3, 0.25, 1e-5, True, None, [1, 2],
                                   {"name": "rog", "iterations": 5}, [{"name": "qsgd", "levels": 4}], "",
                                   "x=y", "-1"])
def test_flow_values_round_trip_through_set(value):
    text = flow(value)
    assert "\n" not in text
    assert parse_value(text) == value


def test_grid_is_a_cartesian_product_first_key_slowest(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**SPEC, "seeds": [0, 1], "set": ["attack.iterations=2"]}, sort_keys=False))
    sw = load_sweep(p)
    assert [c.id for c in sw.cells] == [f"c00{i}-s{s}" for i in range(5) for s in (0, 1)]
    assert [c.overrides for c in sw.cells[::2]] == [
        ["obfuscation=qsgd(2)", "attack.name=rog"], ["obfuscation=qsgd(2)", "attack.name=inverting-gradients"],
        ["obfuscation=qsgd(16)", "attack.name=rog"], ["obfuscation=qsgd(16)", "attack.name=inverting-gradients"],
        ["data.batch_size=20"]]
    assert sw.run_overrides(sw.cells[1]) == ["attack.iterations=2", "obfuscation=qsgd(2)", "attack.name=rog", "seed=1"]
    assert sw.base == BASE and sw.base_source == "inline"


def test_base_path_relative_to_the_sweep_file_and_list_cells(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "sub" / "s.yaml").write_text(yaml.safe_dump(
        {"base": "base.yaml", "cells": [["attack.iterations=1"], {"attack": {"name": "idlg", "iterations": 1}}]},
        sort_keys=False))
    monkeypatch.chdir(tmp_path)
    sw = load_sweep("sub/s.yaml")
    assert sw.base == BASE
    assert [c.overrides for c in sw.cells] == [["attack.iterations=1"], ["attack={name: idlg, iterations: 1}"]]
    assert [c.seed for c in sw.cells] == [0, 0]  # the base config's seed (default 0)


@pytest.mark.parametrize("spec, msg", [
    ({"bogus": 1}, "unknown key"),
    ({"grid": {"seed": [1, 2]}}, "seeds"),
    ({"cells": [{"seed": 3}]}, "seeds"),
    ({"set": ["seed=3"]}, "seeds"),
    ({"grid": {"attack.name": []}}, "non-empty list"),
    ({"grid": {"attack.name": "rog"}}, "non-empty list"),
    ({"cells": [42]}, "mapping of overrides"),
    ({"cells": [["attack.name"]]}, "key=value"),
    ({"seeds": [1, 1]}, "duplicates"),
    ({"seeds": [-1]}, "non-negative"),
    ({"base": "missing.yaml"}, "not found"),
    ({"workers": 0}, "positive integer"),
])
def test_bad_sweep_files_are_one_line_config_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        load_sweep(spec)


# ---------------------------------------------------------------------------------- tables and plots
def _row(cell, attack, bits, psnr, eps=None, status="complete"):
    r = {c: None for c in COLUMNS}
    r.update(cell=cell, overrides="x=1", seed=0, attack=attack, bits_per_param=bits, epsilon=eps, psnr=psnr,
             ssim=0.5, ssim_rog=0.6, perceptual=0.4, label_acc=1.0, status=status, error="")
    return r


def test_tables_list_every_column_and_parse_back():
    rows = [_row("c000-s0", "rog", 2.0, 12.3456789), _row("c001-s0", "idlg", 5.0, None, status="failed")]
    rows[1]["error"] = "ConfigError: a | b"
    back = list(csv.DictReader(io.StringIO(table_csv(rows))))
    assert list(back[0]) == COLUMNS and len(back) == 2
    assert float(back[0]["psnr"]) == pytest.approx(12.3456789) and back[1]["psnr"] == ""
    md = table_markdown(rows).splitlines()
    assert len(md) == 4 and "| c000-s0 |" in md[2] and "12.35" in md[2]
    assert "a \\| b" in md[3]  # pipes in errors do not break the Markdown table


def test_frontier_plots_bits_always_epsilon_only_when_present(tmp_path):
    rows = [_row("c0", "rog", 2.0, 10.0), _row("c1", "rog", 5.0, 12.0), _row("c2", "idlg", 2.0, 9.0)]
    assert [p.name for p in plot_frontiers(rows, tmp_path)] == ["psnr_vs_bits.png"]
    assert not (tmp_path / "psnr_ssim_vs_epsilon.png").exists()
    rows += [_row("c3", "rog", 32.0, 8.0, eps=1.0), _row("c4", "rog", 32.0, 11.0, eps=8.0)]
    written = plot_frontiers(rows, tmp_path)
    assert [p.name for p in written] == ["psnr_vs_bits.png", "psnr_ssim_vs_epsilon.png"]
    for p in written:
        with Image.open(p) as im:
            im.verify()


# ------------------------------------------------------------------------------ running (real runs)
def _read(folder):
    return (folder / "results.csv").read_text(), json.loads((folder / "results.json").read_text())["rows"]


def _check_table(folder):
    text, rows = _read(folder)
    assert [r["cell"] for r in rows] == ["c000-s3", "c001-s3", "c002-s3", "c003-s3", "c004-s3"]
    ok, bad = rows[:4], rows[4]
    assert all(r["status"] == "complete" and r["error"] == "" for r in ok)
    assert [r["attack"] for r in ok] == ["rog", "inverting-gradients"] * 2
    assert all(r["seed"] == 3 and r["psnr"] > 0 and -1 <= r["ssim"] <= 1 and r["label_acc"] == 1.0 for r in ok)
    # QSGD: 2 levels -> 2-bit codes, 16 levels -> 5-bit codes (+ one float per tensor)
    assert [round(r["bits_per_param"]) for r in ok] == [2, 2, 5, 5]
    assert bad["status"] == "failed" and "only 8 images" in bad["error"] and bad["psnr"] is None
    for r in ok:
        d = folder / "cells" / r["cell"]
        assert (d / "COMPLETE").is_file() and (d / "metrics.json").is_file() and (d / "grid.png").is_file()
        assert json.loads((d / "metrics.json").read_text())["seed"] == 3
    assert not (folder / "cells" / "c004-s3" / "COMPLETE").exists()
    assert "only 8 images" in (folder / "cells" / "c004-s3" / "error.txt").read_text()
    assert (folder / "psnr_vs_bits.png").is_file() and (folder / "COMPLETE").is_file()
    assert "seconds" not in text and "timing" not in text
    return text


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep") / "local"
    run_sweep(SPEC, out=folder, backend="local", workers=2, threads=1, progress=False)
    return folder


def test_local_sweep_records_every_cell_and_the_failure(local_sweep):
    _check_table(local_sweep)


def test_resume_skips_finished_cells_and_reruns_incomplete_or_changed(local_sweep, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(local_sweep, folder)
    before = _read(folder)[0]
    # c001: incomplete (marker gone); c002: finished but for a different request (changed base config)
    (folder / "cells" / "c001-s3" / "COMPLETE").unlink()
    req = json.loads((folder / "cells" / "c002-s3" / "cell.json").read_text())
    req["request"]["overrides"][-1] = "seed=4"
    (folder / "cells" / "c002-s3" / "cell.json").write_text(json.dumps(req))
    stamp = {c: (folder / "cells" / c / "metrics.json").stat().st_mtime_ns for c in ("c000-s3", "c003-s3")}
    run_sweep(SPEC, out=folder, backend="local", workers=1, threads=1, progress=False)  # same torch threads as before
    log = (folder / "sweep.log").read_text()
    assert "resuming: 2 finished cell(s) skipped, 3 to run" in log  # c001, c002 and the failed c004
    assert stamp == {c: (folder / "cells" / c / "metrics.json").stat().st_mtime_ns for c in stamp}
    assert (folder / "cells" / "c001-s3" / "COMPLETE").is_file()
    assert _read(folder)[0] == before  # same seeds (and thread count), same table
    assert json.loads((folder / "cells" / "c001-s3" / "cell.json").read_text())["threads"] == 1


def test_ray_backend_gives_the_same_table(local_sweep, tmp_path):
    ray = pytest.importorskip("ray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's note about accelerator env vars
        ray.init(num_cpus=1, include_dashboard=False, logging_level="warning")
    try:
        run_sweep(SPEC, out=tmp_path / "ray", backend="ray", workers=2, threads=1, progress=False)
    finally:
        ray.shutdown()
    assert _check_table(tmp_path / "ray") == _read(local_sweep)[0]


def test_ray_backend_missing_says_how_to_install(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"base": BASE}))
    assert cli.main(["sweep", str(p), "--backend", "ray", "--out", str(tmp_path / "o")]) == 2
    assert "pip install fedleak[ray]" in capsys.readouterr().err
    with pytest.raises(FedleakError, match=r"fedleak\[ray\]"):
        run_sweep({"base": BASE}, out=tmp_path / "o2", backend="ray")


def test_cli_sweep_prints_the_table_and_exits_1_when_a_cell_failed(tmp_path, capsys):
    # both cells fail while the sweep is planned (bad config), so no worker is started; the sweep goes on
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"base": BASE, "grid": {"attack.name": ["no-such-attack", "rog"]},
                                 "set": ["attack.iterations=-5"]}, sort_keys=False))
    out = tmp_path / "o"
    assert cli.main(["sweep", str(p), "--out", str(out), "--workers", "2"]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("| cell | overrides | seed |") and f"sweep folder: {out.resolve()}" in printed
    rows = _read(out)[1]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "no-such-attack" in rows[0]["error"] and "iterations" in rows[1]["error"]
    assert (out / "results.md").read_text().count("| failed |") == 2 and (out / "COMPLETE").is_file()
    assert cli.main(["sweep", str(p), "--out", str(out), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
