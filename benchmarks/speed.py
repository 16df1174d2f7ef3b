"""Seconds per attack iteration and peak memory: fedleak's engine vs a plain reference loop.

The reference is the obvious implementation: ``torch.autograd.grad(loss, params, create_graph=True)`` on the
``nn.Module``, squared-L2 distance summed over all parameters, ``backward()`` to the image, one Adam step.
fedleak's step is the ``rog`` engine step on the same model, images and target, in float32 (same loss value up
to float noise, which this script checks) and, on CPUs with native bfloat16 (AVX512-BF16/AMX), with the
simulated update autocast to bfloat16 (``precision: bfloat16``; its loss differs by bfloat16 rounding, and its
effect on reconstruction quality is measured by ``benchmarks/quality.py --precision bfloat16``). Each measurement runs in its own subprocess so peak RSS is its own.

    python benchmarks/speed.py                    # LeNet and ResNet-18 (BN-free) at 128x128, batch 1 and 16
    python benchmarks/speed.py --quick            # LeNet 64x64 only, to try it out
    python benchmarks/speed.py --threads 2 --iters 5 --warmup 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(which: str, model: str, size: int, batch: int, iters: int, warmup: int, threads: int, fedavg: int = 0) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from fedleak.experiment.case import Case
    from fedleak.attacks.engine import Latent, check_update
    from fedleak.attacks.matching import Matcher
    from fedleak.attacks.presets import engine_config
    from fedleak.attacks.simulate import ForwardModel
    from fedleak.experiment.resources import peak_rss

    cfg = {"seed": 0, "data": {"size": size, "batch_size": batch, "resize": "stretch"},
           "model": {"name": model, "num_classes": 1000}}
    if fedavg:
        cfg["protocol"] = {"name": "fedavg", "local_steps": fedavg, "lr": 0.003}
    images = _images(size, batch)
    case = Case(cfg, images=images)
    update = case.client_update()
    view = case.server_view()
    net = view.build_model()
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    target = check_update(net, update.tensors)
    y = update.labels
    ecfg = engine_config("rog", update)
    latent = Latent(ecfg, (batch, 3, size, size), torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([latent.z], lr=0.05)

    if which.startswith("fedleak"):
        autocast = torch.bfloat16 if which == "fedleak-bf16" else None
        fwd = ForwardModel(net, dict(net.named_parameters()), dict(net.named_buffers()), autocast=autocast)
        matcher = Matcher(target, "l2", "plain", None, tuple(fwd.big))

        def loss_fn(x):
            if fedavg:
                return matcher(fwd.fedavg(x, y, update.lr, update.local_steps))
            return matcher(fwd.fedsgd(x, y))
    else:
        for p in net.parameters():
            p.requires_grad_(True)
        params = list(net.parameters())
        tlist = [target[k] for k, _ in net.named_parameters()]

        def loss_fn(x):
            if fedavg:  # plain unrolled FedAvg: differentiate through tau SGD steps with dense weights
                from torch.func import functional_call

                names = [k for k, _ in net.named_parameters()]
                p = {k: v for k, v in net.named_parameters()}
                for _ in range(fedavg):
                    out = functional_call(net, p, (x,))
                    g = torch.autograd.grad(F.cross_entropy(out, y), list(p.values()), create_graph=True)
                    p = {k: p[k] - update.lr * gi for k, gi in zip(names, g)}
                pg = [(dict(net.named_parameters())[k] - p[k]) / update.lr for k in names]
                return sum(((a - b) ** 2).sum() for a, b in zip(pg, tlist))
            loss = F.cross_entropy(net(x), y)
            g = torch.autograd.grad(loss, params, create_graph=True)
            return sum(((a - b) ** 2).sum() for a, b in zip(g, tlist))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(latent.images())
        loss.backward()
        opt.step()
        latent.project()
        return float(loss.detach())

    losses = []
    for _ in range(warmup):
        losses.append(step())
    t0 = time.perf_counter()
    for _ in range(iters):
        losses.append(step())
    dt = (time.perf_counter() - t0) / iters
    rss = peak_rss() / 2**20  # this child's own peak (VmHWM), not the parent's carried over at fork
    return {"impl": which, "model": model, "size": size, "batch": batch, "fedavg_steps": fedavg,
            "s_per_iter": dt, "peak_rss_mib": rss, "losses": losses}


def _images(size, batch):
    from fedleak.client.data import ImageSet, load_builtin

    s = load_builtin(size, "stretch")
    reps = -(-batch // s.images.shape[0])
    import torch

    imgs = s.images.repeat(reps, 1, 1, 1)[:batch]
    labels = torch.arange(batch) * 37 % 1000
    return ImageSet(imgs, labels, [f"img{i}" for i in range(batch)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--fedavg", type=int, default=5, help="local steps for the FedAvg row (0: skip)")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 column")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        spec = json.loads(args._child)
        print(json.dumps(measure(**spec)))
        return
    if args.quick:
        grid = [("lenet", 64, 1, 0), ("lenet", 64, 4, 0)]
    else:
        grid = [("lenet", 128, 1, 0), ("lenet", 128, 16, 0), ("resnet18-rog", 128, 1, 0), ("resnet18-rog", 128, 16, 0)]
        if args.fedavg:
            grid.append(("lenet", 128, 16, args.fedavg))
            grid.append(("resnet18-rog", 128, 1, args.fedavg))
    from fedleak.attacks.engine import native_bfloat16

    impls = ["plain", "fedleak"] + (["fedleak-bf16"] if native_bfloat16() and not args.no_bf16 else [])
    rows = []
    print(f"{'model':<14}{'size':>5}{'batch':>6}{'proto':>9}{'plain s/it':>12}{'fp32 s/it':>11}{'speed-up':>10}"
          f"{'bf16 s/it':>11}{'speed-up':>10}{'plain MiB':>11}{'fp32 MiB':>10}{'bf16 MiB':>10}"
          f"{'fp32 loss diff':>16}{'bf16 loss diff':>16}", flush=True)
    for model, size, batch, fedavg in grid:
        res = {}
        for which in impls:
            spec = dict(which=which, model=model, size=size, batch=batch, iters=args.iters, warmup=args.warmup,
                        threads=args.threads, fedavg=fedavg)
            out = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"measurement failed: {spec}")
            res[which] = json.loads(out.stdout.strip().splitlines()[-1])
        p = res["plain"]

        def diff(r):  # largest relative difference of the per-iteration loss values vs the plain loop
            return max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(p["losses"], r["losses"]))

        def cells(which):
            if which not in res:
                return f"{'n/a':>11}{'':>10}", f"{'':>10}", f"{'':>16}"
            r = res[which]
            return (f"{r['s_per_iter']:>11.3f}{p['s_per_iter'] / r['s_per_iter']:>9.2f}x", f"{r['peak_rss_mib']:>10.0f}",
                    f"{diff(r):>16.2e}")

        f32, b16 = cells("fedleak"), cells("fedleak-bf16")
        proto = f"fedavg{fedavg}" if fedavg else "fedsgd"
        print(f"{model:<14}{size:>5}{batch:>6}{proto:>9}{p['s_per_iter']:>12.3f}{f32[0]}{b16[0]}"
              f"{p['peak_rss_mib']:>11.0f}{f32[1]}{b16[1]}{f32[2]}{b16[2]}", flush=True)
        row = {"plain": p}
        for which in impls[1:]:
            row[which] = res[which]
            row[f"speedup_{which}"] = p["s_per_iter"] / res[which]["s_per_iter"]
            row[f"loss_rel_diff_{which}"] = diff(res[which])
        rows.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
