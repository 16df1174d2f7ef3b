"""Label recovery from the last layer's gradient.

* ``idlg`` (Zhao et al., 2020): for one image, the row of the last linear layer's weight gradient that
  belongs to the true class is the only one with a negative sum (non-negative inputs after ReLU).
* ``yin`` (Yin et al., 2021, GradInversion): for a batch of distinct labels, the B classes whose gradient
  rows have the most negative minimum.
* ``llg`` (Wainakh et al., 2022, LLG+ style): repeated labels allowed. Row sums of the last-layer gradient are
  approximately ``sum_n (p_nc - y_nc) |h_n|_1``; the per-example impact ``|h|_1 / B`` is estimated by
  passing random images through the model; labels are then drawn greedily from the most negative row,
  which is credited one impact at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedleak.errors import ConfigError

METHODS = ("known", "idlg", "yin", "llg", "optimize", "auto")


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise ConfigError("label recovery needs a model whose last layer is nn.Linear")
    return last


def recover_labels(method: str, model: nn.Module, update: dict[str, torch.Tensor], batch_size: int,
                   image_shape: tuple[int, int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    name, fc = last_linear(model)
    gW = update[f"{name}.weight"].detach().double()  # (classes, hidden)
    if method == "idlg":
        if batch_size != 1:
            raise ConfigError(f"labels: idlg works for one image (batch_size=1, got {batch_size}); use yin or llg")
        return torch.tensor([int(gW.sum(1).argmin())])
    if method == "yin":
        score = gW.min(1).values
        k = min(batch_size, gW.shape[0])
        labels = torch.topk(-score, k).indices
        if k < batch_size:
            labels = labels.repeat(batch_size // k + 1)[:batch_size]
        return labels.sort().values
    if method == "llg":
        row = gW.sum(1)
        impact = _impact(model, batch_size, image_shape, generator)
        # the offset each row gets from the softmax mass p_nc ~ 1/C of every example
        offset = row.sum() / gW.shape[0]
        r = (row - offset).clone()
        labels = []
        for _ in range(batch_size):
            c = int(r.argmin())
            labels.append(c)
            r[c] += impact
        return torch.tensor(sorted(labels))
    raise ConfigError(f"unknown label recovery {method!r}; valid: {', '.join(METHODS)}")


@torch.no_grad()
def _impact(model, batch_size, image_shape, generator) -> float:
    """Mean |d loss / d z_c| * |h|_1 for the true class of one example, from random images (no client data)."""
    name, fc = last_linear(model)
    feats = []
    h = fc.register_forward_hook(lambda m, i, o: feats.append(i[0]))
    try:
        x = torch.rand((8, *image_shape), generator=generator)
        out = model(x)
    finally:
        h.remove()
    p = F.softmax(out.double(), -1)
    hsum = feats[0].double().reshape(x.shape[0], -1).sum(1)
    return float(((1 - p.max(1).values) * hsum).mean()) / batch_size
