"""The README's commands still run as written (issue 15, "What must be shown").

Every command of README.md's fenced shell blocks is extracted (continuation lines joined, comments dropped) and

* **parsed**: a ``fedleak`` command through the real argument parser (and its sub-command's ``--help``), a
  ``python script.py`` by compiling the script, ``scripts/venv-run`` by checking that the wrapper exists;
* **run**, when it is cheap, in a scratch folder (with ``configs/`` linked in), in this process, with tiny
  overrides that only fill in what the command leaves to its config (:data:`TINY`: 16x16 images, 2 images, 2 attack
  iterations, one thread; a key the command sets itself is never overridden);
* or **skipped as expensive**, each with its reason, in :data:`EXPENSIVE` (then only parsed).

A README command that is neither run nor listed as expensive fails the test, so a new command must be
classified here. Placeholders: ``experiments/<run>`` and ``<run-or-sweep>`` are the folders made by the
commands before them, ``DIR`` is a scratch folder of photos with ``labels.csv``, and an optional ``[--flag
value]`` is parsed but not run.
"""
from __future__ import annotations

import os
import py_compile
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fedleak import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: tiny ``--set`` values for ``fedleak run`` and ``fedleak simulate`` (only for keys the command does not set)
TINY = {"data.size": "16", "data.batch_size": "2", "attack.iterations": "2", "threads": "1"}

#: commands not run, with the reason (a command matches when it starts with the key); they are still parsed
#: file names in README commands that stand for a user's captured files (made by :meth:`Runner.captured`)
CAPTURED = ("global.pt", "grads.pt")
EXPENSIVE = {
    "pytest": "the test suite itself (this test is part of it)",
    "python examples/flower_audit.py": "a live Flower simulation of several rounds (tests/test_flower.py runs "
                                       "the audit on the current Flower API)",
    "fedleak train-enhancer": "trains a network: 2000 steps by default, and even 2 steps with the degradation fit "
                              "take 10-25 s on 2 shared cores (tests/test_enhancer.py trains it tiny)",
}
#: optional ``[--flag value]`` variants: parsed only (starting Ray costs more than this whole test)
OPTIONAL_NOT_RUN = "starting a local Ray instance takes 10 s or more; tests/test_sweep.py runs the ray backend"


