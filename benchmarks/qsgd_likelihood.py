"""What ``qsgd-likelihood`` costs on a large linear layer, against the L2 it replaces in ``rog-refine``'s pixel stage.

For the fully connected layer of a model at 128x128 (``lenet``: 512 x 65 536, ``resnet18-rog``: 1000 x 32 768) the
attacker's gradient is a pair of factors ``D`` (N x out) and ``H`` (N x in). This times one evaluation of the
matching loss plus its backward pass (the loss's gradients reaching ``D`` and ``H``) for a QSGD-4 update of that
layer:

* ``l2 factored``: squared L2 from N x N Gram matrices and one product with the target (the preset's path for L2);
* ``likelihood blockwise``: the exact likelihood on ``D^T H`` formed a block of columns at a time (the matcher's path);
* ``likelihood whole``: the same loss on the whole gradient ``D^T H``, formed by autograd (the path before).

Factors are random (ReLU-sparse inputs, half the output gradients zero), 1 thread; the figure is the median of
``--repeats`` evaluations after one warm-up, and the ratios are to ``l2 factored`` in the same run:

    python benchmarks/qsgd_likelihood.py
    python benchmarks/qsgd_likelihood.py --model resnet18-rog --batches 1 4
"""
from __future__ import annotations

import argparse
import statistics
import time


def layer_shape(model: str, size: int) -> tuple[int, int]:
    from fedleak.client.models.base import MODELS

    net = MODELS.build(model, num_classes=1000, image_size=size)
    linear = [m for m in net.modules() if m.__class__.__name__ == "Linear"]
    return tuple(max(linear, key=lambda m: m.weight.numel()).weight.shape)


def timings(out: int, inp: int, batch: int, repeats: int, seed: int = 0) -> dict[str, float]:
    import torch

    from fedleak.attacks.matching import GradRep, Matcher, quantiser_settings
    from fedleak.client.obfuscations import build_pipeline
    from fedleak.client.obfuscations.base import ObfContext

    gen = torch.Generator().manual_seed(seed)

    def factors():
        d = torch.randn(batch, out, generator=gen) * (torch.rand(batch, out, generator=gen) < 0.5)
        return d, torch.relu(torch.randn(batch, inp, generator=gen))

    quantiser = quantiser_settings({"name": "qsgd", "levels": 4})
    d0, h0 = factors()
    target = build_pipeline([quantiser]).apply({"w": d0.t() @ h0}, ObfContext(generator=gen))
    d1, h1 = factors()
    D, H = (0.5 * (d0 + d1)).requires_grad_(True), (0.5 * (h0 + h1)).requires_grad_(True)
    paths = {
        "l2 factored": (Matcher(target, "l2", factor_names=("w",)), lambda: GradRep(factors={"w": (D, H)})),
        "likelihood blockwise": (Matcher(target, "qsgd-likelihood", factor_names=("w",), quantiser=quantiser),
                                 lambda: GradRep(factors={"w": (D, H)})),
        "likelihood whole": (Matcher(target, "qsgd-likelihood", quantiser=quantiser),
                             lambda: GradRep(dense={"w": D.t() @ H})),
    }
    out_s = {}
    for name, (matcher, rep) in paths.items():
        runs = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            torch.autograd.grad(matcher(rep()), (D, H))
            if i:  # the first is a warm-up
                runs.append(time.perf_counter() - t0)
        out_s[name] = statistics.median(runs)
    return out_s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out, inp = layer_shape(args.model, args.size)
    print(f"{args.model} {args.size}x{args.size}: linear layer {out} x {inp}, QSGD-4, 1 thread, "
          f"median of {args.repeats}")
    print("| batch | path | seconds | x l2 factored |\n|---|---|---|---|")
    for batch in args.batches:
        t = timings(out, inp, batch, args.repeats)
        for name, s in t.items():
            print(f"| {batch} | {name} | {s:.3f} | {s / t['l2 factored']:.2f} |")


if __name__ == "__main__":
    main()
