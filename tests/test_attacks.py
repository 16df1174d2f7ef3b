"""Attack engine: correctness of the fast matching, label recovery, and the tiny-case quality floors.

Tiny case (docs/results.md states the same floors): one 32x32 photo (scikit-image's astronaut), label 3 of 10,
no obfuscation, FedSGD.

* ``dlg`` and ``idlg`` on ``lenet-dlg`` (the sigmoid LeNet of DLG's reference code): PSNR > 30 dB.
* ``inverting-gradients`` on ``lenet`` (ROG's ReLU LeNet): PSNR > 20 dB.
* ``rog`` on ``lenet``: within 1 dB of its ceiling, the PSNR of the image downsampled x4 and upsampled back
  with torch's bicubic interpolation.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedleak.attacks import attack
from fedleak.attacks.matching import Matcher, matching_mode
from fedleak.attacks.simulate import ForwardModel
from fedleak.experiment.case import Case
from fedleak.client.data import ImageSet, load_builtin
from fedleak.errors import ConfigError, NumericalError
from fedleak.metrics.scores import psnr


def tiny_case(model="lenet", activation="relu", obfuscation=None, protocol=None, n=1, size=32, labels=None,
              num_classes=10):
    s = load_builtin(size, count=n)
    y = torch.tensor(labels if labels is not None else [3 + i for i in range(n)])
    cfg = {"data": {"size": size, "batch_size": n}, "attack": "rog",
           "model": {"name": model, "num_classes": num_classes, "activation": activation},
           "obfuscation": obfuscation or []}
    if protocol:
        cfg["protocol"] = protocol
    return Case(cfg, images=ImageSet(s.images, y, s.names))


def _fwd(case):
    m = case.server_view().build_model()
    m.train()
    return m, ForwardModel(m, dict(m.named_parameters()), dict(m.named_buffers()), big_threshold=1 << 12)


@pytest.mark.parametrize("protocol", [None, {"name": "fedavg", "local_steps": 3, "lr": 0.1, "local_batch_size": 1}])
@pytest.mark.parametrize("loss", ["l2", "cosine", "l2-relative"])
def test_fast_matching_equals_dense(protocol, loss):
    """Gram / low-rank evaluation of big linear layers gives the same loss and image gradient as dense."""
    case = tiny_case(n=2, protocol=protocol)
    u = case.client_update()
    m, _ = _fwd(case)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    res = []
    for fast in (True, False):
        f = ForwardModel(m, dict(m.named_parameters()), {}, big_threshold=1 << 12, fast=fast)
        assert bool(f.big) == fast
        rep = f.fedsgd(x, case.labels) if protocol is None else f.fedavg(x, case.labels, 0.1, 3, 1)
        val = Matcher(u.tensors, loss, "plain", None, tuple(f.big))(rep)
        (g,) = torch.autograd.grad(val, x)
        res.append((float(val.detach()), g))
        f.close()
    assert res[0][0] == pytest.approx(res[1][0], rel=1e-4, abs=1e-6)
    assert torch.allclose(res[0][1], res[1][1], rtol=1e-3, atol=1e-6 * float(res[1][1].abs().max()))


@pytest.mark.parametrize("loss", ["l2", "cosine"])
def test_parameters_of_weight_zero_are_not_differentiated_and_nothing_else_changes(loss):
    """A matcher's weight-0 parameters (``Matcher.ignored``) are left out of the simulated gradient (their double
    backward is most of an iteration's cost); the loss and its image gradient are those of the full gradient."""
    case = tiny_case(n=2)
    u = case.client_update()
    _, f = _fwd(case)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    convs = {k: 0.0 for k in u.tensors if k.startswith("features.")}
    m = Matcher(u.tensors, loss, "plain", convs, tuple(f.big))
    assert m.ignored == set(convs) and convs
    out = []
    for skip in (frozenset(), m.ignored):
        rep = f.fedsgd(x, case.labels, skip=skip)
        val = m(rep)
        (g,) = torch.autograd.grad(val, x)
        out.append((rep, float(val.detach()), g))
    assert set(out[0][0].dense) - set(out[1][0].dense) == set(convs)
    assert out[1][1] == pytest.approx(out[0][1], rel=1e-6)
    assert torch.allclose(out[1][2], out[0][2], rtol=1e-5, atol=1e-7 * float(out[0][2].abs().max()))
    # skipping every small parameter of a model without a factorised layer keeps them (no gradient otherwise)
    m2, plain = _fwd(case)
    plain = ForwardModel(m2, dict(m2.named_parameters()), {}, big_threshold=1 << 30)
    assert set(plain.fedsgd(x, case.labels, skip=frozenset(plain.small_names)).dense) == set(plain.small_names)


