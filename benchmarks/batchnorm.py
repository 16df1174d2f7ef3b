"""Which attacks reconstruct through a BatchNorm victim: ``resnet18-cifar`` (BN in train mode, as deployed) at
32x32, FedSGD, known labels, no obfuscation.

    python benchmarks/batchnorm.py                    # the table of docs/results.md (about 10 min on 2 cores)
    python benchmarks/batchnorm.py --iterations 5     # a smoke run

Victims: the seeded initialisation (running statistics 0 / 1) and the same network after ``--epochs`` epochs of
``fedleak train-victim`` on the training split of scikit-learn's digits (running statistics of digit features).
Clients: held-out digits (batch 1 and 4) and photos bundled with scikit-image (batch 2). Attacks: ``rog`` and
``inverting-gradients`` at ``--iterations``, each with and without the ``bn-stats`` prior (weight ``--bn-weight``;
it uses only the running statistics of the model the server sent). Prints a Markdown table and, with ``--out``,
writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from fedleak.attacks import attack
from fedleak.client.data import ImageSet, load_builtin
from fedleak.experiment.case import Case
from fedleak.experiment.victims import VictimPlan, train_victim
from fedleak.metrics.scores import evaluate

SIZE = 32


def victims(width: float, epochs: int, folder: Path) -> tuple[dict[str, Path], dict]:
    """Weights of the seeded initialisation and of the trained snapshot (trained here, on the digits' train split)."""
    plan = VictimPlan(model="resnet18-cifar", data="digits", size=SIZE, epochs=epochs, snapshots=[0, epochs],
                      width=width, seed=0)
    card = train_victim(plan, folder, command="benchmarks/batchnorm.py", log=lambda s: None)
    files = {f"init (acc {card['snapshots'][0]['test_accuracy']:.2f})": folder / card["snapshots"][0]["file"],
             f"trained {epochs} ep (acc {card['snapshots'][-1]['test_accuracy']:.2f})":
                 folder / card["snapshots"][-1]["file"]}
    return files, card


def case(weights: Path, width: float, data: str, n: int) -> Case:
    cfg = {"seed": 0, "device": "cpu", "data": {"source": "digits" if data == "digits" else "builtin",
                                               "size": SIZE, "batch_size": n},
           "model": {"name": "resnet18-cifar", "num_classes": 10, "width": width, "weights": str(weights)}}
    if data == "digits":
        return Case(cfg)
    s = load_builtin(SIZE, count=n)
    return Case(cfg, images=ImageSet(s.images, torch.arange(n) % 10, s.names))


def attacks(iterations: int, bn_weight: float) -> list[tuple[str, dict]]:
    out = []
    for name in ("rog", "inverting-gradients"):
        base = {"name": name, "iterations": iterations, "labels": "known"}
        out += [(name, base), (f"{name} + bn-stats", {**base, "priors": {"bn-stats": bn_weight}})]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--width", type=float, default=0.25, help="resnet18-cifar width factor (default 0.25)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the trained victim (default 2)")
    ap.add_argument("--bn-weight", type=float, default=0.1, help="weight of the bn-stats prior (default 0.1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files, card = victims(args.width, args.epochs, Path(tmp))
        print(f"victim resnet18-cifar width {args.width}: trained {card['seconds']:.0f}s; torch {torch.__version__}, "
              f"{platform.machine()}, {torch.get_num_threads()} thread(s)\n", flush=True)
        print("| victim | client batch | attack | PSNR dB | SSIM | seconds |\n|---|---|---|---|---|---|", flush=True)
        for vname, wfile in files.items():
            for data, n in (("digits", 1), ("digits", 4), ("photos", 2)):
                c = case(wfile, args.width, data, n)
                view, update = c.server_view(), c.client_update()
                for aname, opts in attacks(args.iterations, args.bn_weight):
                    t0 = time.perf_counter()
                    rec = attack(opts, view, update)
                    m = evaluate(c.images, rec)["mean"]
                    row = {"victim": vname, "data": data, "batch": n, "attack": aname, "psnr": m["psnr"],
                           "ssim": m["ssim"], "seconds": time.perf_counter() - t0, "iterations": args.iterations}
                    rows.append(row)
                    print(f"| {vname} | {data} x{n} | {aname} | {m['psnr']:.2f} | {m['ssim']:.3f} | "
                          f"{row['seconds']:.0f} |", flush=True)
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
