"""Attack variants on one row of a folder, over several attack seeds: the tool for tuning a preset on public photos.

Each variant is a JSON mapping of attack options (``{}``: the preset as it is), passed to
:func:`fedleak.attacks.attack` for every batch of the folder and every seed. The cases (images, model, update) are
built once per batch with seed 0, so the variants differ only in the attack. Scores are computed outside the
attacker. One line per variant and seed: mean PSNR dB / SSIM, the attack's thread CPU seconds, and the PSNR of
each image. ``lenet``, FedSGD or FedAvg as in ``benchmarks/stages.py``'s rows, 1 thread:

    python benchmarks/tuning_set.py /tmp/tune16
    python benchmarks/variants.py --data /tmp/tune16 --row topk99 --seeds 0,1 '{}' \\
        '{"stages": {"0": {"input_weight": 0.0}}}'

Tune on public folders only (``benchmarks/tuning_set.py``, with ``--second`` for a check), never on the evaluation
photos in ``../shared``.
"""
from __future__ import annotations

import argparse
import json
import time


def cases(args):
    """(case, server view, update) for each batch of the folder."""
    from stages import ROWS

    from fedleak.experiment.case import Case

    protocol, obfuscation = ROWS[args.row]
    out = []
    for start in range(0, args.limit, args.batch):
        case = Case({"seed": 0, "threads": 1, "model": {"name": "lenet"}, "protocol": protocol,
                     "obfuscation": obfuscation, "attack": {"name": args.attack},
                     "data": {"source": args.data, "size": args.size, "batch_size": min(args.batch, args.limit - start),
                              "start": start}})
        out.append((case, case.server_view(), case.client_update()))
    return out


def run(args, batches, options: dict, seed: int) -> tuple[list[float], list[float], float]:
    """Per-image PSNR and SSIM over all batches, and the attack's CPU seconds."""
    import torch

    from fedleak.attacks import attack
    from fedleak.metrics.scores import psnr, ssim

    ps, ss, cpu = [], [], 0.0
    for case, view, update in batches:
        c0 = time.thread_time()
        rec = attack(args.attack, view, update, seed=seed, threads=1, **options)
        cpu += time.thread_time() - c0
        with torch.no_grad():
            ps += [float(v) for v in psnr(rec.images, case.images).reshape(-1)]
            ss += [float(v) for v in ssim(rec.images, case.images).reshape(-1)]
    return ps, ss, cpu


def main(argv=None) -> None:
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="an image folder with labels.csv (a public one)")
    ap.add_argument("--row", default="none", help="a row of benchmarks/stages.py: none, qsgd4, topk99, ...")
    ap.add_argument("--attack", default="rog-refine")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--seeds", default="0", help="attack seeds, comma-separated")
    ap.add_argument("variants", nargs="+", help="JSON attack options, one mapping per variant ('{}': the preset)")
    args = ap.parse_args(argv)
    variants = [json.loads(v) for v in args.variants]  # all parsed before the first attack runs

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    torch.set_num_threads(1)
    batches = cases(args)
    for text, options in zip(args.variants, variants):
        for seed in (int(s) for s in args.seeds.split(",")):
            ps, ss, cpu = run(args, batches, options, seed)
            print(f"{args.row} seed {seed} {text}: {sum(ps) / len(ps):.2f} / {sum(ss) / len(ss):.3f} cpu {cpu:.0f}s  "
                  "per-image " + " ".join(f"{p:.1f}" for p in ps), flush=True)


if __name__ == "__main__":
    main()
