"""Quality of ROG post-processing: raw attack output vs the ``classical`` and the ``learned`` enhancer.

Settings (the ROG paper's ImageNet setting): LeNet (1000 classes), 128x128 images (``resize: stretch``), the
``rog`` preset with 100 iterations for every setting (also for signSGD, where the preset alone would
use 300: the benchmark fixes 100 iterations, and it halves the CPU time), seed 0, labels shared,
FedSGD lr 0.003, and the evaluation folder split into batches of 16 (24 images -> 16 + 8). Obfuscations:
none, QSGD-16, QSGD-4, top-k 99 %, signSGD and FedAvg (5 local steps, lr 0.003).

Two stages, so the (slow) attacks run once:

* ``attack``: runs every attack and caches its raw output (``rec.images``, labels, timing) plus the true
  images for scoring to ``CACHE/<setting>_s<start>.pt`` (skips batches that are already cached with the same
  config);
* ``score``: re-scores the cached outputs: raw, ``enhancer: classical`` and ``enhancer: learned`` (the
  shipped weights, or ``--weights FILE``). The enhancer gets only the attack output and the server view.

    python benchmarks/enhancer.py [DATA]                      # both stages
    python benchmarks/enhancer.py [DATA] --stage attack       # only fill the cache
    python benchmarks/enhancer.py [DATA] --stage score --json /tmp/h4/bench.json

On top of the staged preset, with the acceptance test (``accept: loss``, docs/enhancer.md) and two weight files
(old and new), on the first 8 images:

    python benchmarks/enhancer.py [DATA] --attack rog-refine --limit 8 --batch 8 --settings none,qsgd4,topk99 \
        --cache /tmp/best/bench --weights OLD.safetensors NEW.safetensors --accept loss objective

DATA defaults to ``../shared/data/imagenet-val-sample`` relative to the repository. Metrics are the means
over all images (PSNR on 0..255, windowed SSIM, ROG's global YCrCb SSIM); see ``fedleak.metrics``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenet-val-sample"

# the same settings the enhancer's training pairs use (one definition)
from fedleak.experiment.enhancer_pairs import OBFUSCATIONS as SETTINGS  # noqa: E402

LABELS = {"none": "no obfuscation", "qsgd16": "QSGD-16", "qsgd4": "QSGD-4", "topk99": "top-k 99 %",
          "sign": "signSGD", "fedavg5": "FedAvg tau=5"}


#: the attack whose outputs are enhanced (``--attack``); ``rog`` takes the settings' attack overrides
ATTACK = {"name": "rog"}


def case_config(data: str, setting: str, start: int, batch: int, seed: int = 0) -> dict:
    s = SETTINGS[setting]
    extra = s.get("attack", {}) if ATTACK["name"] == "rog" else {}
    return {
        "seed": seed,
        "data": {"source": str(data), "size": 128, "resize": "stretch", "batch_size": batch, "start": start},
        "model": {"name": "lenet", "num_classes": 1000},
        "protocol": s.get("protocol", {"name": "fedsgd", "lr": 0.003}),
        "obfuscation": s["obfuscation"],
        "attack": {"name": ATTACK["name"], "seed": seed, **extra},
    }


def batches(data: str, batch: int, limit: int | None = None) -> list[tuple[int, int]]:
    from fedleak.client.data import folder_listing

    n = folder_listing(Path(data), 8).n
    n = min(n, limit) if limit else n
    return [(s, min(batch, n - s)) for s in range(0, n, batch)]


def _key(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def run_attacks(data: str, cache: Path, settings: list[str], batch: int, limit: int | None = None) -> None:
    import torch

    import fedleak
    from fedleak.experiment.case import Case

    cache.mkdir(parents=True, exist_ok=True)
    for setting in settings:
        for start, n in batches(data, batch, limit):
            cfg = case_config(data, setting, start, n)
            f = cache / f"{setting}_s{start}.pt"
            if f.is_file() and torch.load(f, weights_only=True).get("key") == _key(cfg):
                print(f"[cached] {f.name}", flush=True)
                continue
            case = Case(cfg)
            update = case.client_update()
            view = case.server_view()
            t0 = time.perf_counter()
            rec = fedleak.attack(cfg["attack"], view, update)
            dt = time.perf_counter() - t0
            m = fedleak.evaluate(case.images, rec)["mean"]
            blob = {"key": _key(cfg), "images": rec.images.detach().float().contiguous(),
                    "labels": torch.as_tensor(rec.labels), "true": case.images.contiguous(),
                    "true_labels": case.labels, "seconds": torch.tensor(dt),
                    "iterations": torch.tensor(len(rec.loss_history)),
                    "attack_config": json.dumps(rec.info["attack_config"])}
            tmp = f.with_suffix(".tmp")
            torch.save(blob, tmp)
            tmp.replace(f)
            print(f"[attack] {setting} start {start} n {n}: {dt:.1f}s, {len(rec.loss_history)} it, raw PSNR "
                  f"{m['psnr']:.2f} dB SSIM {m['ssim']:.4f}", flush=True)


def _methods(weights: list[str] | None, accept: list[str] | None, margin: float = 0.0,
             classical: bool = True) -> dict:
    """Name -> enhancer section; for each mode in ``accept`` every enhancer also with that acceptance test."""
    out = {"raw": None, **({"classical": {"name": "classical", "accept": "none"}} if classical else {})}
    for i, w in enumerate(weights or [None]):
        tag = "learned" if not weights or len(weights) == 1 else f"learned[{i}]"
        out[tag] = {"name": "learned", "accept": "none", **({"weights": w} if w else {})}
    for mode in accept or []:
        tag = mode + (f"(margin {margin:g})" if margin else "")
        out.update({f"{k}+{tag}": {**v, "accept": mode, "margin": margin} for k, v in list(out.items())
                    if v is not None and v["accept"] == "none"})
    return out


def score(data: str, cache: Path, settings: list[str], batch: int, weights: list[str] | None,
          accept: list[str] | None = None, limit: int | None = None, margin: float = 0.0,
          classical: bool = True) -> dict:
    """Long: one loop over settings x batches x methods, kept in one place so the scoring is visibly the same
    for every method."""
    import types

    import torch

    import fedleak
    from fedleak.experiment.case import Case
    from fedleak.enhance.stage import enhance

    methods = _methods(weights, accept, margin, classical)
    results: dict = {}
    for setting in settings:
        per = {m: {"psnr": [], "ssim": [], "ssim_rog": []} for m in methods}
        secs = {m: 0.0 for m in methods}
        for start, n in batches(data, batch, limit):
            cfg = case_config(data, setting, start, n)
            f = cache / f"{setting}_s{start}.pt"
            if not f.is_file():
                raise SystemExit(f"{f} missing: run --stage attack first")
            blob = torch.load(f, weights_only=True)
            if blob.get("key") != _key(cfg):
                raise SystemExit(f"{f} was made with other settings: run --stage attack again")
            case = Case(cfg)
            view = case.server_view()  # what the server knows; the enhancer never sees blob['true']
            update = case.client_update() if accept else None  # what the server received
            rec = types.SimpleNamespace(images=blob["images"], labels=blob["labels"],
                                        info={"attack_config": json.loads(blob["attack_config"])}) if accept else None
            for m, ecfg in methods.items():
                t0 = time.perf_counter()
                out = blob["images"] if ecfg is None else enhance(blob["images"].clone(), view, ecfg, update=update,
                                                                  rec=rec)
                secs[m] += time.perf_counter() - t0
                ev = fedleak.evaluate(blob["true"], out)
                for k in per[m]:
                    per[m][k] += ev["per_image"][k]
        results[setting] = {m: {k: sum(v) / len(v) for k, v in d.items()} | {"n": len(d["psnr"]),
                                                                              "seconds": round(secs[m], 2)}
                            for m, d in per.items()}
    return results


def long_table(results: dict) -> str:
    """One line per setting and method: PSNR / SSIM / ROG-SSIM and the PSNR change against raw."""
    lines = ["| setting | method | PSNR | SSIM | ROG-SSIM | PSNR - raw | seconds |", "|---|---|---|---|---|---|---|"]
    for s, r in results.items():
        for m, v in r.items():
            lines.append(f"| {LABELS.get(s, s)} | {m} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['ssim_rog']:.4f} | "
                         f"{v['psnr'] - r['raw']['psnr']:+.2f} | {v['seconds']} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    if any(set(r) != {"raw", "classical", "learned"} for r in results.values()):
        return long_table(results)
    lines = ["| setting | raw PSNR | classical PSNR | learned PSNR | raw SSIM | classical SSIM | learned SSIM "
             "| raw ROG-SSIM | classical ROG-SSIM | learned ROG-SSIM | learned beats both |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, r in results.items():
        ok = all(r["learned"][k] > max(r["raw"][k], r["classical"][k]) for k in ("psnr", "ssim"))
        lines.append(f"| {LABELS.get(s, s)} | " + " | ".join(f"{r[m]['psnr']:.2f}" for m in ("raw", "classical", "learned"))
                     + " | " + " | ".join(f"{r[m]['ssim']:.4f}" for m in ("raw", "classical", "learned"))
                     + " | " + " | ".join(f"{r[m]['ssim_rog']:.4f}" for m in ("raw", "classical", "learned"))
                     + f" | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="evaluation image folder")
    ap.add_argument("--cache", default="/tmp/h4/bench", help="folder for the cached raw attack outputs")
    ap.add_argument("--stage", choices=["attack", "score", "all"], default="all")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of " + ",".join(SETTINGS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--weights", nargs="+", default=None,
                    help="learned enhancer weights, one or more files (default: the shipped ones)")
    ap.add_argument("--attack", default="rog", choices=["rog", "rog-refine"], help="the attack to enhance")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    ap.add_argument("--margin", type=float, default=0.0, help="the acceptance test's margin (relative loss decrease)")
    ap.add_argument("--no-classical", action="store_true", help="leave the classical enhancer out")
    ap.add_argument("--accept", nargs="*", default=None, choices=["layers", "loss", "objective"],
                    help="also score each enhancer with these acceptance tests (no value: loss)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    settings = [s for s in args.settings.split(",") if s]
    bad = set(settings) - set(SETTINGS)
    if bad:
        ap.error(f"unknown setting(s) {sorted(bad)}")
    cache = Path(args.cache)
    ATTACK["name"] = args.attack
    if args.stage in ("attack", "all"):
        run_attacks(args.data, cache, settings, args.batch, args.limit)
    if args.stage in ("score", "all"):
        accept = None if args.accept is None else (args.accept or ["loss"])
        res = score(args.data, cache, settings, args.batch, args.weights, accept, args.limit, args.margin,
                    not args.no_classical)
        print(table(res))
        if args.json:
            meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": "2-core CPU container",
                    "python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                    "data": args.data, "weights": args.weights or "shipped", "command": " ".join(sys.argv)}
            Path(args.json).write_text(json.dumps({"meta": meta, "results": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
