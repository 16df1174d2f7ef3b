"""Privacy accounting: fedleak.privacy and the DP steps agree with Opacus's accountants used directly."""
from __future__ import annotations

import math
import subprocess
import sys
from statistics import NormalDist

import pytest
import torch

from fedleak.client import privacy
from fedleak.client.obfuscations import OBFUSCATIONS, ObfContext, build_pipeline

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
]

SETTINGS = [(1.1, 0.01, 100), (0.8, 0.25, 12), (2.0, 1.0, 1), (1.0, 0.5, 3)]


def opacus_epsilon(z, q, steps, delta, kind):
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("z,q,steps", SETTINGS)
@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_epsilon_equals_opacus_accountant(z, q, steps, kind):
    assert privacy.epsilon(z, q, steps, 1e-5, kind) == pytest.approx(opacus_epsilon(z, q, steps, 1e-5, kind), rel=1e-9)


def test_rdp_epsilon_at_full_batch_matches_closed_form():
    """q = 1: T Gaussian releases have RDP T*a/(2 z^2); Opacus converts with Balle et al. (2020), Thm 21."""
    from opacus.accountants import RDPAccountant

    z, T, delta = 1.3, 4, 1e-6
    best = min(
        a * T / (2 * z**2) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        for a in RDPAccountant.DEFAULT_ALPHAS
    )
    assert privacy.epsilon(z, 1.0, T, delta) == pytest.approx(best, rel=1e-9)


def test_epsilon_monotonicity_and_edge_cases():
    e = privacy.epsilon(1.0, 0.1, 50, 1e-5)
    assert privacy.epsilon(2.0, 0.1, 50, 1e-5) < e < privacy.epsilon(1.0, 0.1, 200, 1e-5)
    assert privacy.epsilon(1.0, 0.05, 50, 1e-5) < e
    assert privacy.epsilon(0.0, 0.1, 5, 1e-5) == math.inf
    assert privacy.epsilon(1.0, 0.1, 0, 1e-5) == 0.0


@pytest.mark.parametrize("kwargs,needle", [
    ({"noise_multiplier": -1, "sample_rate": 0.1, "steps": 1, "delta": 1e-5}, "noise_multiplier"),
    ({"noise_multiplier": 1, "sample_rate": 0.0, "steps": 1, "delta": 1e-5}, "sample_rate"),
    ({"noise_multiplier": 1, "sample_rate": 1.5, "steps": 1, "delta": 1e-5}, "sample_rate"),
    ({"noise_multiplier": 1, "sample_rate": 0.1, "steps": 1.5, "delta": 1e-5}, "steps"),
    ({"noise_multiplier": 1, "sample_rate": 0.1, "steps": 1, "delta": 1.0}, "delta"),
    ({"noise_multiplier": 1, "sample_rate": 0.1, "steps": 1, "delta": 1e-5, "accountant": "moments"}, "accountant"),
])
def test_epsilon_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        privacy.epsilon(**kwargs)


@pytest.mark.parametrize("kind,eps,q,steps", [("rdp", 1.0, 1.0, 1), ("prv", 1.0, 1.0, 1), ("rdp", 3.0, 0.1, 20)])
def test_noise_multiplier_for_round_trip(kind, eps, q, steps):
    z = privacy.noise_multiplier_for(eps, 1e-5, q, steps, kind)
    got = privacy.epsilon(z, q, steps, 1e-5, kind)
    assert eps - 0.01 <= got <= eps  # Opacus's binary search stops within its tolerance below the target
    assert privacy.epsilon(z * 0.97, q, steps, 1e-5, kind) > got


def test_noise_multiplier_for_rejects_impossible_budget():
    with pytest.raises(ValueError, match="epsilon"):
        privacy.noise_multiplier_for(0.0, 1e-5, 0.1, 10)
    with pytest.raises(ValueError, match="is unreachable.*smallest reachable epsilon"):
        privacy.noise_multiplier_for(1e-6, 1e-12, 1.0, 10_000)


def test_privacy_module_imports_opacus_lazily():
    code = "import sys, fedleak.client.privacy, fedleak.client.obfuscations, fedleak.config; assert 'opacus' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------------------------------
# DP steps


