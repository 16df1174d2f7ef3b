"""``fedleak attack --model SPEC [--weights FILE] --update FILE ...``: attack an update captured from real FL
code (or written by ``fedleak simulate``) and write a run folder. There are no true images: metrics.json holds
the matching loss, the recovered labels, iterations and time, and marks PSNR/SSIM as not computable.

Exit codes: 0 done, 2 bad input (one line), 130 interrupted (partial results, no COMPLETE).
"""
from __future__ import annotations

import sys


def add_parser(sub):
    p = sub.add_parser(
        "attack",
        help="attack a captured client update (a state_dict of gradients or new weights); write a run folder",
        description="Reconstruct the client's images from an update saved by any PyTorch FL code (torch.save, "
                    "read with weights_only=True, or safetensors) or by fedleak simulate, with the server's "
                    "knowledge only: the model it sent, its weights and the protocol metadata. A fedleak update "
                    "file carries its metadata, so the protocol flags are optional then. See docs/capture.md.",
    )
    p.add_argument("--update", required=True, metavar="FILE",
                   help="the client's upload: a state_dict of gradients or of new weights, or a fedleak update file")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="the model the server sent: a registered name (fedleak list) or import:pkg.module:Factory")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="the weights the server sent (safetensors or a torch.save state_dict); default: the "
                        "model's seeded initialisation")
    p.add_argument("--update-kind", default="auto", choices=["auto", "gradients", "weights"],
                   help="gradients (FedSGD, or a FedAvg pseudo-gradient with --local-steps > 1) or the client's "
                        "new weights (FedAvg: the update is their delta against --weights); auto decides from "
                        "the file (default)")
    p.add_argument("--lr", type=float, default=None, help="the client's learning rate (FedAvg; plain SGD)")
    p.add_argument("--local-steps", type=int, default=None, metavar="N", help="local SGD steps (FedAvg; default 1)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images in the client's batch")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shape", default=None, metavar="C,H,W", help="the model's input shape, e.g. 3,32,32")
    g.add_argument("--image-size", type=int, default=None, metavar="N", help="square RGB input of side N")
    p.add_argument("--labels", default=None, metavar="3,1,4|FILE",
                   help="the batch's labels, when the protocol shares them (default: the attack recovers them)")
    p.add_argument("--attack", default=None, metavar="NAME", help="attack to run (default: as fedleak run, rog-refine)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set model.num_classes=10 --set attack.iterations=200 "
                        "--set obfuscation=qsgd:levels=16 (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: OUTPUT_DIR/capture-...)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary; print only the folder")
    p.add_argument("--force", action="store_true", help="start even if the memory estimate exceeds the memory")
    return p


def main(args) -> int:
    from fedleak.experiment.capture import CaptureRequest, parse_labels, parse_shape, run_capture, summary_lines

    shape = parse_shape(args.shape) if args.shape else (
        (3, args.image_size, args.image_size) if args.image_size else None)
    if shape is not None:
        parse_shape(",".join(map(str, shape)))  # the same checks for --image-size
    req = CaptureRequest(update=args.update, model=args.model, weights=args.weights, update_kind=args.update_kind,
                         lr=args.lr, local_steps=args.local_steps, batch_size=args.batch_size, shape=shape,
                         labels=parse_labels(args.labels) if args.labels else None, attack=args.attack,
                         overrides=list(args.overrides), out=args.out, force=args.force)
    run_dir, metrics = run_capture(req, progress=not args.quiet)
    if metrics.get("interrupted"):
        print(f"fedleak: interrupted; partial results written to {run_dir} (no COMPLETE marker)", file=sys.stderr)
        return 130
    from fedleak.commands.run import print_result

    return print_result(run_dir, metrics, args.quiet, summary_lines)
