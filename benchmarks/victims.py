"""Gradient inversion on trained victims: every model x snapshot x attack x data set, through ``fedleak.run``.

    python benchmarks/victims.py                        # the tables of docs/results.md (issue 13)
    python benchmarks/victims.py --models lenet --snapshots 0 --digits 4 --photos 0 --rog-iterations 5 \
        --ig-iterations 5 --refine-iterations 5 --attacks rog     # a smoke run

Victims: ``fedleak train-victim`` on the training split of scikit-learn's digits at 32x32 (Adam 1e-3, batch 64,
seed 0), snapshots at ``--snapshots`` epochs (0 is the seeded initialisation; ``last``: the card's final epoch),
written to ``--victims`` and trained here (``--epochs`` epochs) only when the card is missing there; the tables
of docs/results.md trained resnet18-cifar for 12 epochs with the command given there.

Clients: the first ``--digits`` held-out digits (``data.source: digits``, the test split) and the first
``--photos`` photos of ``--photo-dir`` (CSV order) at 32x32, in batches of ``--batch``. The photos are
out-of-distribution for a digits model; their ImageNet label is mapped into its label space as ``label mod 10``,
known to the attack like every label here (``labels: known``). FedSGD, no obfuscation, seed 0. Scores are the
runner's ``metrics.json`` (computed after the attack, outside it), averaged over the images of a cell. Complete
run folders under ``--runs`` are reused (their names carry the budget and batch). Prints Markdown tables and
writes every run's numbers to ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fedleak
from fedleak.client.data import load_folder

SIZE = 32
WIDTHS = "lenet:1,convnet:0.25,resnet18-cifar:0.25"
ATTACKS = "rog,inverting-gradients,rog-refine"
LABELS = {"rog": "rog", "inverting-gradients": "inverting-gradients",
          "rog-refine": "rog-refine (the default)"}


def victim_files(model: str, width: float, snapshots: list[str], epochs: int, folder: Path,
                 threads: int) -> dict[str, dict]:
    """{snapshot: entry of the card (file, epoch, test_accuracy)}; ``last`` is the card's final epoch. Trains with
    the CLI (``--epochs`` epochs) when the card is missing."""
    card_path = folder / f"{model}-digits{SIZE}.json"
    if not card_path.exists():
        wanted = sorted({epochs if s == "last" else int(s) for s in snapshots})
        cmd = [sys.executable, "-m", "fedleak", "train-victim", "--model", model, "--data", "digits",
               "--size", str(SIZE), "--width", str(width), "--epochs", str(epochs),
               "--snapshots", ",".join(map(str, wanted)), "--threads", str(threads), "--out", str(folder)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    card = json.loads(card_path.read_text())
    if card["model_kwargs"]["width"] != width:
        raise SystemExit(f"{card_path}: width {card['model_kwargs']['width']}, not {width}; use another --victims")
    have = {s["epoch"]: dict(s, file=str(folder / s["file"])) for s in card["snapshots"]}
    epoch = {s: max(have) if s == "last" else int(s) for s in snapshots}
    missing = [e for e in epoch.values() if e not in have]
    if missing:
        raise SystemExit(f"{card_path}: no snapshot at epoch(s) {missing}; use another --victims folder")
    return {s: have[e] for s, e in epoch.items()}


def photo_npz(photo_dir: str, count: int, path: Path) -> str:
    """The first ``count`` photos at 32x32 (center crop) as a .npz with labels mod 10 (evaluation only)."""
    s = load_folder(photo_dir, SIZE, count=count)
    np.savez(path, images=s.images.numpy().astype(np.float32), labels=(s.labels % 10).numpy().astype(np.int64))
    return str(path)


def attack_section(name: str, args) -> dict:
    if name == "rog-refine":
        return {"name": name, "labels": "known", "stages": {"0": {"iterations": args.rog_iterations},
                                                          "1": {"iterations": args.refine_iterations}}}
    its = args.ig_iterations if name == "inverting-gradients" else args.rog_iterations
    return {"name": name, "labels": "known", "iterations": its}


def budget(attack: str, args) -> str:
    """The iteration budget in a run folder's name, so that another budget never reuses a folder."""
    if attack == "rog-refine":
        return f"-it{args.rog_iterations}+{args.refine_iterations}"
    return f"-it{args.ig_iterations if attack == 'inverting-gradients' else args.rog_iterations}"


def one_cell(model, width, weights, attack, source, n, args, runs: Path) -> dict:
    """Every batch of ``n`` images of ``source`` attacked once; per-image PSNR/SSIM from metrics.json."""
    psnr, ssim, secs = [], [], 0.0
    for start in range(0, n, args.batch):
        bs = min(args.batch, n - start)
        out = runs / f"{model}-{Path(weights).stem}-{attack}{budget(attack, args)}-{Path(source).stem}-b{bs}-{start}"
        mfile = out / "metrics.json"
        if mfile.exists() and (out / "COMPLETE").exists():
            m = json.loads(mfile.read_text())
        else:
            cfg = {"seed": 0, "threads": args.threads, "device": "cpu", "enhancer": "none",
                   "data": {"source": source, "size": SIZE, "batch_size": bs, "start": start},
                   "model": {"name": model, "num_classes": 10, "width": width, "weights": weights},
                   "protocol": {"name": "fedsgd"}, "obfuscation": [], "attack": attack_section(attack, args)}
            _, m = fedleak.run(cfg, out=out, progress=False)
        psnr += m["raw"]["per_image"]["psnr"]
        ssim += m["raw"]["per_image"]["ssim"]
        secs += m["timing"]["attack_seconds"]
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "images": len(psnr), "attack_seconds": secs}


