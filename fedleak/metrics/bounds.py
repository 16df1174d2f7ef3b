"""Upper bounds on reconstruction success implied by a differential-privacy guarantee (issue 14, part 3).

The reconstruction game (Balle, Cherubin & Hayes, S&P 2022, "Reconstructing training data with informed
adversaries"): the adversary knows everything except the target ``Z``, drawn from a prior ``pi``; it sees
``w ~ M(D_- + Z)`` and outputs a guess; it *succeeds* when the guess is close enough to ``Z`` (exact
identification among candidates, SSIM > 0.5, ...). The **baseline** ``kappa`` is the best success of a
guess made without seeing ``w``: ``kappa = sup_g P_{Z~pi}[guess g succeeds]`` (``1/k`` for ``k`` equally
likely candidates and exact identification).

Hypothesis-testing bound (Kaissis, Hayes, Ziller & Rueckert, 2023, arXiv:2307.03928; Hayes, Mahloujifar &
Balle, NeurIPS 2023, "Bounding training data reconstruction in DP-SGD", for DP-SGD): if the trade-off
function between ``M(D_-)`` and ``M(D_- + z)`` is at least ``f`` for every ``z`` (``M`` is f-DP for the
add/remove relation), every adversary succeeds with probability at most ``1 - f(kappa)``. (Per target, the
success event is a test of ``M(D_-)`` against ``M(D_- + z)`` whose type-I error is the event's
probability under ``M(D_-)``; averaged over the prior that probability is at most ``kappa``, and ``1 - f``
is concave and non-decreasing.) For mu-GDP, ``f(a) = Phi(Phi^-1(1 - a) - mu)``, so the bound is
``Phi(Phi^-1(kappa) + mu)``; it is attained by the Gaussian mechanism with two antipodal candidates.

RDP bound (Balle, Cherubin & Hayes 2022): ``(alpha, rho)``-RDP gives success at most
``(kappa * exp(rho))^((alpha - 1) / alpha)`` for every order; the best order is taken.

Neighbouring relation: add/remove, as Opacus accounts and as fedleak's ``ldp`` and ``dpsgd`` steps report
epsilon. ``ldp``: ``D_-`` is the absent client (zero update), the target is the client's data, and the bound
holds for any success event about it (one image of the batch included); ``dpsgd``: ``D_-`` is the rest of
the client's data, the target one example. Both hold for any model the server sends, planted structures
included, because clipping bounds the sensitivity whatever the model. Sensitivities are in units of the
clipping norm ``C`` (noise std ``z * C``).

All functions are pure; invalid input raises a one-line :class:`fedleak.errors.ConfigError`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from fedleak.errors import ConfigError

_N = NormalDist()


def _real(name: str, v, lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False,
          allow_inf: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) \
            or (math.isinf(v) and not allow_inf) or (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
        span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open or hi == math.inf else ']'}"
        raise ConfigError(f"{name} must be a number in {span}, got {v!r}")
    return float(v)


def _kappa(kappa) -> float:
    return _real("kappa (baseline success probability)", kappa, 0.0, 1.0, lo_open=True)


def _phi(x: float) -> float:
    """Standard normal CDF, accurate in both tails."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gdp_mu(noise_multiplier: float, rounds: int = 1, *, steps_per_round: int = 1, sensitivity: float = 1.0) -> float:
    """mu of ``rounds * steps_per_round`` releases of the Gaussian mechanism without subsampling.

    Each release adds N(0, (z C)^2) to a quantity of sensitivity ``sensitivity * C``, i.e. is
    ``sensitivity / z``-GDP; the GDP composition of ``T`` of them is exact: ``mu = sensitivity * sqrt(T) / z``.
    ``z = 0`` gives ``inf``. Subsampled rounds (``dpsgd`` with q < 1, partial participation) are *not*
    mu-GDP with a closed-form mu; use :func:`rounds_success_bound`, which then takes the RDP bound.
    """
    z = _real("noise_multiplier", noise_multiplier, 0.0)
    s = _real("sensitivity", sensitivity, 0.0)
    for name, v, lo in (("rounds", rounds, 0), ("steps_per_round", steps_per_round, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    releases = rounds * steps_per_round
    if releases == 0 or s == 0:
        return 0.0
    return math.inf if z == 0 else s * math.sqrt(releases) / z


def tradeoff_gdp(mu: float, alpha: float) -> float:
    """Trade-off function of mu-GDP: the smallest type-II error at type-I error ``alpha``,
    ``Phi(Phi^-1(1 - alpha) - mu)`` (Dong, Roth & Su 2019)."""
    mu = _real("mu", mu, 0.0, allow_inf=True)
    a = _real("alpha", alpha, 0.0, 1.0)
    if a == 0.0:
        return 0.0 if mu == math.inf else 1.0
    if a == 1.0 or mu == math.inf:
        return 0.0
    return _phi(_N.inv_cdf(1.0 - a) - mu)


def tradeoff_eps_delta(epsilon: float, delta: float, alpha: float) -> float:
    """Trade-off function of (epsilon, delta)-DP: ``max(0, 1 - delta - e^eps alpha, e^-eps (1 - delta - alpha))``
    (Kairouz, Oh & Viswanath 2015; Dong, Roth & Su 2019)."""
    eps = _real("epsilon", epsilon, 0.0, allow_inf=True)
    d = _real("delta", delta, 0.0, 1.0)
    a = _real("alpha", alpha, 0.0, 1.0)
    if a == 0.0:
        return 1.0 - d
    if eps == math.inf:
        return 0.0
    log_scaled = eps + math.log(a)  # log(e^eps alpha), kept finite for large epsilon
    first = 1.0 - d - math.exp(log_scaled) if log_scaled < 1.0 else -math.inf
    second = math.exp(-eps) * (1.0 - d - a)
    return max(0.0, first, second)


def gdp_success_bound(mu: float, kappa: float) -> float:
    """Largest reconstruction success of any adversary against a mu-GDP mechanism whose prior has baseline
    ``kappa``: ``1 - f_mu(kappa) = Phi(Phi^-1(kappa) + mu)``."""
    mu = _real("mu", mu, 0.0, allow_inf=True)
    k = _kappa(kappa)
    if k == 1.0 or mu == math.inf:
        return 1.0
    return _phi(_N.inv_cdf(k) + mu)


def eps_delta_success_bound(epsilon: float, delta: float, kappa: float) -> float:
    """Largest reconstruction success against an (epsilon, delta)-DP mechanism, baseline ``kappa``:
    ``1 - f_{eps,delta}(kappa) = min(1, delta + e^eps kappa, 1 - e^-eps (1 - delta - kappa))``."""
    return 1.0 - tradeoff_eps_delta(epsilon, delta, _kappa(kappa))


def rdp_success_bound(orders: Sequence[float], rdp: Sequence[float], kappa: float) -> float:
    """Largest reconstruction success against an RDP mechanism with curve ``rdp[i]`` at ``orders[i]`` (> 1),
    baseline ``kappa``: ``min_i (kappa e^rdp_i)^((a_i - 1) / a_i)``, at most 1 (Balle, Cherubin & Hayes 2022)."""
    k = _kappa(kappa)
    if len(orders) == 0 or len(orders) != len(rdp):
        raise ConfigError(f"orders and rdp must be non-empty and of equal length, got {len(orders)} and {len(rdp)}")
    best = 0.0  # log of the bound; log 1 = 0 caps it
    for a, r in zip(orders, rdp):
        a = _real("RDP order", a, 1.0, lo_open=True)
        r = _real("RDP value", r, 0.0, allow_inf=True)
        best = min(best, (a - 1.0) / a * (math.log(k) + r))
    return math.exp(best)


def gdp_mu_for_success(success: float, kappa: float) -> float:
    """Largest mu at which mu-GDP still caps reconstruction success at ``success`` (baseline ``kappa``):
    ``Phi^-1(success) - Phi^-1(kappa)``. Any mu >= 0 allows at least ``kappa``, so ``success`` must exceed it."""
    k = _kappa(kappa)
    s = _real("success", success, 0.0, 1.0, lo_open=True, hi_open=True)
    if not s > k:
        raise ConfigError(f"success must exceed the baseline kappa={k} (no mechanism pushes success below it)")
    return _N.inv_cdf(s) - _N.inv_cdf(k)


def gdp_epsilon(mu: float, delta: float) -> float:
    """Exact (smallest) epsilon at ``delta`` of mu-GDP: solves ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)
    = delta`` (Dong, Roth & Su 2019, Cor. 2.13) by bisection (relative 1e-12). For comparison with accountants'
    epsilons, which are upper bounds."""
    mu = _real("mu", mu, 0.0, allow_inf=True)
    d = _real("delta", delta, 0.0, 1.0, lo_open=True, hi_open=True)
    if mu == 0.0:
        return 0.0
    if mu == math.inf:
        return math.inf

    from scipy.special import log_ndtr

    def delta_of(eps: float) -> float:  # in log space: e^eps overflows for mu >~ 35
        return math.exp(float(log_ndtr(-eps / mu + mu / 2))) - math.exp(eps + float(log_ndtr(-eps / mu - mu / 2)))

    if delta_of(0.0) <= d:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_of(hi) > d:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if delta_of(mid) > d else (lo, mid)
    return hi


def rounds_success_bound(noise_multiplier: float, rounds: int, kappa: float, *, participation: float = 1.0,
                         sample_rate: float = 1.0, steps_per_round: int = 1, sensitivity: float = 1.0) -> float:
    """Bound on reconstruction success after ``rounds`` rounds of a Gaussian mechanism (same round model and
    arguments as :func:`fedleak.client.privacy.rounds_epsilon`), baseline ``kappa``.

    Without subsampling (``participation * sample_rate == 1``) the rounds are exactly
    ``mu = sensitivity sqrt(R s) / z``-GDP and the bound is :func:`gdp_success_bound` (tight). With
    subsampling there is no closed-form mu: the bound is :func:`rdp_success_bound` of Opacus's RDP curve of
    the subsampled Gaussian (noise multiplier ``z / sensitivity``), a valid but looser bound.
    """
    from fedleak.client.privacy import rounds_rdp

    k = _kappa(kappa)
    s = _real("sensitivity", sensitivity, 0.0, lo_open=True)
    _real("noise_multiplier", noise_multiplier, 0.0)
    q = _real("participation", participation, 0.0, 1.0, lo_open=True) * \
        _real("sample_rate", sample_rate, 0.0, 1.0, lo_open=True)
    if q == 1.0:
        return gdp_success_bound(gdp_mu(noise_multiplier, rounds, steps_per_round=steps_per_round,
                                        sensitivity=s), k)
    orders, rdp = rounds_rdp(noise_multiplier / s, rounds, participation=participation, sample_rate=sample_rate,
                             steps_per_round=steps_per_round)
    return rdp_success_bound(orders, rdp, k)
