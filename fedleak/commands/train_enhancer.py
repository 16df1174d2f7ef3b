"""``fedleak train-enhancer --out FILE [--data SPEC] [--seed S] [--steps N] [--pairs CACHE]``: train the learned
ROG enhancer (see docs/enhancer.md). ``--data skimage,sklearn`` (the default) uses the photos bundled with
scikit-image that are not evaluation photos (the ``builtin`` set the demo evaluates on is left out) and
scikit-learn's two sample photos; evaluation photos are refused by name and by content hash.
``--pairs CACHE``: real ``rog`` attack outputs on
training crops; made (and resumed) first when the file is missing or has fewer batches than
``--pair-batches``. Writes FILE (safetensors) and a JSON sidecar next to it."""
from __future__ import annotations

import sys


def add_parser(sub):
    from fedleak.enhance.data import DEFAULT_DATA

    p = sub.add_parser(
        "train-enhancer",
        help="train the learned ROG post-processing network (denoise + x4 upsampling)",
        description=__doc__,
    )
    p.add_argument("--data", default=DEFAULT_DATA, metavar="SPEC",
                   help=f"training photos: skimage (scikit-image photos outside the builtin evaluation set), "
                        f"sklearn, a folder, or a comma-separated mix (default {DEFAULT_DATA}); evaluation "
                        "photos (builtin, imagenet-val-sample) are refused")
    p.add_argument("--out", required=True, metavar="FILE", help="weights file to write (.safetensors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch", type=int, default=16, help="patches per step (default 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="initial Adam learning rate (default 2e-3)")
    p.add_argument("--pairs", default=None, metavar="CACHE",
                   help="cache of real attack outputs on training crops (made first if missing)")
    p.add_argument("--pair-batches", type=int, default=None, metavar="N",
                   help="attack batches in the pair cache (default: 6, one per obfuscation; the cache is "
                        "extended when it has fewer)")
    p.add_argument("--width", type=int, default=None, help="network width (default 32)")
    p.add_argument("--pool", type=int, default=1200, help="clean crops generated for synthetic pairs (default 1200)")
    p.add_argument("--patch", type=int, default=64, help="training patch size, a multiple of 16 (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the training steps run (default auto: CUDA when available)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="start even if the estimated peak memory exceeds the available memory")
    return p


def main(args) -> int:
    import torch

    from fedleak.enhance.data import load_pairs
    from fedleak.enhance.net import DEFAULT_ARCH
    from fedleak.enhance.train import TrainConfig, train
    from fedleak.errors import ConfigError
    from fedleak.experiment.enhancer_pairs import DEFAULT_PAIR_PLAN, make_pairs
    from fedleak.experiment.resources import enhancer_estimate, guard

    from fedleak.device import resolve_device

    torch.set_num_threads(max(1, args.threads))
    resolve_device(args.device)  # refuse cuda without CUDA before the (slow) attack pairs are made
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    arch = dict(DEFAULT_ARCH)
    if args.width:
        arch["width"] = args.width
    if args.patch < 16 or args.patch % 16 or args.patch > 128:
        raise ConfigError(f"--patch must be a multiple of 16 between 16 and 128, got {args.patch}")
    if args.pool < 1:
        raise ConfigError(f"--pool must be >= 1, got {args.pool}")
    guard(enhancer_estimate(args.data, arch, args.batch, args.patch, args.pool, TrainConfig.size), force=args.force,
          hint="reduce --batch, --patch, --pool or the training photos", what="this training")
    pairs = None
    if args.pairs:
        from pathlib import Path

        n = args.pair_batches
        have = len(load_pairs(args.pairs)["batches"]) if Path(args.pairs).is_file() else 0
        if n is None and have == 0:
            n = len(DEFAULT_PAIR_PLAN)
        if n is not None and have < n:
            plan = [DEFAULT_PAIR_PLAN[i % len(DEFAULT_PAIR_PLAN)] for i in range(n)]
            log(f"making {n - have} attack pair batch(es) in {args.pairs} (slow: one rog attack each)")
            make_pairs(args.data, args.pairs, plan, seed=args.seed, log=log, progress=not args.quiet)
        pairs = load_pairs(args.pairs)
        if n is not None:
            pairs["batches"] = pairs["batches"][:n]
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, arch=arch, pool=args.pool,
                      patch=args.patch)
    info = train(args.data, args.out, cfg, pairs=pairs, pairs_path=args.pairs, progress=not args.quiet, log=log,
                 device=args.device)
    print(f"wrote {args.out} ({info['steps']} steps, loss {info['first_loss']:.4f} -> {info['final_loss']:.4f}, "
          f"{info['train_seconds']:.0f}s)")
    v = info.get("validation", {}).get("all")
    if v:
        print(f"held-out attack outputs of training crops: PSNR {v['raw_psnr']:.2f} dB raw -> "
              f"{v['enhanced_psnr']:.2f} dB enhanced ({v['n']} images)")
    return 0