@pytest.mark.parametrize("kind", ["rdp", "prv"])
@pytest.mark.parametrize("batch,dataset_size,steps", [(8, 1000, 25), (4, None, 3)])
def test_dpsgd_privacy_equals_opacus(kind, batch, dataset_size, steps):
    z = 1.2
    s = OBFUSCATIONS.build("dpsgd", max_grad_norm=1.0, noise_multiplier=z, delta=1e-5, accountant=kind,
                           dataset_size=dataset_size)
    c = ObfContext(generator=torch.Generator(), batch_size=batch, num_examples=16, local_steps=steps)
    q = batch / (dataset_size or 16)
    eps, delta = s.privacy(c)
    assert delta == 1e-5
    assert eps == pytest.approx(opacus_epsilon(z, q, steps, 1e-5, kind), rel=1e-9)


def test_dpsgd_sample_rate_from_context_population():
    s = OBFUSCATIONS.build("dpsgd", noise_multiplier=1.0)
    c = ObfContext(generator=torch.Generator(), batch_size=10, num_examples=10, local_steps=5, dataset_size=500)
    assert s.sample_rate(c) == pytest.approx(0.02)
    assert s.privacy(c)[0] == pytest.approx(opacus_epsilon(1.0, 0.02, 5, 1e-5, "rdp"), rel=1e-9)


def test_dpsgd_calibrates_noise_from_target_epsilon():
    from opacus.accountants.utils import get_noise_multiplier

    s = OBFUSCATIONS.build("dpsgd", max_grad_norm=0.5, epsilon=2.0, delta=1e-5, dataset_size=100)
    c = ObfContext(generator=torch.Generator(), batch_size=10, num_examples=10, local_steps=4)
    z = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=0.1, steps=4)
    assert s.effective_noise_multiplier(c) == pytest.approx(z, rel=1e-12)
    eps, _ = s.privacy(c)
    assert 2.0 - 0.01 <= eps <= 2.0


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_ldp_gaussian_privacy_is_one_full_release(kind):
    s = OBFUSCATIONS.build("ldp", max_norm=3.0, noise_multiplier=0.9, delta=1e-6, accountant=kind)
    eps, delta = s.privacy(ObfContext(generator=torch.Generator(), local_steps=50, batch_size=2, num_examples=8))
    assert delta == 1e-6
    assert eps == pytest.approx(opacus_epsilon(0.9, 1.0, 1, 1e-6, kind), rel=1e-9)


def _analytic_gaussian_delta(eps: float, z: float) -> float:
    """Exact delta(eps) of the Gaussian mechanism with sensitivity C and std z*C (Balle & Wang 2018, Thm 8)."""
    N = NormalDist()
    return N.cdf(1 / (2 * z) - eps * z) - math.exp(eps) * N.cdf(-1 / (2 * z) - eps * z)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_ldp_calibrated_noise_really_is_eps_delta_dp(kind, target):
    """Independent check of the calibration: the exact privacy profile of the Gaussian mechanism at the
    reported epsilon stays below delta (accountants give upper bounds), and is not absurdly loose."""
    s = OBFUSCATIONS.build("ldp", max_norm=1.0, epsilon=target, delta=1e-5, accountant=kind)
    eps, delta = s.privacy(ObfContext(generator=torch.Generator()))
    z = s.effective_noise_multiplier()
    assert eps <= target
    assert _analytic_gaussian_delta(eps, z) <= delta
    assert _analytic_gaussian_delta(eps, z * 0.6) > delta  # 40 % less noise would break the guarantee


def test_pipeline_reports_and_composes_privacy():
    c = ObfContext(generator=torch.Generator(), batch_size=4, num_examples=4)
    assert build_pipeline([{"name": "qsgd", "levels": 4}]).privacy(c) is None
    one = build_pipeline([{"name": "ldp", "max_norm": 1.0, "noise_multiplier": 1.0}]).privacy(c)
    assert one["mechanism"] == "ldp" and one["delta"] == 1e-5
    both = build_pipeline([{"name": "dpsgd", "noise_multiplier": 1.0},
                           {"name": "ldp", "max_norm": 1.0, "noise_multiplier": 1.0}]).privacy(c)
    assert both["mechanism"] == "composed"
    assert both["epsilon"] == pytest.approx(one["epsilon"] + opacus_epsilon(1.0, 1.0, 1, 1e-5, "rdp"))
