"""Reconstruction-success bounds (fedleak.metrics.bounds) against independent computations, and the
multi-round epsilon (fedleak.client.privacy.rounds_epsilon) against Opacus used directly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from fedleak.client import privacy
from fedleak.client.obfuscations import OBFUSCATIONS, ObfContext
from fedleak.errors import ConfigError
from fedleak.metrics import bounds

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order"), pytest.mark.filterwarnings("ignore:divide by zero")]


@pytest.mark.parametrize("mu,kappa", [(0.5, 0.5), (1.0, 0.1), (2.0, 1e-3), (3.0, 0.02)])
def test_gdp_bound_equals_neyman_pearson_power_integrated(mu, kappa):
    """1 - f(kappa) is the power of the best level-kappa test of N(0,1) vs N(mu,1): integrate its density."""
    t = stats.norm.ppf(1 - kappa)
    power, _ = integrate.quad(lambda x: stats.norm.pdf(x - mu), t, np.inf)
    assert bounds.gdp_success_bound(mu, kappa) == pytest.approx(power, rel=1e-7)


def _np_max_power(P, Q, level):
    """Most powerful randomised test of Q (null) vs P at type-I error <= level, on a finite space."""
    order = sorted(range(len(P)), key=lambda i: -(P[i] / Q[i]) if Q[i] > 0 else -math.inf)
    power, used = 0.0, 0.0
    for i in order:
        take = 1.0 if Q[i] == 0 else min(1.0, (level - used) / Q[i])
        power += take * P[i]
        used += take * Q[i]
        if used >= level:
            break
    return power


@pytest.mark.parametrize("eps,delta,kappa", [(1.0, 1e-5, 0.1), (0.3, 0.01, 0.5), (4.0, 1e-3, 1e-3), (2.0, 0.0, 0.2)])
def test_eps_delta_bound_equals_canonical_pair(eps, delta, kappa):
    """(eps, delta)-DP's trade-off is attained by a 4-point pair (Kairouz et al. 2015): test it directly."""
    e = math.exp(eps)
    P = [delta, (1 - delta) * e / (1 + e), (1 - delta) / (1 + e), 0.0]
    Q = [0.0, (1 - delta) / (1 + e), (1 - delta) * e / (1 + e), delta]
    assert bounds.eps_delta_success_bound(eps, delta, kappa) == pytest.approx(_np_max_power(P, Q, kappa), rel=1e-9)


@pytest.mark.parametrize("mu,kappa", [(0.5, 0.1), (1.0, 0.1), (2.0, 1e-3)])
def test_rdp_bound_for_gaussian_is_valid_and_matches_continuous_optimum(mu, kappa):
    """Gaussian RDP is a mu^2 / 2: the grid bound is >= the continuous optimum (close) and >= the tight GDP bound."""
    orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
    got = bounds.rdp_success_bound(orders, [a * mu**2 / 2 for a in orders], kappa)
    res = optimize.minimize_scalar(lambda a: (a - 1) / a * (math.log(kappa) + a * mu**2 / 2), bounds=(1.01, 63),
                                   method="bounded")
    assert min(1.0, math.exp(res.fun)) - 1e-12 <= got <= min(1.0, math.exp(res.fun)) * 1.01  # grid of orders
    assert got >= bounds.gdp_success_bound(mu, kappa)


def _candidates(k: int) -> np.ndarray:
    """k candidates on the unit sphere (add/remove sensitivity 1): antipodal for k = 2, a regular simplex else."""
    if k == 2:
        return np.array([[1.0], [-1.0]])
    e = np.eye(k) - 1.0 / k
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _ml_success_integral(k: int, mu: float) -> float:
    """ML identification among the simplex candidates at noise 1/mu: P(true score beats the k-1 others)."""
    if k == 2:
        return stats.norm.cdf(mu)
    s = math.sqrt(k / (k - 1)) * mu  # simplex = scaled basis vectors, shifted; the argmax is unchanged
    val, _ = integrate.quad(lambda t: stats.norm.pdf(t) * stats.norm.cdf(t + s) ** (k - 1), -np.inf, np.inf)
    return val


