"""Benchmark for issue 14: the ``ldp-imprint`` attack over R rounds, beside the DP bound on reconstruction success.

    python benchmarks/ldp_rounds.py [DATA_FOLDER] [--rounds 1 10 100] [--levels 1e-3 1e-2 1e-1 1] ...
    python benchmarks/ldp_rounds.py --report experiments/ldp_rounds.json     # tables + plot again

DATA_FOLDER defaults to ``../shared/data/imagenet-val-sample`` (evaluation only, nothing is trained). The images
are split into batches of 8; for every batch, mechanism, noise multiplier z and round count R, one client
(32x32, FedSGD, LeNet with 1000 classes, random init, labels shared) takes part in max(R) rounds on the same batch
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


def run_level(batches, args, mech, z) -> list[dict]:
    """All batches at one (mechanism, z): one client run of max(R) rounds per batch; the server's record after
    the first R rounds (``first_rounds``, equal to an R-round run: the rounds share one noise stream) is attacked
    for each R. Per R: images recovered (SSIM > 0.5), mean SSIM, sigma estimates, total epsilon, the bound."""
    from fedleak import metrics as M
    from fedleak.attacks import attack
    from fedleak.client.privacy import rounds_epsilon
    from fedleak.client.rounds import first_rounds
    from fedleak.metrics.bounds import rounds_success_bound

    top = max(args.rounds)
    acc = {R: {"hits": 0, "n": 0, "ssim": [], "sig1": [], "sigR": []} for R in args.rounds}
    secs = 0.0
    for images in batches:
        t0 = time.perf_counter()
        case = make_case(images, args.data, args.size, obfuscation(mech, z), top, args.seed)
        up = case.client_update()
        assert up.stats["privacy"]["epsilon"] == rounds_epsilon(z, top, 1e-5)  # the accountant the rows quote
        view = case.server_view()
        secs += time.perf_counter() - t0
        for R in args.rounds:
            sub = first_rounds(up, R) if top > 1 else up
            rec = attack("ldp-imprint", view, sub)
            per = M.evaluate(case.images, rec)["per_image"]["ssim"]
            a = acc[R]
            a["hits"] += sum(1 for s in per if s is not None and s > 0.5)
            a["n"] += len(per)
            a["ssim"] += [float(s) for s in per]
            a["sigR"].append(rec.info["noise"]["sigma"])
            a["sig1"].append(rec.info["rounds"].get("sigma_per_round", {}).get("mean", rec.info["noise"]["sigma"]))
    rows = []
    for R, a in acc.items():
        lo, hi = wilson(a["hits"], a["n"])
        rows.append({"mechanism": mech, "z": z, "rounds": R, "epsilon": rounds_epsilon(z, R, 1e-5),
                     "images": a["n"], "recovered": a["hits"], "success": a["hits"] / a["n"], "ci95": [lo, hi],
                     "mean_ssim": sum(a["ssim"]) / len(a["ssim"]), "sigma_round": sum(a["sig1"]) / len(a["sig1"]),
                     "sigma_combined": sum(a["sigR"]) / len(a["sigR"]),
                     "bound": {str(k): rounds_success_bound(z, R, k) for k in KAPPAS},
                     "client_seconds_all_batches": round(secs, 1)})
    return rows


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
            for row in run_level(batches, args, mech, z):
                results["rows"].append(row)
                out.write_text(json.dumps(results, indent=1))  # checkpoint after every level
                print(f"[{time.perf_counter() - t_all:6.0f}s] {mech} z={z:g} R={row['rounds']} eps={row['epsilon']:.4g} "
                      f"success={row['success']:.3f} ssim={row['mean_ssim']:.3f} "
                      f"sigma {row['sigma_round']:.3g}->{row['sigma_combined']:.3g} bound={row['bound']}", flush=True)
    meta["total_seconds"] = round(time.perf_counter() - t_all, 1)
    out.write_text(json.dumps(results, indent=1))
    return results


def table(results) -> str:
    from fedleak.metrics.bounds import gdp_epsilon

    lines = ["| mechanism | z | R | total epsilon (RDP) | exact GDP epsilon | sigma_hat round / combined | mean SSIM | "
             "measured success (95 % CI) | bound kappa=0.1 | bound kappa=1e-3 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lo, hi = r["ci95"]
        exact = gdp_epsilon(math.sqrt(r["rounds"]) / r["z"], 1e-5)
        lines.append(f"| {r['mechanism']} | {r['z']:g} | {r['rounds']} | {r['epsilon']:.4g} | {exact:.4g} | "
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


# ------------------------------------------------------------------ part 4: FL training, accuracy cost
def _fl_setup(args):
    """Clients' data (disjoint slices of the digits train split), the server's public digits (the rest of the
    train split: no client holds them) and the test split; the base LeNet (10 classes)."""
    from fedleak.client.models import build_model
    from fedleak.client.public_data import load_public

    train, test = load_public("digits", "train", 32), load_public("digits", "test", 32)
    perm = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(args.seed))
    n = args.fl_clients * args.fl_client_size
    own = perm[:n].reshape(args.fl_clients, args.fl_client_size)
    clients = [(train.images[i], train.labels[i]) for i in own]
    public = train.images[perm[n:n + 512]]
    base = build_model("lenet", num_classes=10, image_size=32, seed=args.seed)
    return clients, public, test, base


def fl_train(args, planted: str) -> dict:
    """R rounds of FedSGD with LDP on: every client clips its gradient to C = 1 and adds N(0, (zC)^2); the server
    averages and takes an Adam step (lr ``--fl-lr``) on the base model. ``planted``: the server sends the base
    wrapped in the default malicious-imprint structure (planted once from public digits; it stays, only the base
    is updated) to every client (``all``) or to client 0 only (``target``; the others get the base), and attacks
    client 0 every round (its round alone, and all its rounds so far). ``none``: no structure."""
    from fedleak import metrics as M
    from fedleak.attacks import attack
    from fedleak.client.obfuscations import ObfContext, build_pipeline
    from fedleak.client.protocols import buffer_dict, param_dict
    from fedleak.client.rounds import RoundsUpdate, one_round
    from fedleak.client.update import Update
    from fedleak.experiment.victims import accuracy
    from fedleak.server.imprint import MaliciousImprint
    from fedleak.server.view import ServerView

    clients, public, test, base = _fl_setup(args)
    model, lay = MaliciousImprint().build(base, public, 10) if planted != "none" else (base, None)
    sent_to = [model if planted == "all" or (planted == "target" and c == 0) else base for c in range(len(clients))]
    pipe = build_pipeline([{"name": "ldp", "max_norm": 1.0, "noise_multiplier": args.fl_z}])
    proto = argparse.Namespace(name="fedsgd")
    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.Adam(base.parameters(), lr=args.fl_lr)
    log, records = [], []
    for r in range(1, args.fl_rounds + 1):
        total, target = {}, None
        for c, (x, y) in enumerate(clients):
            m = sent_to[c]
            ctx = ObfContext(generator=gen, batch_size=len(y), num_examples=len(y))
            _, sent, _ = one_round(m, param_dict(m), buffer_dict(m), x, y, pipe, ctx, proto)
            prefix = "base." if m is not base else ""
            for name, _p in base.named_parameters():  # the base's part of every update
                total[name] = total[name] + sent[prefix + name] if name in total else sent[prefix + name].clone()
            target = sent if c == 0 else target
        opt.zero_grad(set_to_none=True)
        for name, p in base.named_parameters():
            p.grad = (total[name] / len(clients)).to(p.dtype)
        opt.step()
        entry = {"round": r, "test_accuracy": accuracy(base, test.images, test.labels)}
        if planted != "none":
            x0 = clients[0][0]
            view = ServerView(model_name="lenet", model_kwargs={}, global_state={k: v.detach().clone() for k, v in
                              model.state_dict().items()}, image_size=32, channels=3, num_classes=10,
                              batch_size=len(x0), extra={"imprint": lay})
            records.append({k: target[k].clone() for k in (lay["weight"], lay["bias"])})
            meta = dict(kind="gradient", batch_size=len(x0), num_examples=len(x0), labels=clients[0][1].clone())
            single = Update(tensors=dict(target), **meta)
            multi = RoundsUpdate(tensors=dict(target), rounds=list(records), participated=list(range(r)), **meta)
            for key, up in (("this_round", single), ("rounds_so_far", multi)):
                per = M.evaluate(x0, attack("ldp-imprint", view, up))["per_image"]["ssim"]
                entry[key] = {"mean_ssim": float(sum(per) / len(per)), "recovered": sum(1 for s in per if s > 0.5),
                              "images": len(per)}
        log.append(entry)
        print(f"  {planted} round {r}: test accuracy {entry['test_accuracy']:.3f}"
              + (f", attack this round {entry['this_round']}, rounds so far {entry['rounds_so_far']}"
                 if planted != "none" else ""), flush=True)
    return {"planted": planted, "rounds": log, "final_test_accuracy": log[-1]["test_accuracy"]}


def fl_main(args) -> dict:
    from fedleak.client.privacy import rounds_epsilon

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = {"meta": {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                    "machine": f"{platform.machine()}, {args.threads} thread(s), 2-core box shared with other jobs",
                    "clients": args.fl_clients, "client_size": args.fl_client_size, "rounds": args.fl_rounds,
                    "z": args.fl_z, "lr": args.fl_lr, "seed": args.seed,
                    "epsilon_all_rounds": rounds_epsilon(args.fl_z, args.fl_rounds, 1e-5)},
           **{mode: fl_train(args, mode) for mode in args.fl_modes}}
    res["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.fl_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.fl_json).write_text(json.dumps(res, indent=1))
    return res


def fl_table(res) -> str:
    modes = [m for m in ("none", "target", "all") if m in res]
    lines = ["| round | " + " | ".join(f"test acc. ({m})" for m in modes) + " | " +
             " | ".join(f"attack ({m}): this round / rounds 1..r" for m in modes if m != "none") + " |",
             "|---" * (1 + len(modes) + len([m for m in modes if m != "none"])) + "|"]
    for i, row in enumerate(res[modes[0]]["rounds"]):
        cells = [str(row["round"])] + [f"{res[m]['rounds'][i]['test_accuracy']:.3f}" for m in modes]
        for m in modes:
            if m != "none":
                e = res[m]["rounds"][i]
                t, a = e["this_round"], e["rounds_so_far"]
                cells.append(f"{t['recovered']}/{t['images']}, {t['mean_ssim']:.3f} / {a['recovered']}/{a['images']}, "
                             f"{a['mean_ssim']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--images", type=int, default=16, help="evaluation images, in batches of 8")
    ap.add_argument("--levels", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--mechanisms", nargs="+", default=["gaussian", "dpsgd"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(REPO / "experiments" / "ldp_rounds.json"))
    ap.add_argument("--plot", default=str(REPO / "docs" / "ldp_rounds.png"))
    ap.add_argument("--report", default=None, help="only print the tables / plot of this JSON file")
    ap.add_argument("--fl", action="store_true", help="part 4: FL training with and without the structure")
    ap.add_argument("--fl-rounds", type=int, default=30)
    ap.add_argument("--fl-clients", type=int, default=16)
    ap.add_argument("--fl-client-size", type=int, default=16)
    ap.add_argument("--fl-z", type=float, default=0.01)
    ap.add_argument("--fl-lr", type=float, default=1e-3)
    ap.add_argument("--fl-modes", nargs="+", default=["none", "target", "all"], choices=["none", "target", "all"],
                    help="none: no structure; target: structure sent to client 0 only; all: to every client")
    ap.add_argument("--fl-json", default=str(REPO / "experiments" / "ldp_rounds_fl.json"))
    ap.add_argument("--fl-report", default=None, help="only print the FL table of this JSON file")
    args = ap.parse_args(argv)
    if args.fl or args.fl_report:
        res = json.loads(Path(args.fl_report).read_text()) if args.fl_report else fl_main(args)
        print(fl_table(res))
        return 0
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
