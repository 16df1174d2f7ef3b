"""``fedleak report``: one static HTML page for a run or a sweep, checked by parsing it (html.parser) and,
when Debian's chromium is installed, by rendering it headless."""
import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedleak import cli
from fedleak.errors import FedleakError
from fedleak.report.html import write_report
from fedleak.experiment.runner import run
from fedleak.experiment.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
CFG = {"seed": 1, "threads": 1, "data": {"source": "builtin", "size": 16, "batch_size": 2},
       "model": {"name": "lenet", "num_classes": 1000}, "obfuscation": "qsgd(16)",
       "attack": {"name": "rog", "iterations": 3}}


class Page(HTMLParser):
    """Collects images (with the table/row they sit in), tables' rows and the status banner."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self.status = [], {}, None
        self._table, self._row = None, None
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": a, "cells": []}
            self.tables[self._table].append(self._row)
        elif tag == "img":
            self.images.append({**a, "table": self._table})
        elif tag == "div" and a.get("id") == "status":
            self.status = a.get("data-status")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None and data.strip():
            self._row["cells"].append(data.strip())


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text())
    p.close()
    return p


def decode(src: str, base: Path) -> Image.Image:
    if src.startswith("data:image/png;base64,"):
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
    else:
        data = (base / src).read_bytes()
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d, _ = run(CFG, out=tmp_path_factory.mktemp("report") / "run", progress=False)
    return d


def test_run_report_shows_originals_next_to_reconstructions_with_metrics(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = parse(path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert page.status == "complete"
    rows = [r for r in page.tables["images"] if "data-image" in r["attrs"]]
    assert len(rows) == 2
    for i, r in enumerate(rows):  # index, then PSNR/SSIM/ROG-SSIM/1-HaarPSI, then labels
        assert r["cells"][0] == str(i)
        assert float(r["cells"][1]) == pytest.approx(metrics["raw"]["per_image"]["psnr"][i], abs=0.006)
        assert float(r["cells"][2]) == pytest.approx(metrics["raw"]["per_image"]["ssim"][i], abs=6e-5)
    kinds = [im.get("data-kind") for im in page.images]
    assert kinds.count("original") == 2 and kinds.count("reconstruction") == 2 and kinds.count("loss") == 1
    for im in page.images:
        assert im["src"].startswith("data:image/png;base64,")  # self-contained page
        pic = decode(im["src"], run_dir)
        if im.get("data-kind") in ("original", "reconstruction"):
            assert pic.size == (16, 16)
    # the originals shown are the client's images (reloaded from the config), the reconstructions the saved ones
    from fedleak.client.data import load_builtin

    truth = load_builtin(16, count=2).images
    origs = [torch.tensor(np.asarray(decode(im["src"], run_dir).convert("RGB")), dtype=torch.float32).reshape(-1, 3)
             for im in page.images if im.get("data-kind") == "original"]
    for k, o in enumerate(origs):
        want = (truth[k].permute(1, 2, 0).reshape(-1, 3) * 255 + 0.5).floor()
        assert torch.equal(o, want)
    summary = {r["cells"][0]: r["cells"][1:] for r in page.tables["summary"]}
    assert float(summary["PSNR (dB)"][0]) == pytest.approx(metrics["summary"]["psnr"], abs=0.006)
    assert summary["obfuscation"][0].startswith("qsgd(levels=16")
    assert "iterations: 3" in "".join(page.text)  # the config is on the page


def test_incomplete_run_is_refused_unless_allowed_and_then_flagged(run_dir, tmp_path, capsys):
    d = tmp_path / "partial"
    shutil.copytree(run_dir, d)
    (d / "COMPLETE").unlink()
    (d / "report.html").unlink(missing_ok=True)
    with pytest.raises(FedleakError, match="incomplete.*--allow-incomplete"):
        write_report(d)
    assert cli.main(["report", str(d)]) == 2
    assert "--allow-incomplete" in capsys.readouterr().err and not (d / "report.html").exists()
    assert cli.main(["report", str(d), "--allow-incomplete"]) == 0
    assert capsys.readouterr().out.strip() == str(d / "report.html")
    page = parse(d / "report.html")
    assert page.status == "incomplete" and "INCOMPLETE" in "".join(page.text)
    (d / "reconstruction.pt").unlink()  # nothing to show: still a page, saying so
    page = parse(write_report(d, allow_incomplete=True, out=tmp_path / "x.html"))
    assert "no reconstruction available" in "".join(page.text)


def test_not_a_result_folder(tmp_path):
    with pytest.raises(FedleakError, match="neither a run folder"):
        write_report(tmp_path)
    with pytest.raises(FedleakError, match="not a folder"):
        write_report(tmp_path / "missing")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    spec = {"base": {k: v for k, v in CFG.items() if k != "obfuscation"},
            "grid": {"obfuscation": ["qsgd(4)", "ldp(epsilon=8, mechanism=laplace)"]},
            "cells": [{"data.batch_size": 50}]}
    folder, _ = run_sweep(spec, out=tmp_path_factory.mktemp("report") / "sweep", workers=1, threads=1,
                          progress=False)
    return folder


def test_sweep_report_has_the_table_frontiers_and_cell_grids(sweep_dir):
    page = parse(write_report(sweep_dir))
    assert page.status == "complete"
    rows = [r for r in page.tables["results"] if "data-cell" in r["attrs"]]
    assert [r["attrs"]["data-cell"] for r in rows] == ["c000-s1", "c001-s1", "c002-s1"]  # seeds default to the base's
    assert [r["attrs"]["class"] for r in rows] == ["complete", "complete", "failed"]
    assert any("only 8 images" in c for c in rows[2]["cells"])
    eps = json.loads((sweep_dir / "results.json").read_text())["rows"][1]["epsilon"]
    assert eps == pytest.approx(8.0)
    kinds = [im.get("data-kind") for im in page.images]
    assert kinds.count("frontier") == 1  # PSNR vs bits; one epsilon (one ldp cell) is no frontier: not drawn
    assert not (sweep_dir / "psnr_ssim_vs_epsilon.png").exists() and "see sweep.log" in "".join(page.text)
    assert kinds.count("cell-grid") == 2  # the two complete cells
    for im in page.images:
        assert decode(im["src"], sweep_dir).size[0] > 100
    assert "failed or are incomplete" in "".join(page.text)


def test_unfinished_sweep_is_refused_unless_allowed(sweep_dir, tmp_path):
    d = tmp_path / "running"
    shutil.copytree(sweep_dir, d)
    (d / "COMPLETE").unlink()
    with pytest.raises(FedleakError, match="sweep folder .* incomplete"):
        write_report(d)
    assert parse(write_report(d, allow_incomplete=True)).status == "incomplete"


def _chromium():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def test_chromium_renders_the_reports(run_dir, sweep_dir, tmp_path):
    chrome = _chromium()
    write_report(run_dir)
    write_report(sweep_dir)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chrome, *flags, "--dump-dom", (run_dir / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    page = Page()
    page.feed(dom)
    assert page.status == "complete" and len([i for i in page.images if i.get("data-kind") == "original"]) == 2
    # the documented script: a PNG screenshot of the sweep page that is not blank
    png = tmp_path / "sweep.png"
    out = subprocess.run(["bash", str(REPO / "scripts" / "check_report_chromium.sh"), str(sweep_dir), str(png),
                          "1000x1400"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    with Image.open(png) as im:
        assert im.size == (1000, 1400)
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # text and images drawn, not an empty page


def test_originals_reload_with_the_runs_loader_and_defaults():
    """The page reloads the originals with the run's data loader: a config without data.size means 64 px."""
    from fedleak.config.schema import DataConfig
    from fedleak.experiment.data import load_data
    from fedleak.report.html import _load_originals

    got = _load_originals({"data": {"batch_size": 1, "start": 2}}, 1)
    assert got.images.shape[-1] == DataConfig().size == 64
    assert torch.equal(got.images, load_data(DataConfig(batch_size=1, start=2)).images)
    with pytest.raises(FedleakError, match="data"):
        _load_originals({"data": {"sise": 3}}, 1)