@pytest.mark.parametrize("loss,mode,obf", [("l2", "plain", []), ("cosine", "plain", []),
                                           ("l2", "mask", [{"name": "topk", "sparsity": 0.9}]),
                                           ("l2", "sign", [{"name": "sign"}])])
def test_per_layer_losses_are_each_parameter_alone(loss, mode, obf):
    """Matcher.losses gives the loss and, for each parameter, the loss of a matcher that compares only that
    parameter; for L2 and sign matching (sums over coordinates) the per-parameter losses add up to the total."""
    case = tiny_case(n=2, obfuscation=obf)
    u = case.client_update()
    _, f = _fwd(case)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    rep = f.fedsgd(x, case.labels)
    m = Matcher(u.tensors, loss, mode, None, tuple(f.big))
    total, layers = m.losses(rep)
    assert float(total.detach()) == float(m(rep).detach())
    per = {k: float(v.detach()) for k, v in layers.items()}
    assert set(per) == set(u.tensors) and f.big  # the big (factorised) layer is among them
    for k in per:
        alone = Matcher(u.tensors, loss, mode, {j: float(j == k) for j in u.tensors}, tuple(f.big))(rep)
        assert per[k] == pytest.approx(float(alone.detach()), rel=1e-5, abs=1e-9), k
    if loss == "l2":
        assert sum(per.values()) == pytest.approx(float(total.detach()), rel=1e-5)
    else:  # cosine over the whole update is not the sum of per-layer cosines
        assert all(0 <= v <= 2 for v in per.values())
    f.close()


@pytest.mark.parametrize("mode,obf", [("plain", []), ("mask", [{"name": "topk", "sparsity": 0.9}])])
def test_relative_l2_is_l2_over_the_received_energy(mode, obf):
    """``l2-relative`` is the squared distance over |t|^2 (the sent coordinates' energy under top-k), computed
    independently here from the dense simulated update."""
    case = tiny_case(n=2, obfuscation=obf)
    u = case.client_update()
    _, f = _fwd(case)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    rep = f.fedsgd(x, case.labels)
    dense = {k: v.detach().double() for k, v in rep.materialise().items()}
    sent = {k: (t != 0).double() if mode == "mask" else torch.ones_like(t, dtype=torch.double)
            for k, t in u.tensors.items()}
    l2 = sum(float((((dense[k] - t.double()) * sent[k]) ** 2).sum()) for k, t in u.tensors.items())
    tt = sum(float((t.double() ** 2).sum()) for t in u.tensors.values())
    rel = float(Matcher(u.tensors, "l2-relative", mode, None, tuple(f.big))(rep).detach())
    assert rel == pytest.approx(l2 / tt, rel=1e-4)
    assert float(Matcher(u.tensors, "l2", mode, None, tuple(f.big))(rep).detach()) == pytest.approx(l2, rel=1e-4)
    f.close()


@pytest.mark.parametrize("protocol", [None, {"name": "fedavg", "local_steps": 4, "lr": 0.05, "local_batch_size": 1}])
def test_simulated_update_at_truth_equals_client_update(protocol):
    case = tiny_case(n=2, protocol=protocol)
    u = case.client_update()
    _, f = _fwd(case)
    rep = f.fedsgd(case.images, case.labels) if protocol is None else f.fedavg(case.images, case.labels, 0.05, 4, 1)
    dense = rep.materialise()
    for k, t in u.tensors.items():  # (theta0 - theta_tau) / lr amplifies float32 rounding: compare norms
        assert float((dense[k].detach() - t).norm() / t.norm()) < 1e-4, k


