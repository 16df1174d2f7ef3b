"""Issue 14, part 3: total epsilon and the DP bound on reconstruction success, per (mechanism, z, rounds).

    python benchmarks/bounds.py [--plot docs/ldp_bound.png]

Pure math (Opacus RDP accountant + closed forms), a few seconds. Mechanisms (C = 1, delta = 1e-5):
  gaussian     -- fedleak's `ldp` step: one Gaussian release of the clipped update per round (q = 1);
  dpsgd        -- `dpsgd` as in benchmarks/ldp.py: batch = the client's 8 images (q = 1), one step per round;
  dpsgd q=0.01 -- `dpsgd` with a local dataset of 800 images, batch 8, one step per round (subsampled).
Bounds: kappa = 1/10 (identify the client's image among 10 equally likely candidates) and kappa = 1e-3
(stated image prior: chance that a guess made without the update has SSIM > 0.5 with the client's image).
"""
from __future__ import annotations

import argparse
import math
import warnings

from fedleak.client.privacy import rounds_epsilon
from fedleak.metrics.bounds import gdp_mu, rounds_success_bound

DELTA, KAPPAS, ROUNDS, LEVELS = 1e-5, (0.1, 1e-3), (1, 10, 100), (1e-3, 1e-2, 1e-1, 1.0)
MECHANISMS = {"gaussian": 1.0, "dpsgd": 1.0, "dpsgd q=0.01": 0.01}


def z_for_bound(target: float, rounds: int, kappa: float, q: float) -> float:
    """Smallest z (bisection on log z) whose bound is <= target."""
    lo, hi = -6.0, 4.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rounds_success_bound(10 ** mid, rounds, kappa, sample_rate=q) > target else (lo, mid)
    return 10 ** hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", default=None, help="write bound vs epsilon to this PNG")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print("| mechanism | R | z | total epsilon (RDP, delta=1e-5) | mu (GDP, q=1) | bound kappa=0.1 | bound kappa=1e-3 |")
    print("|---|---|---|---|---|---|---|")
    for mech, q in MECHANISMS.items():
        for r in ROUNDS:
            for z in LEVELS:
                eps = rounds_epsilon(z, r, DELTA, sample_rate=q)
                mu = f"{gdp_mu(z, r):.4g}" if q == 1 else "-"
                b = [rounds_success_bound(z, r, k, sample_rate=q) for k in KAPPAS]
                print(f"| {mech} | {r} | {z:g} | {eps:.4g} | {mu} | {b[0]:.4f} | {b[1]:.4f} |")
    print("\nLargest total epsilon at which the DP guarantee caps success at 0.5 (z found by bisection):\n")
    print("| mechanism | R | kappa | z | total epsilon |")
    print("|---|---|---|---|---|")
    for mech, q in MECHANISMS.items():
        for r in ROUNDS:
            for k in KAPPAS:
                z = z_for_bound(0.5, r, k, q)
                print(f"| {mech} | {r} | {k:g} | {z:.4g} | {rounds_epsilon(z, r, DELTA, sample_rate=q):.4g} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        zs = [10 ** (-3 + 4 * i / 80) for i in range(81)]
        for mech, q in (("gaussian / dpsgd q=1", 1.0), ("dpsgd q=0.01", 0.01)):
            for r in (1, 100):
                for k, ls in zip(KAPPAS, ("-", "--")):
                    eps = [rounds_epsilon(z, r, DELTA, sample_rate=q) for z in zs]
                    ax.plot(eps, [rounds_success_bound(z, r, k, sample_rate=q) for z in zs], ls,
                            label=f"{mech}, R={r}, kappa={k:g}")
        ax.set_xscale("log")
        ax.set_xlabel("total epsilon (Opacus RDP, delta = 1e-5)")
        ax.set_ylabel("bound on reconstruction success")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
