"""What one matching iteration costs when layers are left out of the match (weight 0), with and without skipping
their gradient in the simulation.

A parameter whose matching weight is 0 (``layer_weights``, ``input_weight: 0``) is never read by the matcher, so
the attacker's simulated update leaves it out (:meth:`fedleak.attacks.simulate.ForwardModel.fedsgd`, ``skip``): no
gradient with ``create_graph`` for it, and no double backward through it. This times one evaluation of the L2 match
of a full-resolution candidate batch plus its backward pass to the images, on the builtin photos (FedSGD, no
obfuscation, known labels), for

* ``all layers``: the full match;
* each row's layers left out, ``skipped``: as the engine runs it now;
* the same, ``computed``: their gradients still simulated and then ignored (the engine before the skip).

The figure is the median of ``--repeats`` iterations after two warm-ups, thread CPU seconds, 1 thread; the ratios
are to ``all layers`` in the same run:

    python benchmarks/layer_skip.py
    python benchmarks/layer_skip.py --model resnet18-rog --batch 4
"""
from __future__ import annotations

import argparse
import statistics
import time


def rows(model: str, input_names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Row name -> ``layer_weights`` of the layers it leaves out."""
    out = {"input layer": {k: 0.0 for k in input_names}}
    if model == "lenet":
        out["all convolutions"] = {"features.": 0.0}
        out["all but fc1"] = {"features.": 0.0, "fc2.": 0.0}
    return out


def seconds(problem, skip: bool, x, repeats: int) -> float:
    import torch

    times = []
    for i in range(repeats + 2):
        t0 = time.thread_time()
        rep = problem.fwd.fedsgd(x, problem.labels, skip=problem.matcher.ignored if skip else frozenset())
        (g,) = torch.autograd.grad(problem.matcher(rep), x)
        if i >= 2:
            times.append(time.thread_time() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import torch

    from fedleak.attacks.engine.loop import prepare
    from fedleak.attacks.engine.options import EngineConfig
    from fedleak.attacks.engine.parts import resolve_parts
    from fedleak.experiment.case import Case

    torch.set_num_threads(1)
    case = Case({"seed": 0, "threads": 1, "model": {"name": args.model}, "attack": {"name": "rog"},
                 "data": {"source": "builtin", "size": args.size, "batch_size": args.batch}})
    view, update = case.server_view(), case.client_update()
    x = torch.rand((args.batch, *view.image_shape), generator=torch.Generator().manual_seed(0), requires_grad=True)

    def problem(weights):
        cfg = EngineConfig(param="pixels", loss="l2", layer_weights=weights, precision=args.precision)
        return prepare(view, update, cfg, resolve_parts(cfg))

    full = problem(None)
    base = seconds(full, False, x, args.repeats)
    print(f"{args.model} {args.size}x{args.size} batch {args.batch}, precision {args.precision}: s per iteration "
          f"(ratio to all layers)")
    print(f"| layers left out | skipped | computed |\n|---|---|---|\n| none (all layers) | {base:.3f} (1.00) | |")
    for name, weights in rows(args.model, full.fwd.input_layer(view.image_shape)).items():
        p = problem(weights)
        skipped, computed = seconds(p, True, x, args.repeats), seconds(p, False, x, args.repeats)
        print(f"| {name} | {skipped:.3f} ({skipped / base:.2f}) | {computed:.3f} ({computed / base:.2f}) |",
              flush=True)
        p.fwd.close()
    full.fwd.close()


if __name__ == "__main__":
    main()
