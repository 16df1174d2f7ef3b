"""Tune the ``classical`` enhancer's parameter on attack outputs of TRAINING crops (never evaluation images).

    .venv/bin/python scripts/tune_classical.py /tmp/h4/pairs.pt [--method tv|nlm]

Reads a pair cache made by ``fedleak train-enhancer --pairs`` (``rog`` outputs on random crops of the
scikit-image / scikit-learn photos), scores the classical enhancer for a grid of TV weights (or NLM ``h``)
and prints mean PSNR / SSIM per value, overall and per obfuscation. The chosen default is written into
``fedleak/enhance/stage.py`` by hand (CLASSICAL_TV_WEIGHT / CLASSICAL_NLM_H).
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pairs")
    ap.add_argument("--method", choices=["tv", "nlm"], default="tv")
    ap.add_argument("--grid", default=None, help="comma-separated values")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from fedleak.enhance.stage import classical
    from fedleak.enhance.data import load_pairs
    from fedleak.metrics.scores import psnr, ssim

    blob = load_pairs(args.pairs)
    x = torch.cat([b["inputs"].float() for b in blob["batches"]])
    y = torch.cat([b["targets"].float() for b in blob["batches"]])
    obf = [b["obf"] for b in blob["batches"] for _ in range(b["inputs"].shape[0])]
    grid = [float(v) for v in args.grid.split(",")] if args.grid else (
        [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12] if args.method == "tv" else [0.0, 0.02, 0.04, 0.06, 0.08, 0.12])
    names = sorted(set(obf))
    print(f"{len(x)} training pairs: " + ", ".join(f"{n} {obf.count(n)}" for n in names))
    print(f"{'value':>7} {'PSNR':>7} {'SSIM':>7} | " + " | ".join(f"{n:>14}" for n in names))
    print(f"{'raw':>7} {psnr(y, x).mean():7.3f} {ssim(y, x).mean():7.4f}")
    for v in grid:
        kw = {"weight": v} if args.method == "tv" else {"h": v}
        out = classical(x, 4, args.method, **kw)
        p, s = psnr(y, out), ssim(y, out)
        per = []
        for n in names:
            m = torch.tensor([o == n for o in obf])
            per.append(f"{p[m].mean():6.2f}/{s[m].mean():.3f}")
        print(f"{v:7.3f} {p.mean():7.3f} {s.mean():7.4f} | " + " | ".join(f"{q:>14}" for q in per), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
