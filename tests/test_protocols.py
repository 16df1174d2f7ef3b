"""FL client protocols (FedSGD, FedAvg, per-example gradients, DP-SGD) against hand-written references."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedleak.client import privacy
from fedleak.errors import ConfigError
from fedleak.client.models import build_model
from fedleak.client.obfuscations import OBFUSCATIONS, ObfContext, build_pipeline
from fedleak.client.protocols import (
    batch_gradient, buffer_dict, fedavg, fedsgd, minibatches, param_dict, per_example_gradients,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
]


class TinyMLP(nn.Module):
    def __init__(self, num_classes=5, image_size=8, channels=3):
        super().__init__()
        self.fc1 = nn.Linear(channels * image_size * image_size, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def data(n=6, size=16, classes=10, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def lenet(dtype=torch.float32):
    return build_model("lenet", num_classes=10, image_size=16, seed=3).to(dtype)


def ctx(seed=0, **kw):
    return ObfContext(generator=torch.Generator().manual_seed(seed), **kw)


def reference_grad(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    """Plain autograd on the module itself (no torch.func)."""
    m = copy.deepcopy(model)
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    return {k: p.grad.detach().clone() for k, p in m.named_parameters()}


def assert_close(a: dict, b: dict, rtol=1e-5, atol=1e-7):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=rtol, atol=atol), k


# ---------------------------------------------------------------------------------------------------------


def test_fedsgd_is_the_batch_gradient():
    model = lenet()
    x, y = data()
    g = fedsgd(model, param_dict(model), buffer_dict(model), x, y, build_pipeline([]), ctx())
    assert_close(g, reference_grad(model, x, y))


@pytest.mark.parametrize("kind", ["lenet", "mlp"])
def test_fedavg_one_step_is_lr_times_fedsgd(kind):
    # float64 so that theta0 - (theta0 - lr g) does not lose the small entries of lr g to cancellation
    if kind == "lenet":
        model, size = lenet(torch.float64), 16
    else:
        model, size = TinyMLP(num_classes=5, image_size=8).double(), 8
    x, y = data(size=size, classes=5, dtype=torch.float64)
    params, buffers, pipe = param_dict(model), buffer_dict(model), build_pipeline([])
    lr = 0.05
    g = fedsgd(model, params, buffers, x, y, pipe, ctx())
    assert_close(g, reference_grad(model, x, y), rtol=1e-10, atol=1e-14)
    delta, final = fedavg(model, params, buffers, x, y, pipe, ctx(), lr=lr, local_steps=1)
    assert_close(delta, {k: lr * v for k, v in g.items()}, rtol=1e-8, atol=1e-14)
    assert_close(final, {k: params[k] - lr * g[k] for k in g}, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("local_batch_size,local_steps,epochs", [(None, 3, 1), (2, 5, 1), (4, 2, 2)])
def test_fedavg_many_steps_equals_hand_written_sgd(local_batch_size, local_steps, epochs):
    model = lenet(torch.float64)
    x, y = data(n=6, dtype=torch.float64)
    lr = 0.1
    params = param_dict(model)
    delta, final = fedavg(model, params, buffer_dict(model), x, y, build_pipeline([]), ctx(), lr=lr,
                          local_steps=local_steps, local_batch_size=local_batch_size, epochs=epochs)
    # reference: torch.optim.SGD on a copy of the module, mini-batches cycling through the data in order
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    b = local_batch_size or 6
    batches = [(i, min(6, i + b)) for i in range(0, 6, b)]
    for t in range(local_steps * epochs):
        lo, hi = batches[t % len(batches)]
        opt.zero_grad()
        F.cross_entropy(ref(x[lo:hi]), y[lo:hi]).backward()
        opt.step()
    want = {k: p.detach() for k, p in ref.named_parameters()}
    assert_close(final, want, rtol=1e-10, atol=1e-13)
    assert_close(delta, {k: params[k] - want[k] for k in want}, rtol=1e-7, atol=1e-13)
    assert any(not torch.allclose(delta[k], torch.zeros_like(delta[k])) for k in delta)


def test_minibatches_cycle_in_order():
    assert list(minibatches(5, 2, 5)) == [slice(0, 2), slice(2, 4), slice(4, 5), slice(0, 2), slice(2, 4)]
    assert list(minibatches(5, None, 2)) == [slice(0, 5), slice(0, 5)]


def test_per_example_gradients_equal_a_loop():
    model = lenet()
    x, y = data(n=4)
    pe = per_example_gradients(model, param_dict(model), buffer_dict(model), x, y)
    for i in range(4):
        ref = reference_grad(model, x[i:i + 1], y[i:i + 1])
        assert_close({k: v[i] for k, v in pe.items()}, ref)
    # and their mean is the batch gradient
    assert_close({k: v.mean(0) for k, v in pe.items()}, reference_grad(model, x, y))


def test_per_example_gradients_refuse_batchnorm():
    model = build_model("convnet", num_classes=10, image_size=16, width=0.125)
    x, y = data(n=2)
    with pytest.raises(ConfigError, match="BatchNorm"):
        per_example_gradients(model, param_dict(model), buffer_dict(model), x, y)


# ---------------------------------------------------------------------------------------------------------
# DP-SGD inside the client's gradient


def _clipped_mean_by_hand(model, x, y, C):
    grads = [reference_grad(model, x[i:i + 1], y[i:i + 1]) for i in range(x.shape[0])]
    out = {k: torch.zeros_like(v) for k, v in grads[0].items()}
    for g in grads:
        norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in g.values()))
        f = min(1.0, C / norm)
        for k in out:
            out[k] += g[k] * f
    return {k: v / x.shape[0] for k, v in out.items()}, grads


def test_dpsgd_without_noise_is_the_mean_of_clipped_example_gradients():
    model = lenet()
    x, y = data(n=4)
    norms = [math.sqrt(sum(float((v ** 2).sum()) for v in reference_grad(model, x[i:i + 1], y[i:i + 1]).values()))
             for i in range(4)]
    C = sorted(norms)[1] * 1.001  # some examples clipped, some not
    step = OBFUSCATIONS.build("dpsgd", max_grad_norm=C, noise_multiplier=0.0)
    got = fedsgd(model, param_dict(model), buffer_dict(model), x, y, build_pipeline([{"name": "dpsgd",
                 "max_grad_norm": C, "noise_multiplier": 0.0}]), ctx())
    want, _ = _clipped_mean_by_hand(model, x, y, C)
    assert_close(got, want, rtol=1e-4, atol=1e-7)
    # the clipped per-example gradients respect the bound, unclipped ones are untouched
    pe = per_example_gradients(model, param_dict(model), buffer_dict(model), x, y)
    clipped = step.clip_per_example(pe)
    for i in range(4):
        n = math.sqrt(sum(float((v[i].double() ** 2).sum()) for v in clipped.values()))
        assert n <= C
        if norms[i] <= C:
            assert all(torch.equal(clipped[k][i], pe[k][i]) for k in pe)


def test_dpsgd_with_huge_clip_and_no_noise_is_plain_fedsgd():
    model = lenet()
    x, y = data(n=3)
    pipe = build_pipeline([{"name": "dpsgd", "max_grad_norm": 1e9, "noise_multiplier": 0.0}])
    got = fedsgd(model, param_dict(model), buffer_dict(model), x, y, pipe, ctx())
    assert_close(got, reference_grad(model, x, y), rtol=1e-4, atol=1e-7)


def test_dpsgd_noise_has_std_z_c_over_b():
    model = lenet()
    x, y = data(n=4)
    C, z, B = 0.5, 1.3, 4
    args = (model, param_dict(model), buffer_dict(model), x, y)
    clean = batch_gradient(*args, OBFUSCATIONS.build("dpsgd", max_grad_norm=C, noise_multiplier=0.0), ctx())
    noisy = batch_gradient(*args, OBFUSCATIONS.build("dpsgd", max_grad_norm=C, noise_multiplier=z), ctx(9))
    e = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean]).double()
    assert e.numel() > 50_000
    assert float(e.std()) == pytest.approx(z * C / B, rel=0.05)
    again = batch_gradient(*args, OBFUSCATIONS.build("dpsgd", max_grad_norm=C, noise_multiplier=z), ctx(9))
    assert all(torch.equal(again[k], noisy[k]) for k in noisy)


# ---------------------------------------------------------------------------------------------------------
# through a Case (config -> client update -> stats)


def test_case_reports_dpsgd_privacy_for_fedavg(base_config):
    from fedleak.experiment.case import Case

    cfg = dict(base_config)
    cfg["data"] = {**cfg["data"], "batch_size": 4}
    cfg["protocol"] = {"name": "fedavg", "local_steps": 3, "local_batch_size": 2, "epochs": 2, "lr": 0.01}
    cfg["obfuscation"] = "dpsgd(1.0, noise_multiplier=1.1)"
    u = Case(cfg).client_update()
    p = u.stats["privacy"]
    assert p["mechanism"] == "dpsgd"
    # q = local batch / examples = 2/4, steps = local_steps * epochs = 6
    assert p["epsilon"] == pytest.approx(privacy.epsilon(1.1, 0.5, 6, 1e-5), rel=1e-9)


def test_case_is_deterministic_and_counts_bits(base_config):
    from fedleak.experiment.case import Case

    cfg = dict(base_config, obfuscation="clip(1.0) -> qsgd(4)")
    a, b = Case(cfg).client_update(), Case(cfg).client_update()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.stats["bits_per_parameter"] == pytest.approx(3.0, abs=0.01)  # 7 signed levels -> 3 bits
    assert "privacy" not in a.stats
    s = Case(dict(base_config, obfuscation="sign")).client_update()
    assert s.stats["bits_per_parameter"] == 1.0
    assert set(torch.cat([t.flatten() for t in s.tensors.values()]).unique().tolist()) <= {-1.0, 1.0}
