"""Issue 14: many rounds (fedleak/client/rounds.py), the multi-round ldp-imprint readout, their epsilon and the
DP bound on a success notion the measurement shares (identification among k candidates)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from fedleak.attacks import attack
from fedleak.client.obfuscations import ObfContext
from fedleak.client.rounds import RoundsUpdate, first_rounds, run_rounds
from fedleak.errors import ConfigError, DataError
from fedleak.metrics import bounds

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Optimal order is:UserWarning")]


def _cfg(rounds=None, obf=None, size=16, batch=4, protocol="fedsgd", participation=None, server=True, **kw):
    proto = {"name": protocol, **kw}
    if rounds is not None:
        proto["rounds"] = rounds
    if participation is not None:
        proto["participation"] = participation
    return {"seed": 3, "data": {"source": "builtin", "size": size, "batch_size": batch},
            "model": {"name": "lenet", "num_classes": 1000}, "protocol": proto,
            "server": {"name": "malicious-imprint", "public_count": 64} if server else {"name": "honest"},
            "obfuscation": obf if obf is not None else [{"name": "ldp", "max_norm": 1.0, "noise_multiplier": 0.05}],
            "attack": {"name": "ldp-imprint"}}


def _update(cfg):
    from fedleak.experiment.case import Case

    case = Case(cfg)
    return case, case.client_update()


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_rounds_one_is_the_single_round_path_exactly(protocol):
    extra = {"local_steps": 2, "lr": 0.01} if protocol == "fedavg" else {}
    _, base = _update(_cfg(None, protocol=protocol, **extra))
    _, one = _update(_cfg(1, protocol=protocol, **extra))
    _, many = _update(_cfg(3, protocol=protocol, **extra))
    assert type(one) is type(base) and not isinstance(one, RoundsUpdate)
    assert base.tensors.keys() == one.tensors.keys()
    assert all(torch.equal(base.tensors[k], one.tensors[k]) for k in base.tensors)
    assert one.stats["privacy"] == base.stats["privacy"]
    # round 1 of R is the single-round update bit for bit (same noise stream); later rounds have fresh noise
    assert isinstance(many, RoundsUpdate) and len(many.rounds) == 3 and many.participated == [0, 1, 2]
    for k, t in many.rounds[0].items():
        assert torch.equal(t, base.tensors[k])
        assert not torch.equal(many.rounds[1][k], t)
    # the update's tensors are the plain mean of the received rounds
    k = next(iter(many.rounds[0]))
    mean = sum(r[k].double() for r in many.rounds) / 3
    assert torch.allclose(many.tensors[k].double(), mean, atol=1e-7)
    # the server's record after the first r rounds equals an r-round run (one noise stream)
    _, two = _update(_cfg(2, protocol=protocol, **extra))
    for r, ref in ((1, base), (2, two)):
        cut = first_rounds(many, r)
        assert len(cut.rounds) == r and all(torch.equal(cut.tensors[n], ref.tensors[n]) for n in many.rounds[0])
    with pytest.raises(DataError):
        first_rounds(many, 4)


@pytest.mark.parametrize("mech", ["ldp", "dpsgd"])
def test_combining_rounds_divides_the_probe_sigma_by_sqrt_r(mech):
    obf = ([{"name": "ldp", "max_norm": 1.0, "noise_multiplier": 0.05}] if mech == "ldp"
           else [{"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": 0.05}])
    sig = {}
    for R in (1, 4, 16):
        case, up = _update(_cfg(R, obf))
        rec = attack("ldp-imprint", case.server_view(), up)
        sig[R] = rec.info["noise"]["sigma"]
        assert rec.info["rounds"]["rounds"] == R
        if R > 1:  # every round re-estimated from its own probes: each near the one-round sigma
            per = rec.info["rounds"]["sigma_per_round"]
            assert per["min"] > 0.9 * sig[1] and per["max"] < 1.1 * sig[1]
    true = 0.05 if mech == "ldp" else 0.05 / 4  # dpsgd: noise on the sum, / B
    assert sig[1] == pytest.approx(true, rel=0.1)
    for R in (4, 16):
        assert sig[1] / sig[R] == pytest.approx(math.sqrt(R), rel=0.1)


def test_more_rounds_recover_more_images():
    """At a noise level where one round recovers little, 16 rounds of the same batch recover more (and better)."""
    from fedleak import metrics as M

    out = {}
    for R in (1, 16):
        case, up = _update(_cfg(R, [{"name": "ldp", "max_norm": 1.0, "noise_multiplier": 0.05}], size=32, batch=8))
        ssim = M.evaluate(case.images, attack("ldp-imprint", case.server_view(), up))["per_image"]["ssim"]
        out[R] = (sum(s > 0.5 for s in ssim), float(np.mean(ssim)))
    assert out[16][0] > out[1][0] and out[16][1] > out[1][1] + 0.1


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("participation", [1.0, 0.5])
def test_epsilon_of_the_rounds_equals_an_independent_accountant(accountant, participation):
    from opacus.accountants import PRVAccountant, RDPAccountant

    z, R = 1.0, 12
    _, up = _update(_cfg(R, [{"name": "ldp", "max_norm": 1.0, "noise_multiplier": z, "accountant": accountant}],
                         participation=participation, server=False))
    priv = up.stats["privacy"]

    def stepped(n, q):
        acc = (RDPAccountant if accountant == "rdp" else PRVAccountant)()
        for _ in range(n):
            acc.step(noise_multiplier=z, sample_rate=q)
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            return acc.get_epsilon(delta=1e-5)

    took = len(up.participated)
    assert priv["rounds"] == R and priv["rounds_participated"] == took == len(up.rounds)
    assert 0 < took <= R and (took < R) == (participation < 1)  # seed 3 at p = 0.5 skips some rounds
    assert priv["epsilon"] == pytest.approx(stepped(R, participation), rel=1e-6)
    assert priv["epsilon_against_server"] == pytest.approx(stepped(took, 1.0), rel=1e-6)
    assert priv["epsilon"] > priv["epsilon_per_round"]


def test_dpsgd_rounds_epsilon_counts_local_steps():
    from opacus.accountants import RDPAccountant

    _, up = _update(_cfg(5, [{"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": 1.5}], protocol="fedavg",
                         local_steps=2, local_batch_size=2, lr=0.01, server=False))
    acc = RDPAccountant()
    for _ in range(10):
        acc.step(noise_multiplier=1.5, sample_rate=0.5)
    assert up.stats["privacy"]["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-6)


def test_bad_rounds_settings_are_one_line_errors():
    from fedleak.config.schema import as_config

    for bad in ({"rounds": 0}, {"participation": 0}, {"participation": 1.5}):
        with pytest.raises(ConfigError):
            as_config({"protocol": bad})
    with pytest.raises(DataError, match="none of the 2 round"):
        _update(_cfg(2, participation=1e-6, server=False))


# ------------------------------------------------------------------------- measured vs bound: identification
def _candidates(k: int, size: int = 8):
    """k candidate images (one of them is the client's), the model and the clipped update of each."""
    from fedleak.client.data import load_images
    from fedleak.client.models import build_model
    from fedleak.client.obfuscations import build_pipeline
    from fedleak.client.obfuscations.basic import clip_tensors
    from fedleak.client.protocols import buffer_dict, fedsgd, param_dict

    base = load_images("builtin", size, "crop", 0, 8).images
    imgs = torch.cat([base, base.flip(-1)])[:k]  # 8 photos and their mirror images: up to 16 candidates
    torch.manual_seed(0)
    model = build_model("lenet-dlg", num_classes=10, image_size=size, channels=3)
    params, buffers = param_dict(model), buffer_dict(model)
    y = torch.zeros(1, dtype=torch.long)
    clean = build_pipeline([])
    cands = []
    for i in range(k):
        g = fedsgd(model, params, buffers, imgs[i:i + 1], y, clean, ObfContext(generator=torch.Generator()))
        c = clip_tensors(g, 1.0, p=2)
        cands.append(torch.cat([c[n].flatten().double() for n in c]).numpy())
    return imgs, model, params, buffers, y, np.stack(cands)


@pytest.mark.parametrize("k,z,R", [(2, 2.0, 4), (2, 3.0, 16), (10, 1.0, 4), (10, 3.0, 9)])
def test_identification_over_rounds_stays_under_the_bound(k, z, R):
    """The client holds one of k candidate images (uniform prior: baseline 1/k) and takes part in R rounds with
    `ldp` (C = 1, z) through fedleak's own round loop; the server averages the R updates and picks the nearest
    clipped candidate update (maximum likelihood). Success is then exactly the bound's notion: the measured rate
    stays under Phi(Phi^-1(1/k) + sqrt(R)/z) within sampling error, and matches the ML rate predicted for these
    candidates at noise z / sqrt(R) (numpy Monte-Carlo): the rounds' noise is fresh and averaging works."""
    from types import SimpleNamespace

    from fedleak.client.obfuscations import build_pipeline

    imgs, model, params, buffers, y, cands = _candidates(k)
    pipe = build_pipeline([{"name": "ldp", "max_norm": 1.0, "noise_multiplier": z}])
    proto = SimpleNamespace(name="fedsgd", rounds=R, participation=1.0)
    ctx = ObfContext(generator=torch.Generator().manual_seed(100 * k + R))
    rng = np.random.default_rng(7)
    n = 300
    truth = rng.integers(0, k, size=n)
    hits = 0
    for j in truth:
        res = run_rounds(model, params, buffers, imgs[j:j + 1], y, pipe, ctx, proto, seed=0)
        obs = torch.cat([res.sent[m].flatten().double() for m in res.sent]).numpy()
        hits += int(np.argmin(((cands - obs) ** 2).sum(1)) == j)
    rate = hits / n
    b = bounds.rounds_success_bound(z, R, 1.0 / k)
    assert b == pytest.approx(bounds.gdp_success_bound(math.sqrt(R) / z, 1.0 / k))
    # ML rate for these candidates, independent of fedleak's loop: Gaussian noise z / sqrt(R) per entry
    m, s = 4000, z / math.sqrt(R)
    t = rng.integers(0, k, size=m)
    gram = cands @ cands.T
    noise_proj = rng.standard_normal((m, cands.shape[1])).astype(np.float32) @ cands.T.astype(np.float32) * s
    scores = (gram[t] + noise_proj) - 0.5 * np.diag(gram)[None]  # argmax <x, c_i> - |c_i|^2 / 2 = nearest
    predicted = float(np.mean(np.argmax(scores, 1) == t))
    se = math.sqrt(max(b * (1 - b), 1e-4) / n)
    assert rate <= b + 3 * se
    assert rate == pytest.approx(predicted, abs=3 * math.sqrt(predicted * (1 - predicted) / n + 1e-4) + 0.02)
    assert predicted <= b + 0.02


@pytest.mark.parametrize("R,z", [(1, 1.0), (1, 0.01), (10, 0.01), (100, 0.001)])
def test_exact_gdp_epsilon_of_many_rounds_is_below_the_accountant(R, z):
    """mu = sqrt(R)/z up to 1e4: the exact GDP epsilon solves delta(eps) = 1e-5 (checked with scipy in log space)
    and lies just below Opacus's RDP epsilon (an upper bound); before the log-space fix it was capped at 700."""
    from scipy.stats import norm

    from fedleak.client.privacy import rounds_epsilon

    mu = math.sqrt(R) / z
    eps = bounds.gdp_epsilon(mu, 1e-5)
    delta = math.exp(norm.logcdf(-eps / mu + mu / 2)) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2))
    assert delta == pytest.approx(1e-5, rel=1e-6)
    rdp = rounds_epsilon(z, R, 1e-5)
    assert 0.85 * rdp < eps < rdp
