"""Issue 15, items 3 and 4: quiet, honest logs and outputs.

Non-terminal progress is one plain line per interval; a sweep logs cells done/total with elapsed and ETA;
library warnings land in run.log, not on the console; ``fedleak --version``; the plain-words band beside every
epsilon; degenerate plots are not drawn (and ldp and dpsgd epsilons never share a line); the report of a
one-shot readout shows what it recovered instead of "attack iterations 0 of" and an empty loss panel.
"""
from __future__ import annotations

import io
import json
import math
import time
import warnings
from pathlib import Path

import pytest
import torch

import fedleak
from fedleak import cli, progress
from fedleak.errors import ConfigError
from fedleak.metrics import plots, privacy_words

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # runs set threads=1 from their config; give the process its setting back
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ progress
class _Clock:
    """A fake ``time.time`` that the test advances by hand."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_non_tty_progress_is_one_plain_line_per_interval(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "time", clock)
    out = io.StringIO()  # not a terminal
    bar = progress.Bar(100, "rog", file=out, every=5.0)
    assert bar.mode == "lines"
    for i in range(1, 101):  # 100 updates, one second apart: a line every 5 s, never one per update
        clock.t += 1.0
        bar.set(i, postfix={"loss": f"{1.0 / i:.3g}"})
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and bar.lines == 20  # t = 5, 10, ..., 100 s; the last one is already at 100/100
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("rog: 5/100 it (5%)") and "elapsed 5s" in lines[0] and "ETA 1m35s" in lines[0]
    assert lines[-1].startswith("rog: 100/100 it (100%)") and "ETA" not in lines[-1] and "loss=0.01" in lines[-1]


def test_progress_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.EVERY_ENV, "0.5")
    assert progress.every_seconds() == 0.5
    assert progress.every_seconds(3) == 3.0  # an explicit interval wins
    monkeypatch.delenv(progress.EVERY_ENV)
    assert progress.every_seconds() == progress.DEFAULT_EVERY
    monkeypatch.setenv(progress.EVERY_ENV, "soon")
    with pytest.raises(ConfigError, match="FEDLEAK_PROGRESS_EVERY"):
        progress.every_seconds()


def test_short_job_writes_one_final_line_and_a_terminal_gets_a_bar(monkeypatch):
    out = io.StringIO()
    bar = progress.Bar(3, "train-enhancer", unit="step", file=out, every=60)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert out.getvalue().splitlines() == [out.getvalue().strip()] and "3/3 step" in out.getvalue()

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = progress.Bar(3, "rog", file=tty)
    assert bar.mode == "bar"
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()  # tqdm's redrawn bar


def test_attack_progress_through_the_run_uses_plain_lines(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(progress.EVERY_ENV, "0")  # a line at every callback: 3 iterations -> 3 lines
    cfg = {"seed": 0, "threads": 1, "data": {"source": "builtin", "size": 16, "batch_size": 1},
           "model": {"name": "lenet"}, "attack": {"name": "rog", "iterations": 3}}
    fedleak.run(cfg, out=tmp_path / "r", progress=True)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("rog: ")]
    assert "\r" not in err and [ln.split(" it")[0] for ln in lines] == ["rog: 1/3", "rog: 2/3", "rog: 3/3"]


def test_api_progress_only_in_a_notebook_unless_asked(monkeypatch, capfd):
    case = fedleak.Case({"seed": 0, "threads": 1, "data": {"source": "builtin", "size": 16, "batch_size": 1},
                         "model": {"name": "lenet"}})
    upd, view = case.client_update(), case.server_view()
    monkeypatch.setenv(progress.EVERY_ENV, "0")
    fedleak.attack("rog", view, upd, iterations=2)
    assert "rog: " not in capfd.readouterr().err  # a library call in a script stays silent
    fedleak.attack("rog", view, upd, iterations=2, progress=True)
    assert "rog: 2/2 it" in capfd.readouterr().err
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    assert progress.wants_progress(None) and progress.display_mode() == "notebook"
    assert not progress.wants_progress(False)


# --------------------------------------------------------------------------------------- sweep ETA
def test_sweep_logs_cells_done_elapsed_and_eta(tmp_path, monkeypatch, capfd):
    from fedleak.experiment import sweep as sw

    def fake_local(tasks, workers, threads, on_done, log):
        for t in tasks:
            time.sleep(0.05)
            on_done({**sw.failed_row(t["id"], t["cell_overrides"], t["seed"], t["attack"], "", "complete"),
                     "psnr": 10.0, "seconds": 0.05})

    monkeypatch.setattr(sw, "_local_backend", fake_local)
    spec = {"base": {"data": {"source": "builtin", "size": 16, "batch_size": 1}, "model": {"name": "lenet"},
                     "attack": {"name": "rog"}},
            "grid": {"attack.iterations": [1, 2, 3]}}
    sw.run_sweep(spec, out=tmp_path / "s", workers=1)
    err = [ln for ln in capfd.readouterr().err.splitlines() if "] c00" in ln]
    assert [ln.split("]")[0].split("[")[-1] for ln in err] == ["1/3", "2/3", "3/3"]
    assert all("elapsed " in ln for ln in err)
    assert "ETA " in err[0] and "ETA " in err[1] and "ETA " not in err[2]  # nothing left after the last
    assert sum("ETA" in ln for ln in (tmp_path / "s" / "sweep.log").read_text().splitlines()) == 2


# ------------------------------------------------------------------------------ warnings -> run.log
def test_library_warnings_land_in_run_log_not_on_the_console(tmp_path, capfd):
    # ldp with noise multiplier 0.01: Opacus warns "Optimal order is the smallest alpha" (a UserWarning)
    cfg = {"seed": 0, "threads": 1, "data": {"source": "builtin", "size": 16, "batch_size": 1},
           "model": {"name": "lenet"}, "obfuscation": "ldp(max_norm=1, noise_multiplier=0.01)",
           "attack": {"name": "rog", "iterations": 1}}
    d, _ = fedleak.run(cfg, out=tmp_path / "r", progress=False)
    captured = capfd.readouterr()
    assert "UserWarning" not in captured.err and "Optimal order" not in captured.err
    log = (d / "run.log").read_text()
    assert "warning: UserWarning: Optimal order is the smallest alpha" in log
    # the capture ends with the run: warnings outside it are Python's again
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        warnings.warn("after the run", UserWarning)
    assert [str(w.message) for w in got] == ["after the run"]


def test_capture_keeps_the_warning_filters_and_library_log_records():
    import logging

    from fedleak.experiment.rundir import bind_warnings, capture_warnings

    lines: list[str] = []

    @capture_warnings
    def job():
        warnings.warn("held until the log is bound", UserWarning)
        bind_warnings(lines.append)
        for _ in range(3):  # the same warning from the same place, again and again: written once
            warnings.warn("a library note", UserWarning)
        logging.getLogger("somelib").warning("a logged warning")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(UserWarning):
                warnings.warn("an error filter still raises", UserWarning)

    job()
    assert [ln.split(" (")[0] for ln in lines] == ["warning: UserWarning: held until the log is bound",
                                                   "warning: UserWarning: a library note",
                                                   "log warning from somelib: a logged warning"]
    assert not any(isinstance(h, logging.Handler) and type(h).__name__ == "_WarningSink"
                   for h in logging.getLogger().handlers)


# ------------------------------------------------------------------------------------------ version
def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedleak {fedleak.__version__}"


# -------------------------------------------------------------------------------------- epsilon band
@pytest.mark.parametrize("eps, words", [(0.5, "strong"), (1.0, "strong"), (1.01, "moderate"), (8, "moderate"),
                                        (10, "moderate"), (15, "weak"), (20, "weak"),
                                        (20.5, "no meaningful protection"), (5612, "no meaningful protection"),
                                        (math.inf, "no meaningful protection"), (math.nan, None), (None, None),
                                        ("8", None), (True, None)])
def test_epsilon_plain_words_band(eps, words):
    assert privacy_words.protection(eps) == words


def test_band_threshold_and_relation_words():
    assert privacy_words.NO_PROTECTION_ABOVE == 20.0
    assert privacy_words.protection(privacy_words.NO_PROTECTION_ABOVE) == "weak"
    assert privacy_words.describe(5612.3, "ldp") == "5612 (no meaningful protection; update-level: one client's whole update)"
    assert privacy_words.describe(8.0, "dpsgd") == "8 (moderate; example-level: one training example)"
    assert privacy_words.describe(None) == ""


def test_epsilon_band_in_summary_metrics_json_and_report(tmp_path):
    from fedleak.experiment.runner import summary_lines
    from fedleak.report.html import write_report

    cfg = {"seed": 0, "threads": 1, "data": {"source": "builtin", "size": 16, "batch_size": 1},
           "model": {"name": "lenet"}, "obfuscation": "ldp(max_norm=1, noise_multiplier=0.01)",
           "attack": {"name": "rog", "iterations": 2}}
    d, m = fedleak.run(cfg, out=tmp_path / "r", progress=False)
    assert m["summary"]["epsilon"] > 20 and m["summary"]["epsilon_protection"] == "no meaningful protection"
    assert json.loads((d / "metrics.json").read_text())["summary"]["epsilon_protection"] == "no meaningful protection"
    line = next(ln for ln in summary_lines(d, m) if ln.startswith("privacy: epsilon"))
    assert "(no meaningful protection; update-level" in line
    assert "(no meaningful protection" in (d / "run.log").read_text()
    page = write_report(d).read_text()
    assert 'data-protection="no meaningful protection"' in page and "update-level" in page


# ----------------------------------------------------------------------------------- degenerate plots
def _row(cell, attack, bits, psnr, eps=None, dp=None, status="complete"):
    from fedleak.experiment.sweep import COLUMNS

    r = {c: None for c in COLUMNS}
    r.update(cell=cell, overrides="x=1", seed=0, attack=attack, bits_per_param=bits, epsilon=eps, dp=dp, psnr=psnr,
             ssim=0.5, status=status, error="")
    return r


def test_degenerate_frontiers_are_not_drawn(tmp_path):
    (tmp_path / "psnr_vs_bits.png").write_bytes(b"stale")
    log: list[str] = []
    # every cell at 32 bits (DP cells): no bits frontier; one point: no plot either
    rows = [_row("c0", "rog", 32.0, 10.0, eps=1.0, dp="ldp"), _row("c1", "rog", 32.0, 12.0, eps=8.0, dp="ldp")]
    written = plots.save_frontiers(rows, tmp_path, log.append)
    assert [p.name for p in written] == ["psnr_ssim_vs_epsilon.png"]
    assert not (tmp_path / "psnr_vs_bits.png").exists()  # the stale plot is gone too
    assert any("psnr_vs_bits.png not drawn: every series has a single bits-per-parameter value (32)" in ln
               for ln in log)
    assert plots.save_frontiers([_row("c0", "rog", 4.0, 10.0, eps=3.0, dp="dpsgd")], tmp_path, log.append) == []
    assert not list(tmp_path.glob("*.png"))


def test_ldp_and_dpsgd_never_share_an_epsilon_line(tmp_path):
    rows = [_row("c0", "rog", 32.0, 10.0, eps=1.0, dp="ldp"), _row("c1", "rog", 32.0, 11.0, eps=8.0, dp="dpsgd")]
    ser = plots.frontier_series(rows, "epsilon", "psnr", by_relation=True)
    assert sorted(ser) == ["rog, dpsgd (example-level: one training example)",
                           "rog, ldp (update-level: one client's whole update)"]
    assert not plots.frontier_drawable(ser)  # one epsilon per relation: no line to draw
    assert plots.save_frontiers(rows, tmp_path) == []
    rows += [_row("c2", "rog", 32.0, 12.0, eps=4.0, dp="ldp")]
    assert [p.name for p in plots.save_frontiers(rows, tmp_path)] == ["psnr_ssim_vs_epsilon.png"]
    ser = plots.frontier_series(rows, "epsilon", "psnr", by_relation=True)
    assert [len(v[2]) for v in ser.values()] == [1, 2]  # dpsgd alone, ldp's two epsilons on their own line


def test_loss_plot_needs_two_finite_values(tmp_path):
    p = tmp_path / "loss.png"
    p.write_bytes(b"stale")
    assert plots.save_loss([], p) is False and not p.exists()
    assert plots.save_loss([1.0, math.nan], p) is False and not p.exists()
    assert plots.save_loss([1.0, 0.5], p) is True and p.read_bytes()[:4] == b"\x89PNG"


# -------------------------------------------------------------------------- one-shot attack's report
def test_report_of_a_one_shot_readout_shows_what_it_recovered(tmp_path):
    from fedleak.report.html import write_report

    cfg = {"seed": 0, "threads": 1, "data": {"source": "builtin", "size": 16, "batch_size": 2},
           "model": {"name": "lenet"}, "obfuscation": "ldp(max_norm=1, noise_multiplier=0.01)",
           "server": {"name": "malicious-imprint", "bins": 32, "layout": "window", "probes": 4,
                      "downstream_scale": 0.001},
           "attack": {"name": "ldp-imprint"}}
    d, m = fedleak.run(cfg, out=tmp_path / "r", progress=False)
    assert m["attack"]["iterations_run"] == 0 and not (d / "loss.png").exists()
    page = write_report(d).read_text()
    assert "attack iterations" not in page and " of None" not in page and "Matching loss" not in page
    assert "one-shot readout" in page and "images read out" in page
    assert f"{m['attack']['info']['returned']} of 2" in page
