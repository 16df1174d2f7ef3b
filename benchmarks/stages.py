"""Multi-stage attacks against their single-stage presets, measured in one process (issue 12, groundwork).

LeNet, FedSGD (FedAvg, 5 local steps at lr 0.003, in row ``fedavg5``), known labels, seed 0, one thread by
default. For each obfuscation row, ``rog`` (its preset budget), ``rog-refine`` and optionally
``inverting-gradients`` at an iteration count giving about the time of ``rog-refine`` are run on every batch of
the images; the table gives mean PSNR / SSIM over the images (scored
outside the attacker), the summed attack wall seconds, the summed CPU seconds of the attacking thread
(``time.thread_time``: with one thread, less sensitive than wall time to other jobs on the machine) and the ratio of
each to ``rog``'s:

    python benchmarks/stages.py                                    # 8 builtin photos, 64x64, batch 4
    python benchmarks/stages.py --data ../shared/data/imagenet-val-sample --limit 24
    python benchmarks/stages.py --refine '{"1": {"lr": 0.02, "tv": 0.001}}'   # stage overrides (tuning)
    python benchmarks/stages.py --ig-iterations 0                  # without inverting-gradients
"""
from __future__ import annotations

import argparse
import json
import time

FEDSGD = {"name": "fedsgd"}
#: row -> (protocol, obfuscation)
ROWS = {
    "none": (FEDSGD, []),
    "qsgd4": (FEDSGD, [{"name": "qsgd", "levels": 4}]),
    "qsgd16": (FEDSGD, [{"name": "qsgd", "levels": 16}]),
    "qsgd8": (FEDSGD, [{"name": "qsgd", "levels": 8}]),
    "topk90": (FEDSGD, [{"name": "topk", "sparsity": 0.9}]),
    "topk99": (FEDSGD, [{"name": "topk", "sparsity": 0.99}]),
    "sign": (FEDSGD, [{"name": "sign"}]),
    "fedavg5": ({"name": "fedavg", "local_steps": 5, "lr": 0.003}, []),
}


def run_attack(name: str, options: dict, args, row: tuple) -> dict:
    import torch

    from fedleak.attacks import attack
    from fedleak.experiment.case import Case
    from fedleak.metrics.scores import psnr, ssim

    protocol, obfuscation = row
    ps, ss, seconds, cpu = [], [], 0.0, 0.0
    for start in range(0, args.limit, args.batch):
        bs = min(args.batch, args.limit - start)
        case = Case({"seed": args.seed, "threads": args.threads,
                     "data": {"source": args.data, "size": args.size, "batch_size": bs, "start": start},
                     "model": {"name": "lenet"}, "protocol": protocol, "obfuscation": obfuscation,
                     "attack": {"name": name}})
        view, update = case.server_view(), case.client_update()
        t0, c0 = time.perf_counter(), time.thread_time()
        rec = attack(name, view, update, seed=args.seed, threads=args.threads, **options)
        seconds += time.perf_counter() - t0
        cpu += time.thread_time() - c0
        with torch.no_grad():
            ps.extend(float(v) for v in psnr(rec.images, case.images).reshape(-1))
            ss.extend(float(v) for v in ssim(rec.images, case.images).reshape(-1))
    return {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "seconds": seconds, "cpu": cpu, "images": len(ps)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="builtin")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--limit", type=int, default=8, help="number of images (batches of --batch)")
    ap.add_argument("--rows", nargs="+", default=["none", "qsgd4"], choices=sorted(ROWS))
    ap.add_argument("--refine", default="{}", help="JSON stage overrides of rog-refine, e.g. '{\"1\": {\"lr\": 0.02}}'")
    ap.add_argument("--ig-iterations", type=int, default=-1,
                    help="inverting-gradients iterations (-1: rog-refine's total iterations, 0: leave it out)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    from fedleak.attacks.presets import STAGED_OPTIONS

    torch.set_num_threads(args.threads)
    refine = {"stages": json.loads(args.refine)} if json.loads(args.refine) else {}
    total = sum(c.iterations for c in STAGED_OPTIONS["rog-refine"](**refine).stage_configs())
    ig_its = total if args.ig_iterations < 0 else args.ig_iterations
    attacks = [("rog", {}), ("rog-refine", refine)]
    if ig_its:
        attacks.append(("inverting-gradients", {"iterations": ig_its}))
    print(f"| preset | obfuscation | PSNR | SSIM | seconds | x rog | CPU seconds | CPU x rog |  ({args.limit} images, "
          f"{args.size}x{args.size}, "
          f"batch {args.batch}, {args.threads} thread(s), data {args.data}, rog-refine {json.dumps(refine)})")
    print("|---|---|---|---|---|---|---|---|")
    for row in args.rows:
        base = None
        for name, opts in attacks:
            r = run_attack(name, opts, args, ROWS[row])
            base = r if name == "rog" else base
            label = f"{name} ({ig_its} it)" if name == "inverting-gradients" else name
            print(f"| {label} | {row} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds']:.1f} | "
                  f"{r['seconds'] / base['seconds']:.2f} | {r['cpu']:.1f} | {r['cpu'] / base['cpu']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
