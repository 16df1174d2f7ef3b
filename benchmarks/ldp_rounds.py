"""Benchmark for issue 14: the ``ldp-imprint`` attack over R rounds, beside the DP bound on reconstruction success.

    python benchmarks/ldp_rounds.py [DATA_FOLDER] [--rounds 1 10 100] [--levels 1e-3 1e-2 1e-1 1] ...
    python benchmarks/ldp_rounds.py --report experiments/ldp_rounds.json     # tables + plot again

DATA_FOLDER defaults to ``../shared/data/imagenet-val-sample`` (evaluation only, nothing is trained). The images
are split into batches of 8; for every batch, mechanism, noise multiplier z and round count R, one client
(32x32, FedSGD, LeNet with 1000 classes, random init, labels shared) takes part in R rounds on the same batch
(``protocol.rounds = R``, fresh noise each round), the server plants the default ``malicious-imprint``
structure and runs ``ldp-imprint`` on what it received.

Mechanisms (C = 1): ``gaussian`` = ``ldp`` (L2-clip the update, add N(0, (zC)^2)); ``dpsgd`` = per-example
L2 clipping, N(0, (zC)^2) on the sum, / B (q = 1: the batch is the client's data).

Per point: the measured success rate = fraction of images whose matched reconstruction (Hungarian matching on
MSE, ``fedleak.metrics.evaluate``) has SSIM > 0.5, with a 95 % Wilson interval over all images; the total
epsilon of the R rounds (Opacus RDP accountant, delta = 1e-5, participation 1, from the update's stats); and
the DP bound on reconstruction success (``fedleak.metrics.bounds.rounds_success_bound``: mu = sqrt(R) / z GDP,
tight) at baselines kappa = 1/10 and kappa = 1e-3.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "imagenet-val-sample").resolve()
KAPPAS = (0.1, 1e-3)


def obfuscation(mech: str, z: float) -> list[dict]:
    if mech == "gaussian":
        return [{"name": "ldp", "max_norm": 1.0, "noise_multiplier": z}]
    if mech == "dpsgd":
        return [{"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": z}]
    raise ValueError(mech)


def make_case(images, source, size, obf, rounds, seed):
    from fedleak.experiment.case import Case

    cfg = {"seed": seed, "data": {"source": str(source), "size": size, "batch_size": images.images.shape[0]},
           "model": {"name": "lenet", "num_classes": 1000}, "protocol": {"name": "fedsgd", "rounds": rounds},
           "obfuscation": obf, "server": {"name": "malicious-imprint"}, "attack": {"name": "ldp-imprint"}}
    return Case(cfg, images=images)


def wilson(k: int, n: int, zq: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + zq * zq / n
    c = (p + zq * zq / (2 * n)) / den
    h = zq * math.sqrt(p * (1 - p) / n + zq * zq / (4 * n * n)) / den
    return (max(0.0, c - h), min(1.0, c + h))


def run_point(batches, args, mech, z, R) -> dict:
    """All batches at one (mechanism, z, R): counts of recovered images, mean SSIM, sigma estimates, epsilon."""
    from fedleak import metrics as M
    from fedleak.attacks import attack
    from fedleak.metrics.bounds import rounds_success_bound

    hits = n = 0
    ssims, sig1, sigR, eps, secs = [], [], [], None, 0.0
    for images in batches:
        t0 = time.perf_counter()
        case = make_case(images, args.data, args.size, obfuscation(mech, z), R, args.seed)
        up = case.client_update()
        rec = attack("ldp-imprint", case.server_view(), up)
        secs += time.perf_counter() - t0
        per = M.evaluate(case.images, rec)["per_image"]["ssim"]
        hits += sum(1 for s in per if s is not None and s > 0.5)
        n += len(per)
        ssims += [float(s) for s in per]
        eps = up.stats["privacy"]["epsilon"]
        sigR.append(rec.info["noise"]["sigma"])
        sig1.append(rec.info["rounds"].get("sigma_per_round", {}).get("mean", rec.info["noise"]["sigma"]))
    lo, hi = wilson(hits, n)
    return {"mechanism": mech, "z": z, "rounds": R, "epsilon": eps, "images": n, "recovered": hits,
            "success": hits / n, "ci95": [lo, hi], "mean_ssim": sum(ssims) / len(ssims),
            "sigma_round": sum(sig1) / len(sig1), "sigma_combined": sum(sigR) / len(sigR),
            "bound": {str(k): rounds_success_bound(z, R, k) for k in KAPPAS}, "seconds": round(secs, 1)}


def run(args) -> dict:
    from fedleak.client.data import load_images

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Optimal order is")
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), 2-core box shared with other jobs",
            "torch": torch.__version__, "data": str(args.data), "size": args.size, "images": args.images,
            "seed": args.seed, "levels": args.levels, "rounds": args.rounds, "mechanisms": args.mechanisms}
    batches = [load_images(str(args.data), args.size, "crop", s, min(8, args.images - s))
               for s in range(0, args.images, 8)]
    results = {"meta": meta, "rows": []}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    for mech in args.mechanisms:
        for z in args.levels:
            for R in args.rounds:
                row = run_point(batches, args, mech, z, R)
                results["rows"].append(row)
                out.write_text(json.dumps(results, indent=1))  # checkpoint after every point
                print(f"[{time.perf_counter() - t_all:6.0f}s] {mech} z={z:g} R={R} eps={row['epsilon']:.4g} "
                      f"success={row['success']:.3f} ssim={row['mean_ssim']:.3f} "
                      f"sigma {row['sigma_round']:.3g}->{row['sigma_combined']:.3g} bound={row['bound']}", flush=True)
    meta["total_seconds"] = round(time.perf_counter() - t_all, 1)
    out.write_text(json.dumps(results, indent=1))
    return results


def table(results) -> str:
    lines = ["| mechanism | z | R | total epsilon | sigma_hat round / combined | mean SSIM | measured success "
             "(95 % CI) | bound kappa=0.1 | bound kappa=1e-3 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lo, hi = r["ci95"]
        lines.append(f"| {r['mechanism']} | {r['z']:g} | {r['rounds']} | {r['epsilon']:.4g} | "
                     f"{r['sigma_round']:.3g} / {r['sigma_combined']:.3g} | {r['mean_ssim']:.3f} | "
                     f"{r['recovered']}/{r['images']} = {r['success']:.3f} ({lo:.2f}-{hi:.2f}) | "
                     f"{r['bound']['0.1']:.4f} | {r['bound']['0.001']:.4f} |")
    return "\n".join(lines)


def stop_sentences(results) -> list[str]:
    """Per mechanism: the largest total epsilon of the grid with no image recovered, below which nothing is."""
    out = []
    for mech in dict.fromkeys(r["mechanism"] for r in results["rows"]):
        rows = sorted((r for r in results["rows"] if r["mechanism"] == mech), key=lambda r: r["epsilon"])
        hit = [r for r in rows if r["recovered"] > 0]
        first = hit[0] if hit else None
        below = [r for r in rows if first is None or r["epsilon"] < first["epsilon"]]
        top = below[-1] if below else None
        out.append(f"{mech}: no image recovered at any grid point with total epsilon <= "
                   f"{top['epsilon']:.4g} (z={top['z']:g}, R={top['rounds']})" if top else f"{mech}: recovered everywhere")
        if first:
            out[-1] += (f"; the first recovery is at epsilon {first['epsilon']:.4g} (z={first['z']:g}, R={first['rounds']},"
                        f" {first['recovered']}/{first['images']} images)")
    return out


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fedleak.client.privacy import rounds_epsilon
    from fedleak.metrics.bounds import rounds_success_bound

    mechs = list(dict.fromkeys(r["mechanism"] for r in results["rows"]))
    rounds = sorted({r["rounds"] for r in results["rows"]})
    colours = dict(zip(rounds, ["C0", "C1", "C2", "C3", "C4"]))
    fig, axes = plt.subplots(1, len(mechs), figsize=(6 * len(mechs), 4.2), squeeze=False)
    zs = np.logspace(-3.2, 1.3, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ax, mech in zip(axes[0], mechs):
            for R in rounds:
                eps = [rounds_epsilon(float(z), R, 1e-5) for z in zs]
                for k, ls in zip(KAPPAS, ("-", ":")):
                    ax.plot(eps, [rounds_success_bound(float(z), R, k) for z in zs], ls, color=colours[R], lw=1,
                            label=f"bound R={R}, kappa={k:g}")
                pts = [r for r in results["rows"] if r["mechanism"] == mech and r["rounds"] == R]
                e = [r["epsilon"] for r in pts]
                s = [r["success"] for r in pts]
                err = [[r["success"] - r["ci95"][0] for r in pts], [r["ci95"][1] - r["success"] for r in pts]]
                ax.errorbar(e, s, yerr=err, fmt="o", color=colours[R], ms=5, capsize=2, label=f"measured R={R}")
            ax.set_xscale("log")
            ax.set_xlabel("total epsilon of the R rounds (RDP, delta = 1e-5)")
            ax.set_ylabel("success (fraction of images with SSIM > 0.5)")
            ax.set_title(f"{mech}: ldp-imprint vs DP bound")
            ax.set_ylim(-0.03, 1.05)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--images", type=int, default=24, help="evaluation images, in batches of 8")
    ap.add_argument("--levels", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--mechanisms", nargs="+", default=["gaussian", "dpsgd"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(REPO / "experiments" / "ldp_rounds.json"))
    ap.add_argument("--plot", default=str(REPO / "docs" / "ldp_rounds.png"))
    ap.add_argument("--report", default=None, help="only print the tables / plot of this JSON file")
    args = ap.parse_args(argv)
    results = json.loads(Path(args.report).read_text()) if args.report else run(args)
    print(table(results))
    print()
    for s in stop_sentences(results):
        print("*", s)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
