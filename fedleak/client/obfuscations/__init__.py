"""Gradient obfuscations (compression, noise, differential privacy), composable into a pipeline.

Each obfuscation is a small object registered by name:

* ``apply(tensors, ctx) -> tensors`` transforms the whole update (a dict ``name -> Tensor``), using only
  ``ctx.generator`` for randomness, so a seed fixes the result;
* ``bits(numels)`` is the number of bits the step's output puts on the wire (``None`` = leaves it as is);
* ``privacy(ctx)`` returns ``(epsilon, delta)`` for DP steps, ``None`` otherwise;
* steps with ``per_example = True`` (DP-SGD) act inside the client's gradient computation instead:
  ``aggregate(per_example_grads, ctx)`` turns per-example gradients into the batch gradient.

``build_pipeline([{name: clip, max_norm: 1}, {name: gaussian, sigma: 0.01}, {name: qsgd, levels: 16}])``
validates the steps (unknown names/options list the valid ones) and returns a :class:`Pipeline`.
"""
from __future__ import annotations

from typing import Optional


from fedleak.client.obfuscations.base import (  # noqa: F401  (re-exported: the package's public names)
    OBFUSCATIONS, ObfContext, Obfuscation, Tensors, check_finite, first_param, register,
)
from fedleak.errors import ConfigError


class Pipeline:
    """An ordered list of obfuscations applied one after another."""

    def __init__(self, steps: list[Obfuscation]):
        self.steps = steps
        per_ex = [s for s in steps if s.per_example]
        if len(per_ex) > 1:
            raise ConfigError("at most one per-example (DP-SGD) step is allowed")
        if per_ex and steps.index(per_ex[0]) != 0:
            raise ConfigError("the per-example (DP-SGD) step must come first in the obfuscation pipeline")
        self.per_example = per_ex[0] if per_ex else None
        self.update_steps = [s for s in steps if not s.per_example]

    def __len__(self):
        return len(self.steps)

    def apply(self, tensors: Tensors, ctx: ObfContext) -> Tensors:
        check_finite(tensors, "client update before obfuscation")
        out = dict(tensors)
        for s in self.update_steps:
            out = s.apply(out, ctx)
        check_finite(out, "client update after obfuscation")
        return out

    def bits(self, numels: list[int]) -> float:
        """Bits on the wire for the whole update (32 bits per float if no compressing step)."""
        bits = 32.0 * sum(numels)
        for s in self.update_steps:
            b = s.bits(numels)
            if b is not None:
                bits = b
        return float(bits)

    def privacy(self, ctx: ObfContext) -> Optional[dict]:
        """(epsilon, delta) of the DP steps of this round, or None if none is a DP step."""
        res = None
        for s in self.steps:
            p = s.privacy(ctx)
            if p is not None:
                eps, delta = p
                if res is None:
                    res = {"epsilon": eps, "delta": delta, "mechanism": s.describe()["name"]}
                else:  # basic composition of several DP steps
                    res = {"epsilon": res["epsilon"] + eps, "delta": res["delta"] + delta, "mechanism": "composed"}
        return res

    def describe(self) -> list[dict]:
        return [s.describe() for s in self.steps]

    def __repr__(self):
        return " -> ".join(map(repr, self.steps)) or "identity"


def build_pipeline(steps: list[dict] | None) -> Pipeline:
    built = []
    for i, step in enumerate(steps or []):
        if not isinstance(step, dict) or "name" not in step:
            raise ConfigError(f"obfuscation.{i}: must be a mapping with a 'name', got {step!r}")
        kwargs = {k: v for k, v in step.items() if k != "name"}
        try:
            built.append(OBFUSCATIONS.build(step["name"], **kwargs))
        except ConfigError as e:
            raise ConfigError(f"obfuscation.{i}: {e}") from None
    return Pipeline(built)


from fedleak.client.obfuscations import basic  # noqa: E402,F401  (registration)
from fedleak.client.obfuscations import quantization, sparsification, noise, dp  # noqa: E402,F401  (registration)
