"""The enhancer's acceptance test, rule against rule, on reconstructions cached by ``benchmarks/quality.py``.

For every cached batch (``<row>-b<i>.pt`` in one quality.py cache folder: the attack's images, labels and the
case config), the case is rebuilt to get the server view and the update the server received; the enhancer then
runs through :func:`fedleak.enhance.enhance` exactly as ``fedleak run`` calls it, once per acceptance rule, and
only afterwards is the output scored against the true images. Prints, per row, the mean PSNR / SSIM change
against the raw reconstruction (the enhancer never sees the truth):

    python benchmarks/quality.py --attack rog-refine --rows none qsgd4 --limit 24 --batch 8 --cache /tmp/q
    python benchmarks/acceptance.py /tmp/q/rog-refine-*-n24 --rows none qsgd4 --accept none loss layers
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path


def last_stage_config(attack: dict, update) -> dict:
    """The engine options the attack's last stage ran with (what ``rec.info["attack_config"]`` holds)."""
    from fedleak.attacks import ATTACKS
    from fedleak.attacks.presets import STAGED_OPTIONS, engine_config

    name, opts = attack["name"], {k: v for k, v in attack.items() if k not in ("name", "seed")}
    if name in STAGED_OPTIONS:
        return ATTACKS.options(name, opts).stage_configs(update)[-1].model_dump()
    return engine_config(name, update, **opts).model_dump()


def score_row(files: list[Path], sections: dict) -> dict:
    import torch

    from fedleak.enhance.stage import enhance
    from fedleak.experiment.case import Case
    from fedleak.metrics.scores import psnr, ssim

    per = {m: {"psnr": [], "ssim": []} for m in sections}
    for f in files:
        saved = torch.load(f, weights_only=True)
        cfg = json.loads(saved["config"])
        case = Case(cfg)
        view, update = case.server_view(), case.client_update()
        raw = saved["images"].float()
        rec = types.SimpleNamespace(images=raw, labels=saved["labels"],
                                    info={"attack_config": last_stage_config(cfg["attack"], update)})
        for m, section in sections.items():
            out = raw if section is None else enhance(raw.clone(), view, section, update=update, rec=rec)
            per[m]["psnr"] += psnr(out, case.images).reshape(-1).tolist()
            per[m]["ssim"] += ssim(out, case.images).reshape(-1).tolist()
    return {m: {k: sum(v) / len(v) for k, v in d.items()} | {"n": len(d["psnr"])} for m, d in per.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", help="one quality.py cache folder (holds <row>-b<i>.pt)")
    ap.add_argument("--rows", nargs="+", required=True)
    ap.add_argument("--enhancer", default="learned", help="enhancer name (default: learned, the shipped weights)")
    ap.add_argument("--accept", nargs="+", default=["none", "loss", "layers"],
                    choices=["none", "loss", "objective", "layers"])
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sections = {"raw": None} | {f"{args.enhancer}+{a}": {"name": args.enhancer, "accept": a, "margin": args.margin}
                                for a in args.accept}
    results, t0 = {}, time.time()
    print("| row | images | " + " | ".join(f"{m} PSNR / SSIM (change)" for m in sections if m != "raw") + " |")
    print("|---|---|" + "---|" * (len(sections) - 1))
    for row in args.rows:
        files = sorted(Path(args.cache).glob(f"{row}-b*.pt"))
        if not files:
            raise SystemExit(f"no cached batches {row}-b*.pt in {args.cache}")
        r = results[row] = score_row(files, sections)
        raw = r["raw"]
        print(f"| {row} | {raw['n']} | " + " | ".join(
            f"{v['psnr']:.2f} / {v['ssim']:.3f} ({v['psnr'] - raw['psnr']:+.2f} dB, {v['ssim'] - raw['ssim']:+.3f})"
            for m, v in r.items() if m != "raw") + " |", flush=True)
    if args.json:
        meta = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                "seconds": round(time.time() - t0, 1), "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
