"""Reconstruction quality on the ROG code's published setting.

LeNet (ROG's), 128x128 (resized without cropping), batch 16, 100 ROG iterations, seed 0; the evaluation images
are a folder with labels.csv (default ../shared/data/imagenet-val-sample: 24 images -> batches of 16 and 8).
Means are over all images. Each row is one obfuscation / label / matching setting:

    python benchmarks/quality.py                         # all rows, writes docs/quality.json + prints Markdown
    python benchmarks/quality.py --rows none qsgd16      # some rows
    python benchmarks/quality.py --iterations 20 --limit 8 --size 64   # a quick look

The bar of the original code (ROG's BN-free ResNet-18, 128x128, batch 1, first image, 100 iterations, 2 threads):

    python benchmarks/quality.py --model resnet18-rog --batch 1 --limit 1 --sign-iterations 100 \
        --rows none qsgd16 qsgd4 topk90 topk99 sign fedavg5 --json docs/bar_rog.json
    python benchmarks/quality.py --model resnet18-rog --batch 1 --limit 1 --attack inverting-gradients \
        --iterations 200 --rows none --json docs/bar_ig.json

Results are cached per row (and per batch) in --cache, so an interrupted run resumes; the reconstructions are
kept there too (``<row>-b<i>.pt``: images, true images, labels) so post-processing can be scored later
without re-running attacks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROWS: dict[str, dict] = {
    "none": {},
    "qsgd16": {"obfuscation": [{"name": "qsgd", "levels": 16}]},
    "qsgd4": {"obfuscation": [{"name": "qsgd", "levels": 4}]},
    "topk90": {"obfuscation": [{"name": "topk", "sparsity": 0.9}]},
    "topk99": {"obfuscation": [{"name": "topk", "sparsity": 0.99}]},
    "sign": {"obfuscation": [{"name": "sign"}]},
    "fedavg5": {"protocol": {"name": "fedavg", "local_steps": 5, "lr": 0.003}},
    # recovered labels instead of known ones
    "none-llg": {"attack": {"labels": "llg"}},
    "qsgd16-llg": {"obfuscation": [{"name": "qsgd", "levels": 16}], "attack": {"labels": "llg"}},
    "qsgd4-llg": {"obfuscation": [{"name": "qsgd", "levels": 4}], "attack": {"labels": "llg"}},
    "topk90-llg": {"obfuscation": [{"name": "topk", "sparsity": 0.9}], "attack": {"labels": "llg"}},
    "topk99-llg": {"obfuscation": [{"name": "topk", "sparsity": 0.99}], "attack": {"labels": "llg"}},
    "sign-llg": {"obfuscation": [{"name": "sign"}], "attack": {"labels": "llg"}},
    "fedavg5-llg": {"protocol": {"name": "fedavg", "local_steps": 5, "lr": 0.003}, "attack": {"labels": "llg"}},
    # plain (obfuscation-unaware) matching, as the original ROG code
    "topk99-plain": {"obfuscation": [{"name": "topk", "sparsity": 0.99}], "attack": {"aware": "none"}},
    "sign-plain": {"obfuscation": [{"name": "sign"}], "attack": {"aware": "none"}},
}


def base_config(args) -> dict:
    return {
        "seed": args.seed,
        "data": {"source": str(args.data), "size": args.size, "resize": "stretch"},
        "model": {"name": args.model, "num_classes": 1000},
        "protocol": {"name": "fedsgd"},
        "obfuscation": [],
        "attack": {"name": args.attack, "seed": args.seed, **json.loads(args.options),
                   **({"iterations": args.iterations} if args.iterations else {}),
                   **({"precision": args.precision} if args.precision else {})},
    }


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_row(name: str, args, n_images: int) -> dict:
    import torch

    from fedleak.attacks import attack
    from fedleak.experiment.case import Case
    from fedleak.metrics.scores import evaluate

    cfg = merge(base_config(args), ROWS[name])
    if any(s.get("name") == "sign" for s in cfg["obfuscation"]) and args.sign_iterations:
        cfg["attack"]["iterations"] = args.sign_iterations
    per_image: dict[str, list] = {}
    seconds = 0.0
    its = 0
    for b, start in enumerate(range(0, n_images, args.batch)):
        bs = min(args.batch, n_images - start)
        c = merge(cfg, {"data": {"start": start, "batch_size": bs}})
        cache = Path(args.cache) / f"{name}-b{b}.pt"
        case = Case(c)
        if cache.is_file():
            saved = torch.load(cache, weights_only=True)
            images, labels, secs, n_it = saved["images"], saved["labels"], float(saved["seconds"]), int(saved["iterations"])
        else:
            update = case.client_update()
            rec = attack(c["attack"], case.server_view(), update)
            images, labels = rec.images, rec.labels
            secs, n_it = rec.info["seconds"], rec.info["iterations_run"]
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save({"images": images, "labels": labels, "truth": case.images, "true_labels": case.labels,
                        "seconds": secs, "iterations": n_it, "config": json.dumps(c)}, tmp)
            os.replace(tmp, cache)
        seconds += secs
        its += n_it
        from fedleak.attacks import Reconstruction

        m = evaluate(case.images, Reconstruction(images=images, labels=labels), case.labels)
        for k, v in m["per_image"].items():
            if isinstance(v, list):
                per_image.setdefault(k, []).extend(v)
        for k, v in m["mean"].items():  # batch-level scores (label accuracy): weight by batch size
            if k not in m["per_image"] and isinstance(v, (int, float)):
                per_image.setdefault(k, []).extend([v] * bs)
        print(f"  {name} batch {b}: PSNR {m['mean']['psnr']:.2f} dB, SSIM {m['mean']['ssim']:.3f}, "
              f"ROG-SSIM {m['mean']['ssim_rog']:.3f} ({secs:.0f} s)", file=sys.stderr, flush=True)
    means = {k: sum(v) / len(v) for k, v in per_image.items() if v and isinstance(v[0], (int, float))}
    return {"row": name, "config": cfg, "mean": means, "seconds": seconds, "s_per_iter": seconds / max(1, its)}


def table(results: list[dict]) -> str:
    cols = [("psnr", "PSNR dB", 2), ("ssim", "SSIM", 3), ("ssim_rog", "SSIM (ROG)", 3),
            ("perceptual", "1-HaarPSI", 3), ("label_accuracy", "label acc.", 2)]
    lines = ["| row | " + " | ".join(c[1] for c in cols) + " | s/iter |", "|---" * (len(cols) + 2) + "|"]
    for r in results:
        vals = [f"{r['mean'].get(k, float('nan')):.{d}f}" for k, _, d in cols]
        lines.append(f"| {r['row']} | " + " | ".join(vals) + f" | {r['s_per_iter']:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "imagenet-val-sample"))
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"rows to run; valid: {', '.join(ROWS)}")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--iterations", type=int, default=None,
                    help="attack iterations (default: the preset's budget; rog: 100, and 300 for sign rows)")
    ap.add_argument("--sign-iterations", type=int, default=None,
                    help="iterations for sign-compressed rows (default: the preset's sign budget)")
    ap.add_argument("--options", default="{}",
                    help="JSON attack options merged into every row, e.g. '{\"stages\": {\"1\": {\"iterations\": 90}}}'")
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--attack", default="rog", help="attack preset (rog, inverting-gradients, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default=None, help="attack precision: float32, bfloat16, auto (default: the preset's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "quality"))
    ap.add_argument("--json", default=str(ROOT / "docs" / "quality.json"))
    args = ap.parse_args()
    bad = [r for r in args.rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; valid: {', '.join(ROWS)}")
    import torch

    torch.set_num_threads(args.threads)
    from fedleak.client.data import folder_listing

    n = folder_listing(Path(args.data), 8).n
    if args.limit:
        n = min(n, args.limit)
    # the preset's settings are part of the key, so a changed preset never reuses stale reconstructions
    import hashlib

    from fedleak.attacks.presets import PRESETS, STAGED_PRESETS

    spec = [PRESETS.get(args.attack), STAGED_PRESETS.get(args.attack), args.options]
    preset = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    key = (f"{args.attack}-{preset}-{args.model}-{args.size}-b{args.batch}-{args.iterations}-{args.sign_iterations}"
           f"-s{args.seed}-n{n}" + (f"-{args.precision}" if args.precision else ""))
    args.cache = str(Path(args.cache) / key)
    results = []
    t0 = time.time()
    for name in args.rows:
        results.append(run_row(name, args, n))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(results))
    meta = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "images": n,
            "machine": f"{os.cpu_count()}-core CPU container, torch {torch.__version__}, {args.threads} threads",
            "wall_seconds": time.time() - t0}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    rows = {r["row"]: r for r in old.get("results", [])} if old.get("settings") == vars(args) | {"rows": None} else {}
    rows.update({r["row"]: r for r in results})
    Path(args.json).write_text(json.dumps({"meta": meta, "settings": vars(args) | {"rows": None},
                                           "results": list(rows.values())}, indent=2))


if __name__ == "__main__":
    main()
