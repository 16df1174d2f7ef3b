"""``fedleak train-victim``: train a registered model on public data offline; write weight snapshots + a card."""
from __future__ import annotations


def _epochs(text: str) -> list[int]:
    from fedleak.errors import ConfigError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--snapshots must be comma-separated epochs like 0,1,5, got {text!r}") from None


def add_parser(sub):
    p = sub.add_parser("train-victim", help="train a victim model on public data (digits); write snapshots + card")
    p.add_argument("--model", default="lenet", help="registered model name (default lenet)")
    p.add_argument("--data", default="digits", help="public data set (digits: scikit-learn's handwritten digits)")
    p.add_argument("--size", type=int, default=32, help="image side after resizing (default 32)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--snapshots", default=None, help="epochs to save, e.g. 0,1,5 (default: 0, 1 and the last)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=float, default=1.0, help="model width factor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where training runs (default auto: CUDA when available)")
    p.add_argument("--out", default="victims", help="output folder (default victims/)")
    p.add_argument("--force", action="store_true",
                   help="start even if the estimated peak memory exceeds the available memory")
    return p


def main(args) -> int:
    import sys

    import torch

    from fedleak.experiment.resources import guard, victim_estimate
    from fedleak.experiment.victims import VictimPlan, train_victim

    if args.threads:
        torch.set_num_threads(args.threads)
    snaps = _epochs(args.snapshots) if args.snapshots else sorted({0, min(1, args.epochs), args.epochs})
    plan = VictimPlan(model=args.model, data=args.data, size=args.size, epochs=args.epochs, snapshots=snaps,
                      lr=args.lr, batch_size=args.batch_size, seed=args.seed, width=args.width, device=args.device)
    guard(victim_estimate(plan.validate()), force=args.force, hint="reduce --batch-size, --size or --width",
          what="this training")  # before anything is trained or written
    card = train_victim(plan, args.out, command="fedleak " + " ".join(sys.argv[1:]))
    last = card["snapshots"][-1]
    print(f"{plan.model} on {plan.data}{plan.size}: {len(card['snapshots'])} snapshot(s) in {args.out}, "
          f"epoch {last['epoch']} test accuracy {last['test_accuracy']:.3f} ({card['seconds']:.0f} s)")
    return 0