@pytest.mark.parametrize("obf,mode", [([{"name": "topk", "sparsity": 0.99}], "mask"),
                                      ([{"name": "prune", "percent": 90}], "mask"),
                                      ([{"name": "sign"}], "sign"),
                                      ([{"name": "qsgd", "levels": 4}], "plain")])
def test_aware_matching_is_minimised_by_truth(obf, mode):
    """Obfuscation-aware losses are (near) zero at the true image, unlike plain L2 against a sparse update."""
    case = tiny_case(obfuscation=obf)
    u = case.client_update()
    assert matching_mode(u.obfuscation, "auto") == mode
    _, f = _fwd(case)
    aware = Matcher(u.tensors, "l2", mode, None, tuple(f.big))
    plain = Matcher(u.tensors, "l2", "plain", None, tuple(f.big))
    at_truth = f.fedsgd(case.images, case.labels)
    noise = f.fedsgd(torch.rand_like(case.images), case.labels)
    if mode == "mask":
        assert float(aware(at_truth)) < 1e-6 * float(plain(at_truth))
    if mode == "sign":
        assert float(aware(at_truth)) < 0.5 * float(aware(noise))
    assert float(aware(at_truth)) < float(aware(noise))


def test_label_recovery_idlg_and_batches():
    case = tiny_case(num_classes=10, labels=[7])
    view, upd = case.server_view(), case.client_update()
    rec = attack("rog", view, upd, labels="idlg", iterations=1)
    assert rec.labels.tolist() == [7]
    case = tiny_case(n=4, labels=[1, 5, 6, 9], num_classes=10)
    for method in ("yin", "llg"):
        rec = attack("rog", case.server_view(), case.client_update(), labels=method, iterations=1)
        assert sorted(rec.labels.tolist()) == [1, 5, 6, 9], method
    case = tiny_case(n=4, labels=[2, 2, 2, 8], num_classes=10)
    rec = attack("rog", case.server_view(), case.client_update(), labels="llg", iterations=1)
    assert sorted(rec.labels.tolist()) == [2, 2, 2, 8]


def test_bad_update_is_reported():
    case = tiny_case()
    view, upd = case.server_view(), case.client_update()
    k = next(iter(upd.tensors))
    bad = dict(upd.tensors)
    bad[k] = bad[k].reshape(-1)
    upd.tensors = bad
    with pytest.raises(ConfigError, match=k.replace(".", r"\.")):
        attack("rog", view, upd, iterations=1)
    upd = case.client_update()
    upd.tensors[k] = upd.tensors[k].clone()
    upd.tensors[k].view(-1)[0] = float("nan")
    with pytest.raises(NumericalError, match="NaN"):
        attack("rog", view, upd, iterations=1)
    with pytest.raises(ConfigError, match="valid"):
        attack("rog", view, case.client_update(), optimizer="sgdd")
    with pytest.raises(ConfigError, match="unknown attack"):
        attack("rogg", view, case.client_update())


def test_labels_known_but_not_shared():
    case = tiny_case()
    case.config.protocol.share_labels = False
    with pytest.raises(ConfigError, match="share_labels"):
        attack("rog", case.server_view(), case.client_update(), labels="known", iterations=1)


# --- tiny-case quality floors (the numbers docs/results.md states) --------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["dlg", "idlg"])
def test_dlg_tiny_case(name):
    case = tiny_case(model="lenet-dlg", activation="sigmoid")
    rec = attack(name, case.server_view(), case.client_update())
    assert float(psnr(case.images, rec.images)) > 30.0
    assert rec.labels.tolist() == [3]


@pytest.mark.slow
def test_inverting_gradients_tiny_case():
    case = tiny_case()
    rec = attack("inverting-gradients", case.server_view(), case.client_update())
    assert float(psnr(case.images, rec.images)) > 20.0