def shell_commands(text: str) -> list[str]:
    """Each command of the fenced ``bash``/``sh``/``shell``/``console`` blocks, in order (``\\``-continued
    lines joined, ``$`` prompts and comments dropped)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell|console)[^\n]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


def _without_optional(words: list[str]) -> tuple[list[str], list[list[str]]]:
    """``fedleak sweep F [--backend ray]`` -> (``[fedleak, sweep, F]``, ``[[--backend, ray]]``)."""
    plain, optional, cur = [], [], None
    for w in words:
        if w.startswith("[") and cur is None:
            cur = []
            w = w[1:]
        if cur is None:
            plain.append(w)
            continue
        end = w.endswith("]")
        cur.append(w[:-1] if end else w)
        if end:
            optional.append([x for x in cur if x])
            cur = None
    return plain, optional


def _set_keys(words: list[str]) -> set[str]:
    return {words[i + 1].partition("=")[0].strip() for i, w in enumerate(words[:-1]) if w == "--set"}


def _accepts_iterations(words: list[str]) -> bool:
    """Does the attack this ``run`` command resolves to take an ``iterations`` option?"""
    from fedleak.attacks import ATTACKS
    from fedleak.config import load_config

    cfg_path = words[2] if len(words) > 2 and not words[2].startswith("-") else None
    sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set"]
    cfg = load_config(cfg_path, sets)
    model = ATTACKS.options_model(cfg.attack["name"])
    return model is not None and "iterations" in model.model_fields


def _photo_folder(where: Path) -> Path:
    """``DIR``: the eight builtin photos as PNG files with a ``labels.csv``."""
    from PIL import Image

    from fedleak.client.data import load_images

    where.mkdir()
    data = load_images("builtin", 32)
    rows = ["file,label"]
    for i, (img, lab) in enumerate(zip(data.images, data.labels)):
        arr = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
        Image.fromarray(arr).save(where / f"p{i}.png")
        rows.append(f"p{i}.png,{int(lab)}")
    (where / "labels.csv").write_text("\n".join(rows) + "\n")
    return where


class Runner:
    """Runs the README's fedleak commands in a scratch folder, remembering the folders they make."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.runs: list[Path] = []
        self.sweep: Path | None = None
        self.n = 0
        self.renames: dict[str, str] = {}  # file names that a tiny command wrote instead of the README's
        self.sims: list[Path] = []  # folders written by the README's simulate commands

    def placeholders(self, words: list[str]) -> list[str]:
        out = []
        for w in words:
            if "<run>" in w or "<run-or-sweep>" in w:
                assert self.runs, f"{w!r} names a run folder, but no README command before it made one"
                w = str(self.runs[0])
            if "<simulate-folder>" in w:
                assert self.sims, f"{w!r} names a simulate folder, but no README command before it made one"
                w = re.sub(r"[^ ]*<simulate-folder>", str(self.sims[0]), w)
            if w in CAPTURED:
                w = str(self.captured(w))
            if "=DIR" in w:
                w = w.replace("=DIR", f"={self.photos()}")
            for old, new in self.renames.items():
                w = w.replace(old, new)
            out.append(w)
        return out

    def captured(self, name: str) -> Path:
        """``global.pt`` / ``grads.pt``: what plain PyTorch FL code would save for the README's ``fedleak attack``
        example (a seeded LeNet at 32x32 and one image's gradients, both with ``torch.save``)."""
        weights, grads = self.tmp / "global.pt", self.tmp / "grads.pt"
        if not grads.exists():
            import torch

            from fedleak.client.models import build_model

            torch.manual_seed(0)
            model = build_model("lenet", num_classes=1000, image_size=32)
            torch.save(model.state_dict(), weights)
            loss = torch.nn.functional.cross_entropy(model(torch.rand(1, 3, 32, 32)), torch.tensor([3]))
            names = [n for n, _ in model.named_parameters()]
            torch.save(dict(zip(names, torch.autograd.grad(loss, list(model.parameters())))), grads)
        return weights if name == "global.pt" else grads

    def photos(self) -> Path:
        p = self.tmp / "photos"
        return p if p.is_dir() else _photo_folder(p)

    def tiny(self, words: list[str]) -> list[str]:
        """The command with the tiny overrides and a known output folder."""
        cmd = words[1]
        if cmd in ("run", "simulate") and "--resume" not in words:
            have = _set_keys(words)
            for k, v in TINY.items():
                if k not in have and (k != "attack.iterations" or (cmd == "run" and _accepts_iterations(words))):
                    words = [*words, "--set", f"{k}={v}"]
            if "--out" not in words:
                self.n += 1
                out = self.tmp / "experiments" / f"readme-{self.n}"
                words = [*words, "--out", str(out)]
                if cmd == "run":
                    self.runs.append(out)
                else:
                    self.sims.append(out)
        if cmd == "attack":
            if "attack.iterations" not in _set_keys(words):
                words = [*words, "--set", "attack.iterations=2"]
            words = [*words, "--out", str(self.tmp / "experiments" / f"readme-attack-{len(words)}"), "-q"]
        if cmd == "run" and "-q" not in words and "--quiet" not in words:
            words = [*words, "-q"]
        if cmd == "train-victim":  # 5 epochs take 8-80 s: the seeded initial snapshot only (see test_readme)
            words = [w if w != "5" or words[i - 1] != "--epochs" else "0" for i, w in enumerate(words)]
            words = [*words, "--snapshots", "0", "--threads", "1"]
            self.renames["-e5.safetensors"] = "-e0.safetensors"  # the snapshot the next command attacks
        if cmd == "sweep":
            words = self.tiny_sweep(words)
        return words

    def tiny_sweep(self, words: list[str]) -> list[str]:
        """The sweep file with the first two values of each grid key (a 9-cell grid becomes 4 cells; a spawned
        worker and nine runs took 28 s here), every attack at 2 iterations, 16x16 images, into the scratch
        folder."""
        src = Path(words[2])
        spec = yaml.safe_load(src.read_text())
        spec.setdefault("base", {}).setdefault("data", {})["size"] = 16
        for key, values in (spec.get("grid") or {}).items():
            values = values[:2]
            if key == "attack":
                values = [{**(v if isinstance(v, dict) else {"name": v}), "iterations": 2} for v in values]
            spec["grid"][key] = values
        spec["out"] = str(self.tmp / "experiments" / "readme-sweep")
        tiny = self.tmp / f"tiny-{src.name}"
        tiny.write_text(yaml.safe_dump(spec))
        self.sweep = Path(spec["out"])
        return [words[0], words[1], str(tiny), *words[3:], "--workers", "1", "--threads", "1", "-q"]

    def run(self, words: list[str]) -> None:
        words = self.tiny(self.placeholders(words))
        code = cli.main(words[1:])
        assert code == 0, f"README command failed with exit code {code}: {shlex.join(words)}"
        if words[1] == "report" and self.sweep is not None and self.sweep.is_dir():
            assert cli.main(["report", str(self.sweep)]) == 0  # <run-or-sweep>: the sweep folder too


