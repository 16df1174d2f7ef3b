"""The tiny case of the tests, with the figures printed: one 32x32 photo (scikit-image's astronaut), label 3 of 10,
FedSGD, no obfuscation, each attack with its preset defaults (ROG: 300 iterations).

    python benchmarks/tiny.py

Floors asserted by tests/test_attacks.py: dlg, idlg > 30 dB (on lenet-dlg); inverting-gradients > 20 dB (lenet);
rog within 1 dB of its ceiling (lenet).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from fedleak.attacks import attack
from fedleak.experiment.case import Case
from fedleak.client.data import ImageSet, load_builtin
from fedleak.metrics.scores import psnr


def tiny_case(model: str, activation: str) -> Case:
    s = load_builtin(32, count=1)
    return Case({"data": {"size": 32, "batch_size": 1}, "attack": "rog",
                 "model": {"name": model, "num_classes": 10, "activation": activation}},
                images=ImageSet(s.images, torch.tensor([3]), s.names))


def ceilings(x: torch.Tensor) -> dict:
    out = {}
    for name, aa in (("bicubic", False), ("antialiased bicubic", True)):
        lo = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=aa)
        out[name] = float(psnr(x, F.interpolate(lo, size=x.shape[-2:], mode="bicubic").clamp(0, 1)))
    return out


def main():
    torch.set_num_threads(1)
    rows = [("dlg", "lenet-dlg", "sigmoid", {}), ("idlg", "lenet-dlg", "sigmoid", {}),
            ("inverting-gradients", "lenet", "relu", {}), ("rog", "lenet", "relu", {"iterations": 300})]
    print("| attack | model | PSNR dB | labels | seconds |\n|---|---|---|---|---|")
    for name, model, act, opts in rows:
        case = tiny_case(model, act)
        t0 = time.perf_counter()
        rec = attack(name, case.server_view(), case.client_update(), **opts)
        p = float(psnr(case.images, rec.images))
        print(f"| {name} | {model} ({act}) | {p:.2f} | {rec.labels.tolist()} | {time.perf_counter() - t0:.1f} |",
              flush=True)
    c = ceilings(tiny_case("lenet", "relu").images)
    print("\nROG ceiling (x4 down, bicubic up): " + ", ".join(f"{k} {v:.2f} dB" for k, v in c.items()))


if __name__ == "__main__":
    main()
