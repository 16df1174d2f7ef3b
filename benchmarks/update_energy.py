"""The received update's energy |t|^2 per obfuscation row and batch: why the pixel stage of ``rog-refine`` matches
by ``l2-relative`` (squared L2 over |t|^2), not plain L2.

A prior's weight is only meaningful against the matching loss it is added to. Plain L2 grows with |t|^2, which
changes with the protocol (a FedAvg pseudo-gradient sums several steps), with the quantisation noise and with the
model's training state, so one TV weight is too weak for some updates and too strong for others. This prints
|t|^2 for rows of ``benchmarks/stages.py`` (LeNet, known labels, seed 0; only the client updates are computed,
no attack):

    python benchmarks/update_energy.py                                   # 8 builtin photos, 128x128, batch 8
    python benchmarks/update_energy.py --data ../shared/data/imagenet-val-sample --limit 24
"""
from __future__ import annotations

import argparse

from stages import ROWS  # benchmarks/ is on sys.path when this file runs as a script


def energy(data: str, size: int, batch: int, start: int, row: str, model: str) -> float:
    from fedleak.experiment.case import Case

    protocol, obfuscation = ROWS[row]
    case = Case({"seed": 0, "data": {"source": data, "size": size, "batch_size": batch, "start": start},
                 "model": {"name": model}, "protocol": protocol, "obfuscation": obfuscation, "attack": "rog"})
    return sum(float((t.double() ** 2).sum()) for t in case.client_update().tensors.values())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="builtin")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--limit", type=int, default=8, help="number of images (batches of --batch)")
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--rows", nargs="+", default=["none", "qsgd16", "qsgd4", "fedavg5"], choices=list(ROWS))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    starts = list(range(0, args.limit, args.batch))
    print(f"| row | " + " | ".join(f"batch {i}" for i in range(len(starts))) + " | x none |  "
          f"(|t|^2; {args.data}, {args.size}x{args.size}, batch {args.batch}, {args.model})")
    print("|---|" + "---|" * (len(starts) + 1))
    base = None
    for row in args.rows:
        vals = [energy(args.data, args.size, min(args.batch, args.limit - s), s, row, args.model) for s in starts]
        base = vals if row == "none" else base
        ratio = "" if base is None else f"{sum(vals) / sum(base):.1f}"
        print(f"| {row} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