@pytest.mark.parametrize("k", [2, 10])
@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0])
def test_ml_identification_through_ldp_step_stays_under_bound(k, mu):
    """The client's update is one of k candidates (norm 1 = C), noised by fedleak's own `ldp` step at z = 1/mu;
    the maximum-likelihood server picks the nearest candidate. Measured rate <= bound within sampling error;
    for k = 2 (antipodal) the bound is attained."""
    cands = _candidates(k)
    step = OBFUSCATIONS.build("ldp", max_norm=1.0, noise_multiplier=1.0 / mu)
    gen = torch.Generator().manual_seed(1000 * k + int(10 * mu))
    ctx = ObfContext(generator=gen)
    rng = np.random.default_rng(k)
    n, hits = 3000, 0
    truth = rng.integers(0, k, size=n)
    c_t = torch.tensor(cands, dtype=torch.float64)
    for i in range(n):
        y = step.apply({"w": c_t[truth[i]].clone()}, ctx)["w"].numpy()
        hits += int(np.argmin(((cands - y) ** 2).sum(1)) == truth[i])
    rate, b = hits / n, bounds.gdp_success_bound(mu, 1.0 / k)
    se = math.sqrt(b * (1 - b) / n)
    assert rate <= b + 3 * se
    assert rate == pytest.approx(_ml_success_integral(k, mu), abs=4 * se)  # the measurement itself is right
    assert _ml_success_integral(k, mu) <= b + 1e-12
    if k == 2:
        assert b == pytest.approx(_ml_success_integral(2, mu), rel=1e-12)  # tight: Phi(mu)


def test_gdp_mu_composition_and_helpers():
    assert bounds.gdp_mu(0.5, 4) == pytest.approx(4.0)
    assert bounds.gdp_mu(1.0, 3, steps_per_round=3, sensitivity=2.0) == pytest.approx(6.0)
    assert bounds.gdp_mu(0.0, 1) == math.inf and bounds.gdp_mu(1.0, 0) == 0.0
    mu = bounds.gdp_mu_for_success(0.5, 0.1)
    assert bounds.gdp_success_bound(mu, 0.1) == pytest.approx(0.5)
    eps = bounds.gdp_epsilon(1.0, 1e-5)  # exact GDP epsilon: delta(eps) = delta, below Opacus's RDP upper bound
    d = stats.norm.cdf(-eps + 0.5) - math.exp(eps) * stats.norm.cdf(-eps - 0.5)
    assert d == pytest.approx(1e-5, rel=1e-6)
    assert eps < privacy.rounds_epsilon(1.0, 1, 1e-5)


def test_rounds_success_bound_modes():
    assert bounds.rounds_success_bound(2.0, 16, 0.1) == pytest.approx(bounds.gdp_success_bound(2.0, 0.1))
    sub = [bounds.rounds_success_bound(1.0, r, 0.1, sample_rate=0.01) for r in (1, 10, 100, 1000)]
    assert all(0.1 <= a <= b <= 1.0 for a, b in zip(sub, sub[1:]))
    orders, rdp = privacy.rounds_rdp(1.0, 100, sample_rate=0.01)
    assert sub[2] == pytest.approx(bounds.rdp_success_bound(orders, rdp, 0.1))


@pytest.mark.parametrize("call", [
    lambda: bounds.gdp_success_bound(1.0, 0.0), lambda: bounds.gdp_success_bound(1.0, 1.5),
    lambda: bounds.gdp_success_bound(-1.0, 0.1), lambda: bounds.eps_delta_success_bound(1.0, 2.0, 0.1),
    lambda: bounds.rdp_success_bound([2.0], [1.0, 2.0], 0.1), lambda: bounds.rdp_success_bound([1.0], [1.0], 0.1),
    lambda: bounds.gdp_mu_for_success(0.05, 0.1), lambda: bounds.gdp_mu(-1.0), lambda: bounds.gdp_mu(1.0, 1.5),
    lambda: privacy.rounds_epsilon(1.0, -1, 1e-5), lambda: privacy.rounds_epsilon(1.0, 2, 1e-5, participation=0.0),
    lambda: privacy.rounds_epsilon(1.0, 2, 1e-5, participation=0.5, steps_per_round=2),
    lambda: privacy.rounds_epsilon(1.0, 2, 1.0),
])
def test_invalid_input_is_one_line_config_error(call):
    with pytest.raises(ConfigError) as e:
        call()
    assert "\n" not in str(e.value)


def _opacus(z, q, steps, delta):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("z,p,q,s", [(1.0, 1.0, 1.0, 1), (0.8, 0.1, 1.0, 1), (1.1, 1.0, 0.05, 3), (1.0, 0.5, 0.2, 1)])
def test_rounds_epsilon_matches_opacus_and_grows_with_rounds(z, p, q, s):
    eps = [privacy.rounds_epsilon(z, r, 1e-5, participation=p, sample_rate=q, steps_per_round=s) for r in (1, 5, 20)]
    assert eps[0] < eps[1] < eps[2]
    assert eps[1] == pytest.approx(_opacus(z, p * q, 5 * s, 1e-5), rel=1e-9)
