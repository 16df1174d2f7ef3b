"""BatchNorm done as deployed: the client trains in train mode, FedAvg uploads the running statistics, the
attacker's simulation reproduces the client exactly, and the ``bn-stats`` prior (GradInversion-style) matches the
batch's feature statistics to the running statistics of the sent model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedleak.attacks import attack
from fedleak.attacks.engine import EngineConfig
from fedleak.attacks.engine.loop import prepare
from fedleak.attacks.engine.parts import resolve_parts
from fedleak.attacks.priors import PRIORS, BatchNormStatistics
from fedleak.attacks.simulate import ForwardModel
from fedleak.client.data import ImageSet, load_builtin
from fedleak.client.models import build_model
from fedleak.client.obfuscations import ObfContext, build_pipeline
from fedleak.client.protocols import buffer_dict, fedavg, fedsgd, param_dict
from fedleak.client.update import Update
from fedleak.errors import ConfigError
from fedleak.experiment.case import Case

SIZE = 16


def bn_model(seed=3, dtype=torch.float32, activation="relu") -> nn.Module:
    return build_model("resnet18-cifar", num_classes=10, image_size=SIZE, width=0.125, seed=seed,
                       activation=activation).to(dtype)


def batch(n=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def ctx():
    return ObfContext(generator=torch.Generator().manual_seed(0))


def bn_case(protocol: dict, n=3) -> Case:
    s = load_builtin(SIZE, count=n)
    cfg = {"data": {"size": SIZE, "batch_size": n}, "protocol": protocol,
           "model": {"name": "resnet18-cifar", "num_classes": 10, "width": 0.125}}
    return Case(cfg, images=ImageSet(s.images, torch.arange(n) + 2, s.names))


def module_grads(model, x, y, train: bool) -> dict:
    m = copy.deepcopy(model).train(train)
    F.cross_entropy(m(x), y).backward()
    return {k: p.grad.detach().clone() for k, p in m.named_parameters()}


# ---------------------------------------------------------------------------------------------- the client
def test_fedsgd_runs_batchnorm_in_train_mode_whatever_the_models_mode():
    model = bn_model().eval()
    x, y = batch()
    g = fedsgd(model, param_dict(model), buffer_dict(model), x, y, build_pipeline([]), ctx())
    train_ref, eval_ref = module_grads(model, x, y, True), module_grads(model, x, y, False)
    for k in g:
        torch.testing.assert_close(g[k], train_ref[k], rtol=1e-4, atol=1e-6)
    k = "stem.0.weight"
    assert not torch.allclose(g[k], eval_ref[k], rtol=1e-2, atol=1e-4)  # eval mode would be another gradient
    assert not model.training  # the caller's mode is restored


def test_fedavg_updates_the_running_statistics_once_per_local_step():
    model = bn_model()
    x, y = batch(n=4)
    lr, steps = 0.05, 3
    buffers = buffer_dict(model)
    sent = {k: v.clone() for k, v in buffers.items()}
    delta, final = fedavg(model, param_dict(model), buffers, x, y, build_pipeline([]), ctx(), lr, steps, 2)
    ref = copy.deepcopy(model).train()
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    for sl in (slice(0, 2), slice(2, 4), slice(0, 2)):
        opt.zero_grad()
        F.cross_entropy(ref(x[sl]), y[sl]).backward()
        opt.step()
    for k, v in ref.named_buffers():
        torch.testing.assert_close(buffers[k], v, rtol=1e-5, atol=1e-6)
    for k, p in ref.named_parameters():
        torch.testing.assert_close(final[k], p.detach(), rtol=1e-4, atol=1e-6)
    assert int(buffers["stem.1.num_batches_tracked"]) == steps
    assert not torch.equal(buffers["stem.1.running_mean"], sent["stem.1.running_mean"])
    for k, v in model.named_buffers():  # the model's own buffers (the sent state) are untouched
        assert torch.equal(v, sent[k])


def test_fedavg_update_carries_the_buffers_and_fedsgd_none(tmp_path):
    steps = 2
    u = bn_case({"name": "fedavg", "local_steps": steps, "lr": 0.05}).client_update()
    c = bn_case({"name": "fedavg", "local_steps": steps, "lr": 0.05})
    assert set(u.buffers) == {k for k, _ in c.model.named_buffers()}
    assert set(u.tensors) == {k for k, _ in c.model.named_parameters()}
    assert int(u.buffers["stem.1.num_batches_tracked"]) == steps
    assert not torch.allclose(u.buffers["stem.1.running_var"], torch.ones_like(u.buffers["stem.1.running_var"]))
    u.save(tmp_path / "u.safetensors")
    back = Update.load(tmp_path / "u.safetensors")
    assert back.buffers.keys() == u.buffers.keys() and back.tensors.keys() == u.tensors.keys()
    for k in u.buffers:
        assert torch.equal(back.buffers[k], u.buffers[k])
    assert bn_case({"name": "fedsgd"}).client_update().buffers == {}


@pytest.mark.parametrize("protocol", [{"name": "fedsgd"},
                                      {"name": "fedavg", "local_steps": 3, "lr": 0.05, "local_batch_size": 2}])
def test_the_attacks_simulation_at_the_true_images_is_the_received_update(protocol):
    case = bn_case(protocol, n=4)
    u = case.client_update()
    cfg = EngineConfig.model_validate({"labels": "known", "iterations": 1})
    problem = prepare(case.server_view(), u, cfg, resolve_parts(cfg))
    sent = {k: v.clone() for k, v in problem.fwd.buffers.items()}
    rep = problem.simulate(case.images, case.labels, False).materialise()
    for k, t in u.tensors.items():
        torch.testing.assert_close(rep[k], t, rtol=2e-3, atol=1e-5)
    if u.buffers:  # FedAvg: the simulated running statistics are the uploaded ones too
        for k, b in u.buffers.items():
            torch.testing.assert_close(problem.fwd.last_buffers[k], b, rtol=1e-5, atol=1e-6)
    for k, v in problem.fwd.buffers.items():  # simulating never changes the sent statistics
        assert torch.equal(v, sent[k])
    noise = torch.rand(case.images.shape, generator=torch.Generator().manual_seed(5))
    at_truth = float(problem.matcher(problem.simulate(case.images, case.labels, False)).detach())
    assert at_truth < 1e-3 * float(problem.matcher(problem.simulate(noise, case.labels, False)).detach())


# ---------------------------------------------------------------------------------------------- the prior
def _model_whose_running_stats_are(x: torch.Tensor, dtype=torch.float32, activation="relu") -> nn.Module:
    """A BN model whose running statistics are exactly the batch statistics of ``x`` (momentum 1, one pass)."""
    m = bn_model(dtype=dtype, activation=activation)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 1.0
    m.train()
    with torch.no_grad():
        m(x)
    return m


def _prior(model):
    params = {k: v.detach() for k, v in model.named_parameters()}
    return PRIORS.get("bn-stats").for_model(model, params, dict(model.named_buffers()))


def test_bn_stats_prior_is_zero_at_the_true_running_statistics_and_positive_elsewhere():
    x, _ = batch(n=4)
    m = _model_whose_running_stats_are(x)
    pen = _prior(m)
    assert float(pen(x)) < 1e-4
    noise, _ = batch(n=4, seed=7)
    assert float(pen(noise)) > 100 * max(float(pen(x)), 1e-6)
    assert float(pen(x.flip(-1) * 0.5)) > 1e-2
    for k, v in m.named_buffers():  # the prior never updates the sent statistics
        assert torch.equal(v, dict(_model_whose_running_stats_are(x).named_buffers())[k])


def test_bn_stats_prior_gradient_is_correct():
    x, _ = batch(n=2, dtype=torch.float64)
    other, _ = batch(n=2, seed=1, dtype=torch.float64)
    # a smooth activation: finite differences across ReLU kinks would not be a fair reference
    m = _model_whose_running_stats_are(other, dtype=torch.float64, activation="tanh")
    pen = BatchNormStatistics(m, {k: v.detach() for k, v in m.named_parameters()}, dict(m.named_buffers()))
    assert torch.autograd.gradcheck(pen, (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_bn_stats_prior_needs_batchnorm():
    m = build_model("lenet", num_classes=10, image_size=SIZE)
    with pytest.raises(ConfigError, match="bn-stats needs a model with BatchNorm"):
        _prior(m)


def test_bn_stats_prior_uses_the_sent_statistics_in_an_attack():
    case = bn_case({"name": "fedsgd"}, n=2)
    view, u = case.server_view(), case.client_update()
    cfg = EngineConfig.model_validate({"labels": "known", "iterations": 1, "priors": {"bn-stats": 0.1}})
    parts = resolve_parts(cfg)
    problem = prepare(view, u, cfg, parts)
    pen = parts.priors[0][2].for_model(problem.fwd.model, problem.fwd.params, problem.fwd.buffers)
    for name, _ in pen.layers:
        assert torch.equal(pen.buffers[f"{name}.running_mean"], view.global_state[f"{name}.running_mean"])
    rec = attack({"name": "inverting-gradients", "iterations": 3, "priors": {"bn-stats": 0.1}, "labels": "known"},
                 view, u)
    assert rec.images.shape == case.images.shape and torch.isfinite(torch.tensor(rec.loss_history)).all()
    plain = attack({"name": "inverting-gradients", "iterations": 3, "labels": "known"}, view, u)
    assert not torch.equal(plain.images, rec.images)  # the prior changed the optimisation


def test_a_batch_batchnorm_cannot_normalise_is_one_clear_line():
    model = build_model("resnet18", num_classes=10, image_size=32, width=0.125)  # 32x32 -> 1x1 at the last block
    x, y = torch.rand(1, 3, 32, 32), torch.tensor([1])
    with pytest.raises(ConfigError, match="more than one value per channel.*larger batch") as e:
        fedsgd(model, param_dict(model), buffer_dict(model), x, y, build_pipeline([]), ctx())
    assert "\n" not in str(e.value)