def name(snapshot: str) -> str:
    return "converged (last epoch)" if snapshot == "last" else f"epoch {snapshot}"


def flat_reference(source: str, n: int) -> str:
    """The score of a flat grey (0.5) image against the cell's true images: the level of "nothing recovered"."""
    from fedleak.config.schema import DataConfig
    from fedleak.experiment.data import load_data
    from fedleak.metrics.scores import evaluate

    x = load_data(DataConfig(source=source, size=SIZE, batch_size=n), 10).images
    m = evaluate(x, torch.full_like(x, 0.5))["mean"]
    return f"{m['psnr']:.2f} / {m['ssim']:.3f}"


def tables(rows: list[dict], models: list[str], snapshots: list[int], accs: dict) -> str:
    """One Markdown table per (data, attack): rows snapshots, columns models, cells PSNR / SSIM."""
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        for attack in dict.fromkeys(r["attack"] for r in rows):
            n = next(r["images"] for r in rows if r["data"] == data)
            out.append(f"\n**{data} ({n} images), {LABELS.get(attack, attack)}** (PSNR dB / SSIM)\n")
            out.append("| snapshot | " + " | ".join(models) + " |")
            out.append("|---" * (len(models) + 1) + "|")
            for e in snapshots:
                cells = []
                for mdl in models:
                    key = (data, attack, mdl, e)
                    hit = [r for r in rows if (r["data"], r["attack"], r["model"], r["snapshot"]) == key]
                    cells.append(f"{hit[0]['psnr']:.2f} / {hit[0]['ssim']:.3f}" if hit else "-")
                out.append(f"| {name(e)} | " + " | ".join(cells) + " |")
    out.append("\ntest accuracy of each snapshot (from the cards):\n")
    out.append("| snapshot | " + " | ".join(models) + " |\n" + "|---" * (len(models) + 1) + "|")
    for e in snapshots:
        out.append(f"| {name(e)} | " + " | ".join(f"{accs[m][e]:.3f}" for m in models) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet,convnet,resnet18-cifar")
    ap.add_argument("--widths", default=WIDTHS, help=f"model:width (default {WIDTHS})")
    ap.add_argument("--snapshots", default="0,1,5,last", help="epochs; last: the card's final epoch")
    ap.add_argument("--epochs", type=int, default=20, help="training length when a victim is trained here")
    ap.add_argument("--attacks", default=ATTACKS)
    ap.add_argument("--rog-iterations", type=int, default=100, help="rog, and rog-refine's stage 0 (preset: 100)")
    ap.add_argument("--refine-iterations", type=int, default=60, help="rog-refine's stage 1 (preset: 60)")
    ap.add_argument("--ig-iterations", type=int, default=200, help="inverting-gradients (preset: 1000)")
    ap.add_argument("--digits", type=int, default=4, help="held-out digits per cell (0: none)")
    ap.add_argument("--photos", type=int, default=8, help="photos per cell (0: none)")
    ap.add_argument("--photo-dir", default="/work/shared/data/imagenet-val-sample")
    ap.add_argument("--batch", type=int, default=4, help="client batch size")
    ap.add_argument("--victims", default="experiments/victims", help="folder of train-victim snapshots")
    ap.add_argument("--runs", default="experiments/victims-runs", help="run folders (complete ones are reused)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="experiments/victims.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models, snapshots = args.models.split(","), args.snapshots.split(",")
    widths = {k: float(v) for k, _, v in (w.partition(":") for w in args.widths.split(","))}
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    sources = ([("digits", "digits", args.digits)] if args.digits else []) + (
        [("photos", photo_npz(args.photo_dir, args.photos, runs / f"photos{args.photos}-mod10.npz"), args.photos)]
        if args.photos else [])
    t0, rows, accs = time.perf_counter(), [], {}
    for mdl in models:
        snaps = victim_files(mdl, widths.get(mdl, 1.0), snapshots, args.epochs, Path(args.victims), args.threads)
        accs[mdl] = {e: s["test_accuracy"] for e, s in snaps.items()}
        print(f"{mdl}: " + ", ".join(f"{name(e)} = epoch {s['epoch']} (acc {s['test_accuracy']:.3f})"
                                     for e, s in snaps.items()), flush=True)
        for e, s in snaps.items():
            for data, source, n in sources:
                for attack in args.attacks.split(","):
                    r = one_cell(mdl, widths.get(mdl, 1.0), s["file"], attack, source, n, args, runs)
                    rows.append(dict(r, model=mdl, snapshot=e, epoch=s["epoch"], data=data, attack=attack))
                    print(f"{mdl} e{e} {data} {attack}: {r['psnr']:.2f} / {r['ssim']:.3f} "
                          f"({r['attack_seconds']:.0f} s)", flush=True)
    print(tables(rows, models, snapshots, accs))
    for data, source, n in sources:
        print(f"flat grey image vs the {n} {data}: {flat_reference(source, n)} (PSNR dB / SSIM)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; torch {torch.__version__}, {platform.machine()}, "
          f"{args.threads} thread(s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "accuracy": accs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