def rog_ceiling(x: torch.Tensor, scale: int = 4) -> float:
    lo = F.interpolate(x, scale_factor=1 / scale, mode="bicubic", align_corners=False)
    up = F.interpolate(lo, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    return float(psnr(x, up))


@pytest.mark.slow
def test_rog_tiny_case_reaches_its_ceiling():
    case = tiny_case()
    rec = attack("rog", case.server_view(), case.client_update(), iterations=300)
    ceiling = rog_ceiling(case.images)
    assert float(psnr(case.images, rec.images)) > ceiling - 1.0


def test_tv_size_scales_the_tv_weight_with_the_image_side():
    case = tiny_case()  # 32x32
    view, upd = case.server_view(), case.client_update()
    common = dict(name="inverting-gradients", iterations=3, labels="known")
    a = attack({**common, "tv": 0.4, "tv_size": 128}, view, upd)  # 0.4 * 32 / 128 = 0.1
    b = attack({**common, "tv": 0.1, "tv_size": None}, view, upd)
    c = attack({**common, "tv": 0.4, "tv_size": None}, view, upd)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    with pytest.raises(ConfigError, match="tv_size"):
        attack({**common, "tv_size": 0}, view, upd)


def test_precision_option_is_validated_and_resolved():
    from fedleak.attacks.engine import EngineConfig, resolve_precision

    with pytest.raises(ConfigError, match="precision.*valid: float32, bfloat16, auto"):
        EngineConfig(precision="half").validate()
    assert resolve_precision(EngineConfig(precision="float32"), 16) is None
    assert resolve_precision(EngineConfig(precision="bfloat16"), 1) is torch.bfloat16
    assert resolve_precision(EngineConfig(precision="bfloat16", dtype="float64"), 16) is None  # float64 stays exact
    assert resolve_precision(EngineConfig(precision="auto", optimizer="lbfgs"), 16) is None  # L-BFGS stays exact
    assert resolve_precision(EngineConfig(precision="auto"), 1) is None  # batch 1: no gain measured


def test_bfloat16_simulation_approximates_the_float32_gradient():
    case = tiny_case(n=4, size=32)
    upd = case.client_update()
    net = case.server_view().build_model()
    for p in net.parameters():
        p.requires_grad_(False)
    params, buffers = dict(net.named_parameters()), dict(net.named_buffers())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grads = {}
    for name, ac in (("f32", None), ("bf16", torch.bfloat16)):
        fwd = ForwardModel(net, params, buffers, autocast=ac)
        rep = fwd.fedsgd(x, upd.labels).materialise()
        fwd.close()
        assert all(v.dtype == torch.float32 for v in rep.values())
        grads[name] = torch.cat([v.flatten() for v in rep.values()])
    cos = F.cosine_similarity(grads["f32"], grads["bf16"], 0)
    assert cos > 0.99  # bfloat16 has an 8-bit mantissa: close, not equal
    assert not torch.equal(grads["f32"], grads["bf16"])
    # and the attack runs end to end in bfloat16, reporting it
    rec = attack({"name": "rog", "iterations": 3, "precision": "bfloat16"}, case.server_view(), upd)
    assert rec.info["precision"] == "bfloat16" and torch.isfinite(rec.images).all()


def test_qsgd_likelihood_is_the_probability_of_stochastic_rounding():
    """exp(-nll) of one entry is the frequency with which QSGD sends that level (Monte Carlo over its rounding)."""
    from fedleak.attacks.losses import qsgd_nll
    from fedleak.client.obfuscations import build_pipeline
    from fedleak.client.obfuscations.base import ObfContext

    g = torch.tensor([3.0, 1.3, -0.45, 0.2])  # max 3 and levels 4: step 1, r = 3, 1.3, -0.45, 0.2
    qsgd = build_pipeline([{"name": "qsgd", "levels": 4}])
    draws = 20000
    # one tensor of `draws` copies: its max is still 3, so every copy is rounded with step 1, independently
    sent = qsgd.apply({"g": g.repeat(draws)}, ObfContext(generator=torch.Generator().manual_seed(0)))["g"]
    sent = sent.reshape(draws, len(g))
    for j in range(1, 4):
        for level in torch.unique(sent[:, j]):
            freq = float((sent[:, j] == level).double().mean())
            prob = float(torch.exp(-qsgd_nll(g[j:j + 1], level.reshape(1), 1.0)))
            assert prob == pytest.approx(freq, abs=0.015), (j, float(level))
    assert float(qsgd_nll(g[:1], torch.tensor([3.0]), 1.0)) == pytest.approx(0.0, abs=1e-6)  # the max is exact


def test_qsgd_likelihood_matcher_reads_the_step_and_refuses_other_updates():
    case = tiny_case(obfuscation=[{"name": "qsgd", "levels": 4}])
    u = case.client_update()
    _, f = _fwd(case)
    from fedleak.attacks.matching import quantiser_of

    m = Matcher(u.tensors, "qsgd-likelihood", "plain", None, tuple(f.big), quantiser_of(u))
    for k, t in u.tensors.items():
        if t.abs().max() > 0:  # every received entry is a whole number of steps
            levels = t.double() / m.steps[k]
            assert float((levels - levels.round()).abs().max()) < 1e-4, k
    at_truth, noise = f.fedsgd(case.images, case.labels), f.fedsgd(torch.rand_like(case.images), case.labels)
    assert float(m(at_truth).detach()) < float(m(noise).detach())
    plain = tiny_case().client_update()
    with pytest.raises(ConfigError, match="qsgd-likelihood needs an update whose last obfuscation is qsgd"):
        Matcher(plain.tensors, "qsgd-likelihood", "plain", None, tuple(f.big), quantiser_of(plain))
    f.close()


def test_qsgd_likelihood_gradient_is_the_derivative_of_the_kernel():
    from fedleak.attacks.losses import QSGD_FLOOR, qsgd_nll

    gen = torch.Generator().manual_seed(1)
    g = (torch.randn(200, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    t = torch.round(torch.randn(200, generator=gen, dtype=torch.float64) * 2) * 0.7
    qsgd_nll(g, torch.round(t / 0.7), 0.7).backward()
    fused, g.grad = g.grad.clone(), None
    d = (torch.round(t / 0.7) - g / 0.7).abs()
    plain = (-torch.log1p(-d.clamp(max=1 - QSGD_FLOOR)) + (d - 1 + QSGD_FLOOR).clamp_min(0) / QSGD_FLOOR).sum()
    plain.backward()
    assert torch.allclose(fused, g.grad, rtol=1e-4, atol=1e-5)


def test_qsgd_likelihood_on_a_factorised_layer_matches_the_whole_gradient(monkeypatch):
    """A large linear layer is scored block by block on ``D^T H``, never formed: the loss and its gradients with
    respect to both factors equal those of the whole gradient, for blocks that do and do not divide the columns."""
    import fedleak.attacks.matching as matching
    from fedleak.attacks.matching import GradRep
    from fedleak.client.obfuscations import build_pipeline
    from fedleak.client.obfuscations.base import ObfContext

    gen = torch.Generator().manual_seed(2)
    D, H = torch.randn(3, 300, generator=gen), torch.rand(3, 400, generator=gen) ** 4
    quantiser = matching.quantiser_settings({"name": "qsgd", "levels": 4})
    t = build_pipeline([quantiser]).apply({"w": D.t() @ H}, ObfContext(generator=gen))["w"]
    assert 0 < int((t != 0).sum()) < t.numel()
    Dx = (D + 0.3 * torch.randn(3, 300, generator=gen)).requires_grad_(True)
    Hx = (H * 1.2).requires_grad_(True)
    whole = Matcher({"w": t}, "qsgd-likelihood", quantiser=quantiser)(GradRep(dense={"w": Dx.t() @ Hx}))
    want = torch.autograd.grad(whole, (Dx, Hx))
    for entries in (300 * 7, 300 * 400, 1 << 18):  # 7 columns a block (400 = 57 x 7 + 1), one block, the default
        monkeypatch.setattr(matching, "FACTOR_BLOCK_ENTRIES", entries)
        m = Matcher({"w": t}, "qsgd-likelihood", factor_names=("w",), quantiser=quantiser)
        got = m(GradRep(factors={"w": (Dx, Hx)}))
        assert float(got.detach()) == pytest.approx(float(whole.detach()), rel=1e-5)
        for a, b in zip(torch.autograd.grad(got, (Dx, Hx)), want):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7 * float(b.abs().max()))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the precision option's autocast leaves the loss exact
        assert float(m(GradRep(factors={"w": (Dx, Hx)})).detach()) == pytest.approx(float(whole.detach()), rel=1e-5)
