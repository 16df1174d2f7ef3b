"""Trained victims, made offline: train a registered model on public labelled data and write weight snapshots
with a JSON card, so an audit can attack the model "at round k" instead of a fresh initialisation.

    fedleak train-victim --model lenet --data digits --epochs 5 --snapshots 0,1,5 --out victims/

writes ``victims/lenet-digits32-e0.safetensors`` (the seeded initialisation), ``...-e1``, ``...-e5`` and
``victims/lenet-digits32.json``: data, split, epochs, optimiser, per-snapshot train loss and test accuracy,
file hashes and the command. ``model.weights: victims/lenet-digits32-e5.safetensors`` (with
``model.num_classes: 10``) then attacks that snapshot. BatchNorm layers train in train mode, as deployed.
``device`` (``auto`` | ``cpu`` | ``cuda``, :func:`fedleak.device.resolve_device`) is where the epochs run; the
shuffle is drawn on the CPU, and the snapshots are written from CPU copies.
"""
from __future__ import annotations

import copy
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fedleak.client.models import build_model
from fedleak.client.public_data import load_public
from fedleak.client.weights import save_weights
from fedleak.device import resolve_device
from fedleak.errors import ConfigError
from fedleak.io import write_json


@dataclass
class VictimPlan:
    """What to train: model, data, schedule and when to snapshot."""

    model: str = "lenet"
    data: str = "digits"
    size: int = 32
    epochs: int = 5
    snapshots: list[int] = field(default_factory=lambda: [0, 1, 5])
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    width: float = 1.0
    device: str = "cpu"

    def validate(self) -> "VictimPlan":
        if not isinstance(self.epochs, int) or not 0 <= self.epochs <= 1000:
            raise ConfigError(f"epochs must be an integer in 0..1000, got {self.epochs!r}")
        bad = [s for s in self.snapshots if not isinstance(s, int) or not 0 <= s <= self.epochs]
        if bad or not self.snapshots:
            raise ConfigError(f"snapshots must be epochs between 0 and epochs={self.epochs}, got {self.snapshots!r}")
        if not (self.lr > 0 and self.batch_size >= 1):
            raise ConfigError(f"lr must be > 0 and batch_size >= 1, got lr={self.lr!r}, batch_size={self.batch_size!r}")
        self.snapshots = sorted(set(self.snapshots))
        return self

    @property
    def stem(self) -> str:
        return f"{self.model}-{self.data}{self.size}".replace("/", "_").replace(":", "_")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy in eval mode (BatchNorm uses its running statistics, as at test time)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    model.train(was)
    return hits / max(1, len(y))


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, batch: int,
                gen: torch.Generator) -> float:
    """One epoch of minibatch training in train mode over a seeded shuffle; returns the mean training loss."""
    model.train()
    perm = torch.randperm(len(y), generator=gen)
    total = 0.0
    for i in range(0, len(y), batch):
        idx = perm[i:i + batch]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / max(1, len(y))


def _snapshot(model: nn.Module, plan: VictimPlan, out: Path, epoch: int, loss: Optional[float],
              test: tuple[torch.Tensor, torch.Tensor]) -> dict:
    path = out / f"{plan.stem}-e{epoch}.safetensors"
    acc = accuracy(model, *test)
    on_cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    sha = save_weights(on_cpu, path, metadata={"fedleak_victim": json.dumps({"epoch": epoch, "test_accuracy": acc})})
    return {"epoch": epoch, "file": path.name, "sha256": sha, "train_loss": loss, "test_accuracy": acc}


def train_victim(plan: VictimPlan, out: str | Path, command: Optional[str] = None,
                 log: Callable[[str], None] = print) -> dict:
    """Train ``plan.model`` on ``plan.data`` and write the snapshots and the card into ``out``; returns the card."""
    plan.validate()
    dev = resolve_device(plan.device)  # before anything is written: cuda without CUDA is refused first
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_public(plan.data, "train", plan.size), load_public(plan.data, "test", plan.size)
    n_cls = int(train.labels.max()) + 1
    kwargs = dict(num_classes=n_cls, image_size=plan.size, width=plan.width, seed=plan.seed)
    model = build_model(plan.model, **kwargs).to(dev)
    train_x, train_y = train.images.to(dev), train.labels.to(dev)
    test_xy = (test.images.to(dev), test.labels.to(dev))
    opt = torch.optim.Adam(model.parameters(), lr=plan.lr)
    gen = torch.Generator().manual_seed(plan.seed + 1)
    t0 = time.perf_counter()
    snaps = [_snapshot(model, plan, out, 0, None, test_xy)] if 0 in plan.snapshots else []
    for epoch in range(1, plan.epochs + 1):
        loss = train_epoch(model, opt, train_x, train_y, plan.batch_size, gen)
        if epoch in plan.snapshots:
            snaps.append(_snapshot(model, plan, out, epoch, loss, test_xy))
            log(f"epoch {epoch}/{plan.epochs}: train loss {loss:.4f}, test accuracy {snaps[-1]['test_accuracy']:.3f}")
    card = {
        "model": plan.model, "model_kwargs": kwargs,
        "data": {"name": plan.data, "size": plan.size, "train_images": len(train.labels),
                 "test_images": len(test.labels), "split": "seeded 80/20 (fedleak.client.public_data)"},
        "plan": asdict(plan), "device": str(dev), "snapshots": snaps, "seconds": round(time.perf_counter() - t0, 2),
        "command": command or " ".join(sys.argv), "torch": torch.__version__, "python": platform.python_version(),
    }
    write_json(out / f"{plan.stem}.json", card)
    return card
