"""Benchmark for issue 5: reconstruction attacks against clipped + noised (LDP / DP-SGD) FedSGD updates.

    python benchmarks/ldp.py [DATA_FOLDER] [--sizes 32 64] [--levels 0 1e-3 1e-2 1e-1 1] ...

DATA_FOLDER defaults to ``../shared/data/imagenet-val-sample`` relative to the repository. For every image
size, noise mechanism and noise multiplier z, one client (batch 8, FedSGD, LeNet, 1000 classes, labels
shared) computes its update, and these attacks run on what the server receives:

* ``ldp-imprint``            -- the server plants the ``malicious-imprint`` structure (defaults) and denoises;
* ``imprint (same struct.)`` -- plain Robbing-the-Fed readout of the *same* planted structure (ablation:
                                 the attack-side denoising alone);
* ``imprint (RtF struct.)``  -- plain readout of a Robbing-the-Fed-style structure (nested cumulative
                                 bins, no centring, model untouched: ``layout=nested, two_sided=false,
                                 centre=false, downstream_scale=1, bias_boost=0``);
* ``inverting-gradients``, ``rog`` -- gradient matching on the update of the *honest* model (no structure),
                                 at the presets' iteration budgets unless ``--ig-iterations`` /
                                 ``--rog-iterations`` say otherwise (0 skips them, e.g. for a fine z grid).

Mechanisms: ``gaussian`` = ``ldp`` (clip the update's L2 norm to C = 1, add N(0, (zC)^2)); ``laplace`` =
``ldp(mechanism=laplace)`` (clip the L1 norm to C, add Laplace(b = zC)); ``dpsgd`` = per-example clipping to
C = 1 + N(0, (zC)^2) on the sum, / B. z = 0 means: L2 clipping only (gaussian row; the laplace row is then
skipped), per-example clipping only (dpsgd). epsilon is the Opacus accountant's value for one round (delta =
1e-5; sample rate 1) as reported by the obfuscation; Laplace: epsilon = 1 / z (pure DP).

Metrics (``fedleak.metrics.evaluate``, Hungarian matching on MSE): mean PSNR, SSIM, subject-region PSNR (GrabCut
masks of the true images, evaluation only) and the fraction of images recovered (matched SSIM > 0.5).
Writes a JSON file with every number, prints Markdown tables and the bar check, and plots SSIM vs z.
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
RTF_STRUCTURE = {"layout": "nested", "two_sided": False, "centre": False, "downstream_scale": 1.0, "bias_boost": 0}
ATTACK_NAMES = ["ldp-imprint", "imprint (same struct.)", "imprint (RtF struct.)", "inverting-gradients", "rog"]
BASELINES = ATTACK_NAMES[1:]


def obfuscation(mech: str, z: float) -> list[dict]:
    if mech == "gaussian":
        return [{"name": "clip", "max_norm": 1.0}] if z == 0 else [{"name": "ldp", "max_norm": 1.0, "noise_multiplier": z}]
    if mech == "laplace":
        return [{"name": "ldp", "max_norm": 1.0, "noise_multiplier": z, "mechanism": "laplace"}]
    if mech == "dpsgd":
        return [{"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": z}]
    raise ValueError(mech)


def make_case(images, source, size, obf, server, seed):
    from fedleak.experiment.case import Case

    cfg = {
        "seed": seed,
        "data": {"source": str(source), "size": size, "batch_size": images.images.shape[0]},
        "model": {"name": "lenet", "num_classes": 1000},
        "protocol": {"name": "fedsgd"},
        "obfuscation": obf,
        "server": server,
        "attack": {"name": "ldp-imprint"},
    }
    # the images are passed in (loaded once); data.source names their folder, so the server's public data
    # (scikit-image photos) may include the builtin photos, which are not evaluation images here
    return Case(cfg, images=images)


def score(case, rec, masks) -> dict:
    from fedleak import metrics as M

    ev = M.evaluate(case.images, rec, masks=masks)
    ssim = ev["per_image"]["ssim"]
    return {
        "psnr": ev["mean"]["psnr"],
        "ssim": ev["mean"]["ssim"],
        "psnr_subject": ev["mean"].get("psnr_subject"),
        "ssim_subject": ev["mean"].get("ssim_subject"),
        "recovered_fraction": sum(1 for s in ssim if s is not None and s > 0.5) / len(ssim),
    }


def run(args) -> dict:
    from fedleak.attacks import attack
    from fedleak.client.data import load_images
    from fedleak.client.segmentation import masks as seg_masks

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
    results = {"rows": [], "structure": {}, "meta": {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": "2-core CPU container", "torch": torch.__version__, "python": platform.python_version(),
        "threads": args.threads, "data": str(args.data), "batch": args.batch, "start": args.start,
        "ig_iterations": args.ig_iterations, "rog_iterations": args.rog_iterations, "seed": args.seed,
        "levels": args.levels, "mechanisms": args.mechanisms, "sizes": args.sizes,
        "rtf_structure": RTF_STRUCTURE}}
    done = {}
    out = Path(args.json)
    if args.resume and out.is_file():  # keep finished rows of an interrupted run with the same settings
        old = json.loads(out.read_text())
        same = all(old.get("meta", {}).get(k) == results["meta"][k]
                   for k in ("data", "batch", "start", "ig_iterations", "rog_iterations", "seed"))
        if same:
            done = {(r["size"], r["mechanism"], r["z"]): r for r in old.get("rows", [])}
            results["structure"] = {int(k): v for k, v in old.get("structure", {}).items()}
            print(f"resuming: {len(done)} finished row(s) from {out}", flush=True)
    t_all = time.perf_counter()
    for size in args.sizes:
        images = load_images(str(args.data), size, "crop", args.start, args.batch)
        masks = seg_masks(images.images, "grabcut")
        for mech in args.mechanisms:
            for z in args.levels:
                if mech == "laplace" and z == 0:
                    continue  # no noise: identical in kind to the gaussian z = 0 row (clipping only)
                if (size, mech, z) in done:
                    results["rows"].append(done[(size, mech, z)])
                    continue
                obf = obfuscation(mech, z)
                row = {"size": size, "mechanism": mech, "z": z, "attacks": {}, "seconds": {}}
                # malicious server, our structure
                mal = make_case(images, args.data, size, obf, {"name": "malicious-imprint"}, args.seed)
                up = mal.client_update()
                priv = up.stats.get("privacy")
                row["epsilon"] = priv["epsilon"] if priv else math.inf
                row["delta"] = priv["delta"] if priv else None
                if size not in results["structure"]:
                    results["structure"][size] = mal.scenario_metrics()["imprint_report"]
                view = mal.server_view()
                for name, att in (("ldp-imprint", "ldp-imprint"), ("imprint (same struct.)", "imprint")):
                    t0 = time.perf_counter()
                    rec = attack(att, view, up)
                    row["seconds"][name] = round(time.perf_counter() - t0, 2)
                    row["attacks"][name] = score(mal, rec, masks)
                    if name == "ldp-imprint":
                        row["noise_estimate"] = {k: rec.info["noise"][k] for k in ("sigma", "distribution")}
                        row["ldp_imprint_recovered"] = rec.info["recovered"]
                # Robbing-the-Fed-style structure, plain readout
                rtf = make_case(images, args.data, size, obf, {"name": "malicious-imprint", **RTF_STRUCTURE}, args.seed)
                t0 = time.perf_counter()
                rec = attack("imprint", rtf.server_view(), rtf.client_update())
                row["seconds"]["imprint (RtF struct.)"] = round(time.perf_counter() - t0, 2)
                row["attacks"]["imprint (RtF struct.)"] = score(rtf, rec, masks)
                # honest server: gradient matching
                hon = make_case(images, args.data, size, obf, {"name": "honest"}, args.seed)
                hup, hview = hon.client_update(), hon.server_view()
                for name, its in (("inverting-gradients", args.ig_iterations), ("rog", args.rog_iterations)):
                    if its is not None and its <= 0:
                        continue
                    t0 = time.perf_counter()
                    rec = attack({"name": name, **({"iterations": its} if its else {})}, hview, hup)
                    row["seconds"][name] = round(time.perf_counter() - t0, 2)
                    row["attacks"][name] = score(hon, rec, masks)
                results["rows"].append(row)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1, default=str))  # checkpoint after every row
                ssims = " ".join(f"{k}={v['ssim']:.3f}" for k, v in row["attacks"].items())
                print(f"[{time.perf_counter() - t_all:6.0f}s] {size}px {mech} z={z:g} eps={row['epsilon']:.4g} "
                      f"sigma_hat={row['noise_estimate']['sigma']:.3g} {ssims}", flush=True)
    results["meta"]["total_seconds"] = round(time.perf_counter() - t_all, 1)
    return results


def fall_level(rows, name, threshold=0.5):
    """Smallest z of the grid where the mean SSIM is below the threshold (inf: never within the grid)."""
    for r in sorted(rows, key=lambda r: r["z"]):
        a = r["attacks"].get(name)
        if a is not None and a["ssim"] < threshold:
            return r["z"]
    return math.inf


def bar_check(results) -> list[dict]:
    out = []
    groups = {}
    for r in results["rows"]:
        groups.setdefault((r["size"], r["mechanism"]), []).append(r)
    for (size, mech), rows in groups.items():
        present = [b for b in BASELINES if any(b in r["attacks"] for r in rows)]
        beats = {}
        for b in present:
            beats[b] = all(r["attacks"]["ldp-imprint"]["ssim"] > r["attacks"][b]["ssim"]
                           and r["attacks"]["ldp-imprint"]["psnr"] > r["attacks"][b]["psnr"]
                           for r in rows if r["z"] > 0 and b in r["attacks"])
        ours = fall_level(rows, "ldp-imprint")
        falls = {b: fall_level(rows, b) for b in present}
        best = max(falls.values()) if falls else 0.0
        if best == 0:
            ratio_ok = ours > 0
        elif math.isinf(best):
            ratio_ok = False
        else:
            ratio_ok = ours >= 10 * best * (1 - 1e-9)
        ratio_rtf = {b: (ours >= 10 * f * (1 - 1e-9)) if f > 0 and not math.isinf(f) else (ours > 0 if f == 0 else False)
                     for b, f in falls.items()}
        out.append({"size": size, "mechanism": mech, "beats_every_baseline_at_nonzero_z": all(beats.values()),
                    "beats": beats, "fall_ldp_imprint": ours, "fall_baselines": falls,
                    "fall_best_baseline": best, "ten_x_vs_best_baseline": ratio_ok, "ten_x_vs_each": ratio_rtf})
    return out


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{nd}f}"


def markdown(results, bars) -> str:
    lines = []
    for size in results["meta"]["sizes"]:
        for mech in results["meta"]["mechanisms"]:
            rows = [r for r in results["rows"] if r["size"] == size and r["mechanism"] == mech]
            if not rows:
                continue
            lines.append(f"\n#### {size}x{size}, {mech}\n")
            lines.append("| z | epsilon | sigma_hat | attack | PSNR | SSIM | subject PSNR | recovered (SSIM>0.5) |")
            lines.append("|---|---|---|---|---|---|---|---|")
            for r in rows:
                eps = "inf" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.4g}"
                for i, (name, a) in enumerate(r["attacks"].items()):
                    head = f"| {r['z']:g} | {eps} | {r['noise_estimate']['sigma']:.3g} |" if i == 0 else "| | | |"
                    lines.append(f"{head} {name} | {fmt(a['psnr'])} | {fmt(a['ssim'], 3)} | {fmt(a['psnr_subject'])} | "
                                 f"{a['recovered_fraction']:.2f} |")
    lines.append("\n#### Bar check\n")
    lines.append("| size | mechanism | beats every baseline (SSIM and PSNR) at every z > 0 | SSIM < 0.5 from z = (ldp-imprint) | "
                 "from z = (each baseline) | >= 10x the best baseline |")
    lines.append("|---|---|---|---|---|---|")
    for b in bars:
        fb = ", ".join(f"{k}: {v:g}" for k, v in b["fall_baselines"].items())
        lost = [k for k, v in b["beats"].items() if not v]
        lines.append(f"| {b['size']} | {b['mechanism']} | {'yes' if b['beats_every_baseline_at_nonzero_z'] else 'no (' + ', '.join(lost) + ')'} | "
                     f"{b['fall_ldp_imprint']:g} | {fb} | {'yes' if b['ten_x_vs_best_baseline'] else 'no'} |")
    return "\n".join(lines)


def true_std(mech: str, z: float, batch: int) -> float:
    """Noise std per entry of what the server receives (C = 1)."""
    return {"gaussian": z, "laplace": math.sqrt(2) * z, "dpsgd": z / batch}[mech]


def compact(results, bars) -> str:
    """One table per size: for every mechanism and z, PSNR / SSIM / subject PSNR / recovered per attack."""
    lines = []
    batch = results["meta"]["batch"]
    for size in results["meta"]["sizes"]:
        lines.append(f"\n**{size}x{size}** -- each cell: PSNR dB / SSIM / subject PSNR dB / recovered fraction\n")
        lines.append("| mechanism | z | epsilon | sigma_hat (true) | " + " | ".join(ATTACK_NAMES) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(ATTACK_NAMES))
        for r in results["rows"]:
            if r["size"] != size:
                continue
            eps = "inf" if math.isinf(float(r["epsilon"])) else f"{float(r['epsilon']):.4g}"
            sig = f"{r['noise_estimate']['sigma']:.3g} ({true_std(r['mechanism'], r['z'], batch):.3g})"
            cells = []
            for name in ATTACK_NAMES:
                a = r["attacks"].get(name)
                cells.append("-" if a is None else
                             f"{fmt(a['psnr'], 1)} / {fmt(a['ssim'], 3)} / {fmt(a['psnr_subject'], 1)} / {a['recovered_fraction']:.2f}")
            lines.append(f"| {r['mechanism']} | {r['z']:g} | {eps} | {sig} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, mechs = results["meta"]["sizes"], results["meta"]["mechanisms"]
    fig, axes = plt.subplots(len(sizes), len(mechs), figsize=(4.2 * len(mechs), 3.4 * len(sizes)), squeeze=False,
                             sharey=True)
    levels = results["meta"]["levels"]
    styles = {"ldp-imprint": ("C3", "o", 2.5), "imprint (same struct.)": ("C1", "s", 1.2),
              "imprint (RtF struct.)": ("C4", "v", 1.2), "inverting-gradients": ("C0", "^", 1.2), "rog": ("C2", "D", 1.2)}
    for i, size in enumerate(sizes):
        for j, mech in enumerate(mechs):
            ax = axes[i][j]
            rows = [r for r in results["rows"] if r["size"] == size and r["mechanism"] == mech]
            for name in ATTACK_NAMES:
                pts = [(levels.index(r["z"]), r["attacks"][name]["ssim"]) for r in rows if name in r["attacks"]]
                if pts:
                    c, m, lw = styles[name]
                    ax.plot(*zip(*pts), marker=m, color=c, lw=lw, label=name)
            ax.axhline(0.5, ls="--", color="grey", lw=0.8)
            ax.set_xticks(range(len(levels)))
            ax.set_xticklabels([f"{z:g}" for z in levels])
            ax.set_title(f"{size}x{size}, {mech}")
            ax.set_xlabel("noise multiplier z (C = 1)")
            if j == 0:
                ax.set_ylabel("mean SSIM (batch 8)")
            ax.set_ylim(-0.05, 1.02)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Reconstruction under local DP / DP-SGD (ImageNet val sample, LeNet, FedSGD)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="image folder (default: %(default)s)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 1e-3, 1e-2, 1e-1, 1.0])
    p.add_argument("--mechanisms", nargs="+", default=["gaussian", "laplace", "dpsgd"],
                   choices=["gaussian", "laplace", "dpsgd"])
    p.add_argument("--ig-iterations", type=int, default=None, help="default: the preset's (1000); 0 skips the attack")
    p.add_argument("--rog-iterations", type=int, default=None, help="default: the preset's (100); 0 skips the attack")
    p.add_argument("--resume", action="store_true", help="reuse finished rows from --json (same settings)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(REPO / "experiments" / "ldp_benchmark.json"))
    p.add_argument("--plot", default=str(REPO / "docs" / "ldp_curve.png"))
    p.add_argument("--report", metavar="JSON", help="only print the tables (and re-plot) from a finished run")
    args = p.parse_args(argv)
    args.data = Path(args.data)
    if args.report:
        results = json.loads(Path(args.report).read_text())
        for r in results["rows"]:
            r["epsilon"] = float(r["epsilon"])
        bars = bar_check(results)
        plot(results, Path(args.plot))
        print(compact(results, bars))
        print(markdown(results, bars).split("#### Bar check")[1])
        return 0
    results = run(args)
    bars = bar_check(results)
    results["bar"] = bars
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    plot(results, Path(args.plot))
    print(markdown(results, bars))
    print(f"\nstructure report per size: {json.dumps(results['structure'], indent=1)}")
    print(f"total {results['meta']['total_seconds']} s; wrote {out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