def _parse_fedleak(words: list[str], capsys) -> None:
    parser = cli.build_parser()
    parser.parse_args(words[1:])  # unknown options or a bad value exit here (SystemExit 2)
    with pytest.raises(SystemExit) as e:
        parser.parse_args([words[1], "--help"])
    assert e.value.code == 0
    capsys.readouterr()


def _expensive(cmd: str) -> str | None:
    return next((why for key, why in EXPENSIVE.items() if cmd == key or cmd.startswith(key + " ")), None)


def test_readme_has_commands_and_every_one_is_classified():
    cmds = shell_commands(README.read_text())
    assert len(cmds) >= 10 and any(c.startswith("fedleak run") for c in cmds)
    for c in cmds:
        words = shlex.split(c)
        if words[0] == "scripts/venv-run":
            words = words[1:]
        assert words[0] in ("fedleak", "pytest", "python"), f"unknown kind of README command: {c}"


def test_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """One ordered pass over the README's commands (later ones use the folders of earlier ones)."""
    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / "configs", tmp_path / "configs")
    threads = torch.get_num_threads()
    runner, ran, skipped = Runner(tmp_path), [], []
    try:
        for c in shell_commands(README.read_text()):
            words = shlex.split(c)
            if words[0] == "scripts/venv-run":
                assert os.access(ROOT / "scripts" / "venv-run", os.X_OK), "scripts/venv-run is not executable"
                words = words[1:]
            words, optional = _without_optional(words)
            cmd = shlex.join(words)
            if words[0] == "python":
                py_compile.compile(str(ROOT / words[1]), doraise=True)
            elif words[0] == "fedleak":
                _parse_fedleak(words, capsys)
                for extra in optional:
                    _parse_fedleak([*words, *extra], capsys)
                    skipped.append((shlex.join([*words, *extra]), OPTIONAL_NOT_RUN))
            why = _expensive(cmd)
            if why is not None:
                skipped.append((cmd, why))
                continue
            assert words[0] == "fedleak", f"README command neither run nor listed in EXPENSIVE: {cmd}"
            t0 = time.perf_counter()
            runner.run(words)
            ran.append(cmd)
            print(f"{time.perf_counter() - t0:6.1f}s  {cmd}", file=sys.__stdout__)
            capsys.readouterr()
    finally:
        torch.set_num_threads(threads)
    assert len(ran) >= 8, ran
    assert any(w.startswith("pytest") for w, _ in skipped), skipped
    assert runner.runs and all((d / "COMPLETE").is_file() for d in runner.runs), runner.runs
    assert runner.sweep is not None and (runner.sweep / "report.html").is_file()
