"""Time to quality (issue 12 item 5): the quality each attack reaches at a ladder of time budgets.

For every obfuscation row and attack, every batch is attacked once; a progress callback records, whenever the
attack's own best-so-far changes, a copy of the images the attack would return if it were stopped right then
(its lowest-loss iterate of the current stage: chosen by the attacker's matching loss, never by the truth),
with the time spent so far. Only after the attack has finished does the benchmark score those recorded
iterates against the true images (PSNR, SSIM). For a budget of t seconds the attack's answer is the last
recorded one at or before t; the table and the plot give the mean over all images per budget.

Time is the attack call's CPU time on one thread (``time.thread_time``): on an idle core it equals wall time,
and unlike wall time it does not depend on what else the shared machine runs. Wall seconds are recorded too.
``inverting-gradients`` runs its preset (1000 iterations) but is stopped once it has used ``--ig-factor``
times the CPU time that ``rog-refine`` took on the same batch (default 2).

    python benchmarks/frontier.py --data ../shared/data/imagenet-val-sample --limit 8 --size 64 --batch 4 \\
        --rows none qsgd4 topk99 sign --json docs/frontier.json --plot docs/time_to_quality.png
"""
from __future__ import annotations

import argparse
import json
import math
import time

ROWS = {
    "none": [],
    "qsgd16": [{"name": "qsgd", "levels": 16}],
    "qsgd4": [{"name": "qsgd", "levels": 4}],
    "topk90": [{"name": "topk", "sparsity": 0.9}],
    "topk99": [{"name": "topk", "sparsity": 0.99}],
    "sign": [{"name": "sign"}],
}
ATTACKS = ["rog", "inverting-gradients", "rog-refine"]


class Recorder:
    """The progress callback: the attacker's best-so-far per stage, copied with its time when it changes."""

    def __init__(self, stop_after: float = math.inf):
        self.t0_cpu, self.t0_wall = time.thread_time(), time.perf_counter()
        self.stop_after = stop_after
        self.best: dict = {}
        self.points: list[dict] = []  # {"cpu", "wall", "images"}

    def __call__(self, state: dict) -> None:
        stage = (state.get("stage", 0), state.get("restart", 0))
        loss = float(state["loss"])
        if loss < self.best.get(stage, math.inf):
            self.best[stage] = loss
            self.points.append({"cpu": time.thread_time() - self.t0_cpu, "wall": time.perf_counter() - self.t0_wall,
                                "images": state["images"]().float().clone()})
        if time.thread_time() - self.t0_cpu > self.stop_after:
            raise KeyboardInterrupt  # the engine returns its partial result


def run_batch(name: str, case, args, stop_after: float = math.inf) -> dict:
    """One attack on one batch; the recorded iterates scored against the truth afterwards."""
    import torch

    from fedleak.attacks import attack
    from fedleak.metrics.scores import psnr, ssim

    view, update = case.server_view(), case.client_update()
    rec_cb = Recorder(stop_after)
    rec = attack(name, view, update, seed=args.seed, threads=1, callback=rec_cb)
    cpu, wall = time.thread_time() - rec_cb.t0_cpu, time.perf_counter() - rec_cb.t0_wall
    truth = case.images
    with torch.no_grad():
        points = [{"cpu": p["cpu"], "wall": p["wall"],
                   "psnr": [float(v) for v in psnr(p["images"], truth).reshape(-1)],
                   "ssim": [float(v) for v in ssim(p["images"], truth).reshape(-1)]} for p in rec_cb.points]
        final = {"psnr": [float(v) for v in psnr(rec.images, truth).reshape(-1)],
                 "ssim": [float(v) for v in ssim(rec.images, truth).reshape(-1)]}
    return {"points": points, "final": final, "cpu": cpu, "wall": wall, "iterations": len(rec.loss_history),
            "interrupted": bool(rec.info.get("interrupted"))}


def at_budget(batches: list[dict], t: float, key: str = "cpu") -> tuple[float, float] | None:
    """Mean PSNR / SSIM over all images of the answers at budget ``t`` (None if a batch has no answer yet)."""
    ps, ss = [], []
    for b in batches:
        done = [p for p in b["points"] if p[key] <= t]
        if not done:
            return None
        ps += done[-1]["psnr"]
        ss += done[-1]["ssim"]
    return sum(ps) / len(ps), sum(ss) / len(ss)


def ladder(results: dict) -> list[float]:
    top = max(b["cpu"] for row in results.values() for bs in row.values() for b in bs)
    out, t = [], 0.25
    while t < top * 1.01:
        out.append(t)
        t *= 2
    return out + [round(top, 2)]


