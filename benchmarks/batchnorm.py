"""Which attacks reconstruct through a BatchNorm victim: ``resnet18-cifar`` (BN in train mode, as deployed) at
32x32, FedSGD, known labels, no obfuscation.

    python benchmarks/batchnorm.py                    # the table of docs/results.md (about 10 min on 2 cores)
    python benchmarks/batchnorm.py --iterations 5     # a smoke run
    python benchmarks/batchnorm.py --cases digits:1,photos:1 --iterations 400 \
        --attacks inverting-gradients,inverting-gradients+bn-stats     # a longer budget at batch 1
    python benchmarks/batchnorm.py --model convnet --no-bn --victims init --cases digits:1 \
        --iterations 200 --attacks rog,inverting-gradients               # control: the same ConvNet without BN

Victims: the seeded initialisation (running statistics 0 / 1) and the same network after ``--epochs`` epochs of
``fedleak train-victim`` on the training split of scikit-learn's digits (running statistics of digit features).
Clients (``--cases``): held-out digits (batch 1 and 4) and photos bundled with scikit-image (batch 2). Attacks
(``--attacks``): ``rog`` and ``inverting-gradients`` at ``--iterations``, each with and without the ``bn-stats``
prior (weight ``--bn-weight``; it uses only the running statistics of the model the server sent). Prints a
Markdown table and, with ``--out``, writes the rows as JSON.
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


def victims(model: str, width: float, epochs: int, folder: Path, which: str) -> tuple[dict, dict]:
    """Weights of the seeded initialisation and of the trained snapshot (trained here, on the digits' train split);
    ``which``: ``init,trained`` or one of them. ``init`` alone trains nothing (weights None: the seeded model)."""
    if which == "init":
        return {"init": None}, {"seconds": 0}
    plan = VictimPlan(model=model, data="digits", size=SIZE, epochs=epochs, snapshots=[0, epochs], width=width, seed=0)
    card = train_victim(plan, folder, command="benchmarks/batchnorm.py", log=lambda s: None)
    files = {f"init (acc {card['snapshots'][0]['test_accuracy']:.2f})": folder / card["snapshots"][0]["file"],
             f"trained {epochs} ep (acc {card['snapshots'][-1]['test_accuracy']:.2f})":
                 folder / card["snapshots"][-1]["file"]}
    if which == "trained":
        files = dict(list(files.items())[1:])
    return files, card


def case(weights, model: str, width: float, options: dict, data: str, n: int) -> Case:
    cfg = {"seed": 0, "device": "cpu", "data": {"source": "digits" if data == "digits" else "builtin",
                                               "size": SIZE, "batch_size": n},
           "model": {"name": model, "num_classes": 10, "width": width, "options": options,
                     "weights": None if weights is None else str(weights)}}
    if data == "digits":
        return Case(cfg)
    s = load_builtin(SIZE, count=n)
    return Case(cfg, images=ImageSet(s.images, torch.arange(n) % 10, s.names))


ATTACKS = "rog,rog+bn-stats,inverting-gradients,inverting-gradients+bn-stats"
CASES = "digits:1,digits:4,photos:2"


def attacks(names: str, iterations: int, bn_weight: float) -> list[tuple[str, dict]]:
    """``name`` or ``name+bn-stats`` (comma-separated) -> (row label, attack options)."""
    out = []
    for item in names.split(","):
        name, _, prior = item.strip().partition("+")
        opts = {"name": name, "iterations": iterations, "labels": "known"}
        if prior:
            opts["priors"] = {prior: bn_weight}
        out.append((name + (f" + {prior}" if prior else ""), opts))
    return out


def cases(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        data, _, n = item.strip().partition(":")
        if data not in ("digits", "photos"):
            raise SystemExit(f"--cases: {data!r} is not digits or photos")
        out.append((data, int(n or 1)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--model", default="resnet18-cifar", choices=["resnet18-cifar", "resnet18", "convnet"])
    ap.add_argument("--no-bn", action="store_true", help="convnet without BatchNorm (a control; --victims init)")
    ap.add_argument("--victims", default="init,trained", choices=["init,trained", "init", "trained"])
    ap.add_argument("--width", type=float, default=0.25, help="model width factor (default 0.25)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the trained victim (default 2)")
    ap.add_argument("--bn-weight", type=float, default=0.1, help="weight of the bn-stats prior (default 0.1)")
    ap.add_argument("--cases", default=CASES, help=f"client batches, data:batch (default {CASES})")
    ap.add_argument("--attacks", default=ATTACKS, help=f"attacks, name[+bn-stats] (default {ATTACKS})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.no_bn and (args.model != "convnet" or args.victims != "init"):
        raise SystemExit("--no-bn: only with --model convnet --victims init (train-victim sets no model options)")
    options = {"batchnorm": False} if args.no_bn else {}
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files, card = victims(args.model, args.width, args.epochs, Path(tmp), args.victims)
        print(f"victim {args.model}{' without BN' if args.no_bn else ''} width {args.width}: "
              f"trained {card['seconds']:.0f}s; torch {torch.__version__}, "
              f"{platform.machine()}, {torch.get_num_threads()} thread(s)\n", flush=True)
        print("| victim | client batch | attack | PSNR dB | SSIM | seconds |\n|---|---|---|---|---|---|", flush=True)
        for vname, wfile in files.items():
            for data, n in cases(args.cases):
                c = case(wfile, args.model, args.width, options, data, n)
                view, update = c.server_view(), c.client_update()
                for aname, opts in attacks(args.attacks, args.iterations, args.bn_weight):
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
