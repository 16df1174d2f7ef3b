"""Issue 5: the malicious-imprint scenario and the imprint / ldp-imprint attacks.

Real properties: exact readout without noise; the probe-based noise estimate; the confidence-interval
filter never drops clearly significant coordinates; the planted structure leaves predictions unchanged and
takes (almost) all of the clipping budget.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedleak.attacks import attack
from fedleak.attacks.readout import (ci_filter, estimate_noise, interval_halfwidth, segment_rows,
                                     sliding_dct_filter)
from fedleak.errors import ConfigError


def _case(attack_cfg, obfuscation=None, size=32, batch=8, **server):
    from fedleak.experiment.case import Case

    cfg = {
        "data": {"source": "builtin", "size": size, "batch_size": batch},
        "model": {"name": "lenet", "num_classes": 1000},
        "server": {"name": "malicious-imprint", "public_count": 64, **server},
        "obfuscation": obfuscation or [],
        "attack": dict(attack_cfg),
    }
    return Case(cfg)


def _needs(name):
    from fedleak.client.obfuscations import OBFUSCATIONS

    if name not in OBFUSCATIONS:
        pytest.skip(f"obfuscation {name!r} not available yet")


def _alone(case) -> torch.Tensor:
    """True characteristic values -> which samples are alone between consecutive thresholds (test-side only)."""
    lay = case.server_extra["imprint"]
    a = case.model.direction.double()
    v = case.images.reshape(case.images.shape[0], -1).double() @ a
    ts = np.sort(np.concatenate([np.asarray(f["thresholds"], np.float64) for f in lay["families"]]))
    bins = np.searchsorted(ts, v.numpy())
    return torch.tensor([int((bins == b).sum()) == 1 for b in bins])


# ------------------------------------------------------------------------------------------ exact readout
@pytest.mark.parametrize("layout", ["window", "nested"])
@pytest.mark.parametrize("name", ["imprint", "ldp-imprint"])
def test_noise_free_readout_is_exact(attack_cfg, layout, name):
    from fedleak import metrics as M

    case = _case(attack_cfg, layout=layout)
    update = case.client_update()
    rec = attack(name, case.server_view(), update)
    alone = _alone(case)
    assert alone.sum() >= 6  # the test is meaningful: most samples have a bin of their own
    ev = M.evaluate(case.images, rec)
    psnr = torch.tensor(ev["per_image"]["psnr"])
    assert (psnr[alone] > 60).all(), psnr
    assert rec.images.shape == case.images.shape
    assert rec.info["recovered"] >= int(alone.sum())


def test_readout_ignores_update_scale(attack_cfg):
    """Clipping (scaling the whole update) does not change the ratio readout."""
    from fedleak import metrics as M

    case = _case(attack_cfg, [{"name": "clip", "max_norm": 1e-3}])
    update = case.client_update()
    assert update.stats["sent_norm"] <= 1.0001e-3
    rec = attack("ldp-imprint", case.server_view(), update)
    psnr = torch.tensor(M.evaluate(case.images, rec)["per_image"]["psnr"])
    assert (psnr[_alone(case)] > 60).all()


# ------------------------------------------------------------------------------------------ noise estimate
@pytest.mark.parametrize("dist", ["gaussian", "laplace"])
@pytest.mark.parametrize("sigma", [1e-4, 0.3, 7.0])
def test_noise_estimate_synthetic(dist, sigma):
    g = torch.Generator().manual_seed(3)
    n = 4 * 3073  # four probe rows at 32x32
    if dist == "gaussian":
        e = sigma * torch.randn(n, generator=g, dtype=torch.float64)
    else:
        b = sigma / math.sqrt(2)
        e = b * (torch.empty(n, dtype=torch.float64).exponential_(generator=g)
                 - torch.empty(n, dtype=torch.float64).exponential_(generator=g))
    est = estimate_noise(e)
    assert est["distribution"] == dist
    assert abs(est["sigma"] - sigma) / sigma < 0.10


def test_noise_estimate_zero():
    est = estimate_noise(torch.zeros(100))
    assert est["sigma"] == 0.0 and est["distribution"] == "none"


@pytest.mark.parametrize("mechanism,z", [("gaussian", 0.02), ("laplace", 0.02)])
def test_noise_estimate_from_probes_of_a_real_update(attack_cfg, mechanism, z):
    _needs("ldp")
    case = _case(attack_cfg, [{"name": "ldp", "max_norm": 1.0, "noise_multiplier": z, "mechanism": mechanism}],
                 size=16, batch=4)
    update = case.client_update()
    rec = attack("ldp-imprint", case.server_view(), update)
    true_std = case.pipeline.steps[0].noise_std()
    est = rec.info["noise"]
    assert est["distribution"] == mechanism
    assert abs(est["sigma"] - true_std) / true_std < 0.10
    probes = case.server_extra["imprint"]["probes"]
    assert est["n"] == len(probes) * (16 * 16 * 3 + 2)  # pixels, const column, bias


# ------------------------------------------------------------------------------------------------ filter
@pytest.mark.parametrize("dist", ["gaussian", "laplace"])
def test_filter_never_drops_significant_coordinates(dist):
    g = torch.Generator().manual_seed(11)
    n, sigma, conf = 200_000, 0.5, 0.99
    h = interval_halfwidth(sigma, dist, conf, scale=1.5)
    # margin: noise exceeds it with probability < 1e-9 per coordinate
    margin = 6.0 * sigma if dist == "gaussian" else sigma / math.sqrt(2) * math.log(1e9)
    true = torch.zeros(n, dtype=torch.float64)
    big = torch.rand(n, generator=g) < 0.1
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    true[big] = sign[big] * (h + margin + 3 * torch.rand(int(big.sum()), generator=g, dtype=torch.float64))
    if dist == "gaussian":
        noise = sigma * torch.randn(n, generator=g, dtype=torch.float64)
    else:
        b = sigma / math.sqrt(2)
        noise = b * (torch.empty(n, dtype=torch.float64).exponential_(generator=g)
                     - torch.empty(n, dtype=torch.float64).exponential_(generator=g))
    keep = ci_filter(true + noise, sigma, dist, conf, scale=1.5)
    assert keep[big].all()
    # and on pure noise it keeps about 1 - confidence of the entries (scale 1)
    fp = ci_filter(noise, sigma, dist, conf).double().mean().item()
    assert abs(fp - (1 - conf)) < 0.003


def test_interval_halfwidth_values():
    assert interval_halfwidth(1.0, "gaussian", 0.95) == pytest.approx(1.959964, rel=1e-5)
    assert interval_halfwidth(math.sqrt(2), "laplace", 0.99) == pytest.approx(math.log(100), rel=1e-9)
    assert interval_halfwidth(1.0, "gaussian", 0.95, scale=2.0) == pytest.approx(2 * 1.959964, rel=1e-5)


def test_dct_filter_keeps_large_coefficients_and_is_orthonormal():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 16, generator=g, dtype=torch.float64)
    # threshold 0: nothing is dropped, the overlapped transform reconstructs the input exactly
    assert torch.allclose(sliding_dct_filter(x, 0.0, 8, wiener=False), x, atol=1e-12)
    # a constant image has only (large) DC coefficients: kept, image unchanged
    c = torch.full((3, 16, 16), 0.7, dtype=torch.float64)
    assert torch.allclose(sliding_dct_filter(c, 1.0, 8, wiener=False), c, atol=1e-12)
    # the Wiener pass only shrinks it by e^2 / (e^2 + sigma^2), e = 8 * 0.7 * sqrt(3) the luminance DC per patch
    w = sliding_dct_filter(c, 1.0, 8, sigma=0.1)
    e2 = (8 * 0.7 * math.sqrt(3)) ** 2
    assert torch.allclose(w, c * (e2 / (e2 + 0.01)), atol=1e-9)
    # pure noise below the threshold everywhere is removed
    n = 0.01 * torch.randn(3, 16, 16, generator=g, dtype=torch.float64)
    assert sliding_dct_filter(n, 1.0, 8, wiener=False).abs().max() == 0


def test_segment_rows_recovers_levels():
    g = torch.Generator().manual_seed(5)
    D, sigma = 500, 0.05
    levels = [torch.randn(D, generator=g, dtype=torch.float64) * 0.2 for _ in range(3)]
    rows = torch.stack([levels[0]] * 5 + [levels[1]] * 7 + [levels[2]] * 4 + [torch.zeros(D, dtype=torch.float64)] * 6)
    rows = rows + sigma * torch.randn(rows.shape, generator=g, dtype=torch.float64)
    penalty = sigma**2 * (D + 4 * math.sqrt(2 * D))
    segs, tail = segment_rows(rows, penalty)
    assert segs == [(0, 5), (5, 12), (12, 16)] and tail == 16


# ------------------------------------------------------------------------------------------ the structure
def test_structure_keeps_predictions_and_takes_the_budget(attack_cfg):
    case = _case(attack_cfg)
    rep = case.scenario_metrics()["imprint_report"]  # evaluation stage: compares with the true batch
    assert rep["public_prediction_agreement"] == 1.0
    assert rep["client_prediction_agreement"] == 1.0
    assert rep["client_accuracy_planted"] == rep["client_accuracy_original"]
    assert rep["public_structure_gradient_share"] > 0.999
    update = case.client_update()
    lay = case.server_extra["imprint"]
    W, b = update.tensors["imprint.weight"], update.tensors["imprint.bias"]
    assert (W[lay["probes"]] == 0).all() and (b[lay["probes"]] == 0).all()  # probes: exactly zero gradient
    share = float(W.double().pow(2).sum() + b.double().pow(2).sum()) / update.stats["raw_norm"] ** 2
    assert share > 0.999
    # the server can rebuild exactly the model it sent
    view = case.server_view()
    m = view.build_model()
    with torch.no_grad():
        assert torch.equal(m(case.images), case.model(case.images))


def test_public_data_excludes_evaluation_photos():
    from fedleak.client.data import BUILTIN_PHOTOS
    from fedleak.server.public import public_files

    names = {p.name for p in public_files("auto", exclude_builtin=True)}
    assert names and not names & {f for f, _ in BUILTIN_PHOTOS}


@pytest.mark.parametrize("characteristic", ["dct", "subject-brightness"])
def test_other_characteristics_read_out_exactly(attack_cfg, characteristic):
    from fedleak import metrics as M

    case = _case(attack_cfg, characteristic=characteristic, size=16, batch=4, bins=64)
    rec = attack("ldp-imprint", case.server_view(), case.client_update())
    alone = _alone(case)
    psnr = torch.tensor(M.evaluate(case.images, rec)["per_image"]["psnr"])
    assert alone.any() and (psnr[alone] > 60).all()


def test_bad_options_and_missing_structure(attack_cfg, base_config):
    from fedleak.experiment.case import Case

    with pytest.raises(ConfigError, match="characteristic"):
        _case(attack_cfg, characteristic="hue")
    with pytest.raises(ConfigError, match="probes"):
        _case(attack_cfg, probes=0)
    with pytest.raises(ConfigError, match="unknown option"):
        _case(attack_cfg, binz=3)
    with pytest.raises(ConfigError, match="uniform_mix"):
        _case(attack_cfg, uniform_mix=1.0)
    honest = Case(base_config)
    with pytest.raises(ConfigError, match="malicious-imprint"):
        attack("ldp-imprint", honest.server_view(), honest.client_update())
    with pytest.raises(ConfigError, match="filter_domain"):
        attack("ldp-imprint", honest.server_view(), honest.client_update(), filter_domain="fourier")


# ----------------------------------------------------------------------------------------------- with noise
def test_ldp_noise_denoising_beats_plain_readout(attack_cfg):
    _needs("ldp")
    from fedleak import metrics as M

    case = _case(attack_cfg, [{"name": "ldp", "max_norm": 1.0, "noise_multiplier": 1e-2}], size=16, batch=4)
    update = case.client_update()
    view = case.server_view()
    den = M.evaluate(case.images, attack("ldp-imprint", view, update))["mean"]
    plain = M.evaluate(case.images, attack("imprint", view, update))["mean"]
    assert den["ssim"] > plain["ssim"] + 0.1
    assert den["psnr"] > plain["psnr"] + 3


def test_dpsgd_per_example_path(attack_cfg):
    _needs("dpsgd")
    from fedleak import metrics as M

    case = _case(attack_cfg, [{"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": 0.0}], size=16, batch=4)
    rec = attack("ldp-imprint", case.server_view(), case.client_update())
    psnr = torch.tensor(M.evaluate(case.images, rec)["per_image"]["psnr"])
    assert (psnr[_alone(case)] > 60).all()  # per-example clipping rescales each sample: the ratio is unaffected