def cases(args, obfuscation: list):
    from fedleak.experiment.case import Case

    for start in range(0, args.limit, args.batch):
        bs = min(args.batch, args.limit - start)
        yield Case({"seed": args.seed, "threads": 1, "data": {"source": args.data, "size": args.size, "batch_size": bs,
                                                             "start": start, "resize": args.resize},
                    "model": {"name": args.model}, "protocol": {"name": "fedsgd"}, "obfuscation": obfuscation,
                    "attack": {"name": "rog"}})


def run_all(args) -> dict:
    from fedleak.attacks import attack

    first = next(cases(args, []))  # warm-up: one-time costs (oneDNN, lazy imports) outside every timing
    attack("rog", first.server_view(), first.client_update(), iterations=2, threads=1)
    results: dict = {}
    for row in args.rows:
        results[row] = {a: [] for a in args.attacks}
        for i, case in enumerate(cases(args, ROWS[row])):
            refine_cpu = None
            for name in sorted(args.attacks, key=lambda a: a == "inverting-gradients"):  # IG last: its cap
                cap = args.ig_factor * refine_cpu if (name == "inverting-gradients" and refine_cpu) else math.inf
                r = run_batch(name, case, args, cap)
                refine_cpu = r["cpu"] if name == "rog-refine" else refine_cpu
                results[row][name].append(r)
                print(f"{row} batch {i} {name}: {r['iterations']} it, {r['cpu']:.1f} s CPU ({r['wall']:.1f} s wall), "
                      f"final PSNR {sum(r['final']['psnr']) / len(r['final']['psnr']):.2f}", flush=True)
    return results


def table(results: dict, budgets: list[float]) -> str:
    lines = ["| row | attack | " + " | ".join(f"{t:g} s" for t in budgets) + " | final (CPU s, wall s) |",
             "|---|---|" + "---|" * (len(budgets) + 1)]
    for row, per in results.items():
        for name, bs in per.items():
            cells = []
            for t in budgets:
                v = at_budget(bs, t)
                cells.append("–" if v is None else f"{v[0]:.2f} / {v[1]:.3f}")
            fin = [x for b in bs for x in b["final"]["psnr"]]
            cells.append(f"{sum(fin) / len(fin):.2f} ({sum(b['cpu'] for b in bs) / len(bs):.1f}, "
                         f"{sum(b['wall'] for b in bs) / len(bs):.1f})")
            lines.append(f"| {row} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results)
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for name, bs in results[row].items():
            ts = sorted({p["cpu"] for b in bs for p in b["points"]})
            xy = [(t, v[0]) for t in ts if (v := at_budget(bs, t)) is not None]
            if xy:
                style = {"rog": dict(lw=3.5, alpha=0.45), "rog-refine": dict(lw=1.4)}.get(name, dict(lw=1.4))
                ax.step([x for x, _ in xy], [y for _, y in xy], where="post", label=name, **style)
        ax.set_xscale("log")
        ax.set_title(row)
        ax.set_xlabel("attack CPU seconds per batch (1 thread)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean PSNR (dB) of the answer at that budget")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title + " (rog-refine's first stage is rog: the lines coincide until rog ends)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="builtin")
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--limit", type=int, default=8, help="number of images (batches of --batch)")
    ap.add_argument("--resize", default="stretch", choices=["crop", "stretch"])
    ap.add_argument("--rows", nargs="+", default=["none", "qsgd4", "topk99", "sign"], choices=sorted(ROWS))
    ap.add_argument("--attacks", nargs="+", default=ATTACKS)
    ap.add_argument("--ig-factor", type=float, default=2.0,
                    help="stop inverting-gradients after this many times rog-refine's CPU time on the batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the recorded, scored points here")
    ap.add_argument("--plot", default=None, help="write the PSNR-vs-seconds plot here (PNG)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="no attacks: merge the --json files of earlier runs (e.g. rows run in parallel processes) "
                         "into one table / plot / --json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.merge:
        results = {}
        for f in args.merge:
            with open(f) as fh:
                blob = json.load(fh)
            results.update(blob["results"])
            for k in ("data", "size", "batch", "limit", "model"):
                setattr(args, k, blob["args"][k])
    else:
        results = run_all(args)
    budgets = ladder(results)
    print(f"\nmean PSNR / SSIM at each CPU-time budget per batch ({args.limit} images, {args.size}x{args.size}, "
          f"batch {args.batch}, {args.model}, data {args.data}; "
          + (f"merged from {len(args.merge)} runs)" if args.merge else f"{time.perf_counter() - t0:.0f} s in all)"))
    print(table(results, budgets))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "budgets": budgets, "results": results}, f)
    if args.plot:
        plot(results, args.plot, f"{args.model}, {args.size}x{args.size}, batch {args.batch}, {args.limit} images")


if __name__ == "__main__":
    main()
