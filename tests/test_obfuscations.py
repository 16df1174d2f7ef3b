"""Gradient obfuscations: the math each step promises, its validation and its bit cost."""
from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedleak.config.schema import parse_pipeline
from fedleak.errors import ConfigError, NumericalError
from fedleak.client.obfuscations import OBFUSCATIONS, ObfContext, build_pipeline, first_param
from fedleak.client.obfuscations.sparsification import kept_count

ALL = ["clip", "dpsgd", "gaussian", "laplace", "ldp", "prune", "qsgd", "randk", "sign", "topk", "uniform"]
FAST = settings(max_examples=30, deadline=None)


def ctx(seed: int = 0, **kw) -> ObfContext:
    return ObfContext(generator=torch.Generator().manual_seed(seed), **kw)


def step(name: str, **kw):
    return OBFUSCATIONS.build(name, **kw)


def update(seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g, dtype=dtype),
        "conv.bias": torch.randn(4, generator=g, dtype=dtype) * 0.1,
        "fc.weight": torch.randn(10, 17, generator=g, dtype=dtype) * 3.0,
    }


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
vectors = st.lists(finite, min_size=1, max_size=60).map(lambda xs: torch.tensor(xs, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------
# registry, parsing, validation


def test_all_obfuscations_registered():
    assert set(ALL) <= set(OBFUSCATIONS.names())


@pytest.mark.parametrize("name,first", [
    ("uniform", "levels"), ("qsgd", "levels"), ("sign", "scale"), ("topk", "sparsity"), ("randk", "sparsity"),
    ("gaussian", "sigma"), ("laplace", "scale"), ("clip", "max_norm"), ("ldp", "max_norm"),
    ("dpsgd", "max_grad_norm"), ("prune", "percent"),
])
def test_positional_argument_binds_to_the_natural_parameter(name, first):
    assert first_param(OBFUSCATIONS.get(name)) == first


def test_pipeline_string_builds_the_steps():
    steps = parse_pipeline("clip(1.0) -> gaussian(0.01) -> qsgd(16, norm=l2) -> topk(k=5, scope=global)")
    assert steps == [
        {"name": "clip", "max_norm": 1.0},
        {"name": "gaussian", "sigma": 0.01},
        {"name": "qsgd", "levels": 16, "norm": "l2"},
        {"name": "topk", "k": 5, "scope": "global"},
    ]
    p = build_pipeline(steps)
    assert [s.describe()["name"] for s in p.steps] == ["clip", "gaussian", "qsgd", "topk"]
    assert p.steps[2].levels == 16 and p.steps[2].norm == "l2"


@pytest.mark.parametrize("cfg,needle", [
    ({"name": "qsgd", "levels": 1}, "levels must be >= 2"),
    ({"name": "qsgd", "levels": 2.5}, "levels must be an integer"),
    ({"name": "qsgd", "levels": True}, "levels must be an integer"),
    ({"name": "qsgd", "norm": "l3"}, "norm must be one of 'max', 'l2'"),
    ({"name": "uniform", "levels": "many"}, "levels must be an integer"),
    ({"name": "sign", "scale": "median"}, "scale must be one of"),
    ({"name": "topk", "sparsity": 1.0}, "sparsity must be < 1"),
    ({"name": "topk", "sparsity": -0.1}, "sparsity must be >= 0"),
    ({"name": "topk"}, "give exactly one of sparsity, k"),
    ({"name": "topk", "sparsity": 0.5, "k": 3}, "give exactly one of sparsity, k"),
    ({"name": "topk", "k": 0}, "k must be >= 1"),
    ({"name": "topk", "k": 3, "scope": "layer"}, "scope must be one of 'tensor', 'global'"),
    ({"name": "randk", "k": 3, "rescale": "yes"}, "rescale must be true or false"),
    ({"name": "gaussian", "sigma": -1}, "sigma must be >= 0"),
    ({"name": "gaussian", "sigma": 0.1, "snr_db": 10}, "give exactly one of sigma, snr_db"),
    ({"name": "gaussian", "sigma": float("nan")}, "sigma must be finite"),
    ({"name": "laplace"}, "give exactly one of scale, snr_db"),
    ({"name": "clip", "max_norm": 0}, "max_norm must be > 0"),
    ({"name": "ldp", "max_norm": 1}, "give exactly one of noise_multiplier, sigma, epsilon"),
    ({"name": "ldp", "epsilon": 1, "delta": 0}, "delta must be > 0"),
    ({"name": "ldp", "epsilon": 1, "mechanism": "exponential"}, "mechanism must be one of"),
    ({"name": "ldp", "sigma": 1, "accountant": "moments"}, "accountant must be one of 'rdp', 'prv'"),
    ({"name": "dpsgd", "noise_multiplier": 1, "epsilon": 2}, "give exactly one of noise_multiplier, epsilon"),
    ({"name": "dpsgd", "noise_multiplier": 1, "dataset_size": 0}, "dataset_size must be >= 1"),
    ({"name": "prune", "percent": 150}, "percent must be <= 100"),
])
def test_bad_values_raise_clear_config_errors(cfg, needle):
    with pytest.raises(ConfigError) as e:
        build_pipeline([cfg])
    msg = str(e.value)
    assert needle in msg
    assert f"obfuscation {cfg['name']!r}" in msg  # says which step


def test_unknown_option_lists_valid_options():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'levls'; valid: levels, norm"):
        build_pipeline([{"name": "qsgd", "levls": 4}])


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        build_pipeline([{"name": "qsdg"}])
    msg = str(e.value)
    assert "did you mean 'qsgd'" in msg
    for name in ALL:
        assert name in msg


def test_dpsgd_must_come_first():
    with pytest.raises(ConfigError, match="must come first"):
        build_pipeline([{"name": "clip"}, {"name": "dpsgd", "noise_multiplier": 1.0}])


def test_nan_in_the_update_is_a_numerical_error():
    p = build_pipeline([{"name": "qsgd", "levels": 4}])
    u = update()
    u["fc.weight"][3, 4] = float("nan")
    with pytest.raises(NumericalError, match="'fc.weight' has 1 NaN/Inf"):
        p.apply(u, ctx())
    u = update()
    u["conv.bias"][0] = float("inf")
    with pytest.raises(NumericalError):
        p.apply(u, ctx())


@pytest.mark.parametrize("cfg", [
    {"name": "qsgd", "levels": 8}, {"name": "randk", "sparsity": 0.5}, {"name": "gaussian", "sigma": 0.1},
    {"name": "laplace", "snr_db": 5}, {"name": "ldp", "max_norm": 1, "noise_multiplier": 1.0},
])
def test_randomised_steps_are_reproducible_from_the_seed(cfg):
    s = build_pipeline([cfg])
    a, b, c = s.apply(update(), ctx(7)), s.apply(update(), ctx(7)), s.apply(update(), ctx(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------------------------------------------------
# uniform


@FAST
@example(torch.tensor([16009 * 2.0**-1074], dtype=torch.float64), 17)  # subnormal max: M / 16 rounds up (hypothesis, CI)
@given(vectors, st.integers(2, 20))
def test_uniform_has_at_most_s_magnitudes_on_the_grid(v, s):
    out = step("uniform", levels=s).apply({"t": v}, ctx())["t"]
    mags = out.abs().unique()
    assert mags.numel() <= s
    m = v.abs().max()
    if m > 0:
        q = s - 1
        # every output magnitude is k * M / q, the nearest grid point to |v_i|
        assert torch.all(out.abs() <= m * (1 + 1e-12))
        assert torch.all((out.abs() - v.abs()).abs() <= m / (2 * q) * (1 + 1e-9))
        k = out.abs() / m * q  # (not / (M / q): M / q is inexact when M is subnormal)
        assert torch.allclose(k, k.round(), atol=1e-6)
        nz = out != 0
        assert torch.equal(torch.sign(out[nz]), torch.sign(v[nz]))
        assert out.abs().max() == pytest.approx(float(m))  # the max magnitude is representable
    else:
        assert torch.all(out == 0)


def test_uniform_with_many_distinct_inputs_uses_all_levels():
    v = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    out = step("uniform", levels=5).apply({"t": v}, ctx())["t"]
    assert sorted(out.abs().unique().tolist()) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


# ---------------------------------------------------------------------------------------------------------
# QSGD


def _qsgd_draws(v: torch.Tensor, levels: int, norm: str, draws: int, seed: int = 0) -> torch.Tensor:
    """``draws`` independent quantisations of ``v`` (one apply: the dict holds ``draws`` copies of v)."""
    s = step("qsgd", levels=levels, norm=norm)
    out = s.apply({f"d{i}": v for i in range(draws)}, ctx(seed))
    return torch.stack([out[f"d{i}"] for i in range(draws)])


def _qsgd_exact_var(v: torch.Tensor, levels: int, norm: str) -> torch.Tensor:
    """Per-coordinate Var[Q(v)_i] = (N/q)^2 p_i (1 - p_i), p_i = frac(|v_i| / N * q)."""
    q = levels - 1
    n = v.abs().max() if norm == "max" else v.norm()
    r = v.abs() / n * q
    p = r - r.floor()
    return (n / q) ** 2 * p * (1 - p)


@pytest.mark.parametrize("norm", ["max", "l2"])
@pytest.mark.parametrize("levels", [2, 5])
def test_qsgd_is_unbiased(norm, levels):
    """Mean of 2,000 draws vs the input, in units of the exact standard error.

    Coordinates are rounded independently, so z_i = (mean_i - v_i) / SE_i are ~independent N(0, 1):
    the aggregate sum(z_i) / sqrt(n) must be within 3, and every |z_i| within the Bonferroni bound for a
    family-wise level of 0.001 (≈4.3 for n = 40), which a 3-SE per-coordinate rule would not control.
    """
    g = torch.Generator().manual_seed(5)
    v = torch.randn(40, generator=g, dtype=torch.float64)
    v[0] = 0.0  # zero stays zero
    draws = 2000
    x = _qsgd_draws(v, levels, norm, draws)
    var = _qsgd_exact_var(v, levels, norm)
    random = var > 1e-20
    assert random.sum() >= 30
    # deterministic coordinates (zero, or exactly on a level such as the max entry) never move
    assert torch.allclose(x[:, ~random], v[~random].expand(draws, -1), rtol=1e-12, atol=0)
    se = (var[random] / draws).sqrt()
    z = (x[:, random].mean(0) - v[random]) / se
    n = int(random.sum())
    assert abs(float(z.sum()) / math.sqrt(n)) <= 3.0
    bonferroni = NormalDist().inv_cdf(1 - 0.001 / (2 * n))
    assert float(z.abs().max()) <= bonferroni
    # and the empirical per-coordinate variance matches the exact one (the draws really are random)
    emp = x[:, random].var(0)
    assert torch.allclose(emp.mean(), var[random].mean(), rtol=0.1)


@pytest.mark.parametrize("norm", ["max", "l2"])
@pytest.mark.parametrize("levels,kind", [(2, "flat"), (2, "gauss"), (4, "gauss"), (16, "gauss")])
def test_qsgd_variance_bounds(norm, levels, kind):
    """E||Q(v)-v||^2 equals (N/q)^2 sum p(1-p) (checked empirically) and respects the bounds:
    l2 (QSGD paper, q = levels-1 intervals): <= min(n/q^2, sqrt(n)/q) ||v||^2;
    max (derived in the QSGD docstring): <= min(n ||v||_inf^2 / (4q^2), ||v||_inf ||v||_1 / q)."""
    g = torch.Generator().manual_seed(11)
    n = 64
    v = torch.randn(n, generator=g, dtype=torch.float64)
    if kind == "flat":  # equal magnitudes: the sqrt(n)/q regime is nearly tight for l2 at q=1
        v = torch.sign(v) * 0.3
    q = levels - 1
    draws = 2000
    err = ((_qsgd_draws(v, levels, norm, draws) - v) ** 2).sum(1)
    exact = float(_qsgd_exact_var(v, levels, norm).sum())
    se = float(err.std()) / math.sqrt(draws)
    assert abs(float(err.mean()) - exact) <= 4 * se + 1e-12
    l2sq = float(v.norm() ** 2)
    paper = min(n / q**2, math.sqrt(n) / q) * l2sq
    assert exact <= paper and float(err.mean()) <= paper
    if norm == "max":
        inf, l1 = float(v.abs().max()), float(v.abs().sum())
        derived = min(n * inf**2 / (4 * q**2), inf * l1 / q)
        assert exact <= derived + 1e-12
        assert derived <= paper + 1e-12
    if kind == "flat" and norm == "l2":
        assert exact >= 0.8 * paper  # the bound is nearly attained: the test would catch extra variance


@FAST
@given(vectors, st.integers(2, 9), st.sampled_from(["max", "l2"]), st.integers(0, 2**31 - 1))
def test_qsgd_outputs_are_neighbouring_levels(v, levels, norm, seed):
    out = step("qsgd", levels=levels, norm=norm).apply({"t": v}, ctx(seed))["t"]
    N = v.abs().max() if norm == "max" else v.norm()
    if N == 0:
        assert torch.all(out == 0)
        return
    q = levels - 1
    r = (v.abs() / N * q).clamp(0, q)
    lvl = out.abs() / (N / q)
    assert torch.allclose(lvl, lvl.round(), atol=1e-6)
    assert torch.all(lvl.round() >= r.floor() - 1e-9) and torch.all(lvl.round() <= r.ceil() + 1e-9)
    nz = out != 0
    assert torch.equal(torch.sign(out[nz]), torch.sign(v[nz]))


# ---------------------------------------------------------------------------------------------------------
# sign


@FAST
@given(vectors)
def test_sign_outputs_plus_minus_one(v):
    out = step("sign").apply({"t": v}, ctx())["t"]
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    assert torch.all(out[v > 0] == 1) and torch.all(out[v < 0] == -1) and torch.all(out[v == 0] == 1)


def test_sign_mean_abs_scale_per_tensor():
    u = update()
    u["conv.bias"][1] = 0.0
    out = step("sign", scale="mean-abs").apply(u, ctx())
    for k, t in u.items():
        a = float(t.abs().mean())
        assert set(out[k].unique().tolist()) <= {-a, a}
        assert torch.equal(out[k] > 0, t >= 0)


# ---------------------------------------------------------------------------------------------------------
# top-k / rand-k / prune


def _check_topk(inp: torch.Tensor, out: torch.Tensor, k: int):
    kept = out != 0
    assert int(kept.sum()) == k
    assert torch.equal(out[kept], inp[kept])  # kept values are unchanged
    if 0 < k < inp.numel():
        assert inp[kept].abs().min() >= inp[~kept].abs().max()


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_topk_per_tensor_keeps_exactly_the_k_largest(sparsity):
    u = update()
    out = step("topk", sparsity=sparsity).apply(u, ctx())
    for name, t in u.items():
        k = math.ceil((1 - sparsity) * t.numel() - 1e-9)
        _check_topk(t, out[name], k)


@pytest.mark.parametrize("kw", [{"sparsity": 0.9}, {"k": 7}, {"k": 10_000}])
def test_topk_global_keeps_exactly_the_k_largest_overall(kw):
    u = update()
    out = step("topk", scope="global", **kw).apply(u, ctx())
    total = sum(t.numel() for t in u.values())
    k = min(kw.get("k", 0), total) if "k" in kw else math.ceil(0.1 * total)
    _check_topk(torch.cat([t.flatten() for t in u.values()]), torch.cat([out[n].flatten() for n in u]), k)
    # global selection really is global: the small-scale bias tensor loses more than its share
    assert (out["conv.bias"] != 0).float().mean() <= (out["fc.weight"] != 0).float().mean()


def test_topk_with_k_per_tensor_and_ties():
    t = {"a": torch.ones(5, 4), "b": torch.tensor([3.0, -3.0, 1.0])}
    out = step("topk", k=3).apply(t, ctx())
    assert int((out["a"] != 0).sum()) == 3  # ties broken, count exact
    assert torch.equal(out["b"], t["b"])  # k >= n keeps everything


@pytest.mark.parametrize("n,p,k", [(10, 0.7, 3), (10, 0.9, 1), (100, 0.99, 1), (7, 0.0, 7), (3, 0.999, 1),
                                   (1000, 0.25, 750)])
def test_kept_count_is_ceil_of_the_kept_fraction(n, p, k):
    assert kept_count(n, p, None) == k


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_randk_keeps_k_random_entries(scope):
    u = update()
    s = step("randk", k=5, scope=scope)
    out = s.apply(u, ctx(3))
    kept = {n: out[n] != 0 for n in u}
    if scope == "tensor":
        assert all(int(kept[n].sum()) == min(5, u[n].numel()) for n in u)  # conv.bias has only 4
    else:
        assert sum(int(m.sum()) for m in kept.values()) == 5
    for n in u:
        assert torch.equal(out[n][kept[n]], u[n][kept[n]])
    other = s.apply(u, ctx(4))
    assert any(not torch.equal(other[n] != 0, kept[n]) for n in u)  # positions depend on the seed


def test_randk_rescaled_is_unbiased():
    v = torch.linspace(-2, 3, 20, dtype=torch.float64)
    s = step("randk", k=4, rescale=True)
    draws = 4000
    out = s.apply({f"d{i}": v for i in range(draws)}, ctx(1))
    x = torch.stack([out[f"d{i}"] for i in range(draws)])
    assert set((x[0] != 0).nonzero().flatten().tolist()) <= set(range(20)) and int((x[0] != 0).sum()) == 4
    assert torch.allclose(x[0][x[0] != 0], v[x[0] != 0] * 5)  # n / k = 5
    # exact variance of each coordinate: v_i^2 (n/k - 1) (no v_i is 0). Inclusions within a draw are
    # negatively correlated (exactly k kept), which changes Var(sum z / sqrt(n)) by at most a factor
    # 1 + 1/(n-1); the 3-SE aggregate rule stays honest.
    se = (v**2 * (20 / 4 - 1) / draws).sqrt()
    z = (x.mean(0) - v) / se
    assert abs(float(z.sum()) / math.sqrt(20)) <= 3
    assert float(z.abs().max()) <= NormalDist().inv_cdf(1 - 0.001 / 40)


@pytest.mark.parametrize("percent", [0, 10, 50, 90, 100])
def test_prune_zeroes_the_smallest_percent(percent):
    u = update()
    out = step("prune", percent=percent).apply(u, ctx())
    for name, t in u.items():
        pruned = math.floor(percent / 100 * t.numel() + 1e-9)
        _check_topk(t, out[name], t.numel() - pruned)


# ---------------------------------------------------------------------------------------------------------
# clipping


@FAST
@given(st.floats(1e-3, 1e3), st.integers(0, 10_000), st.sampled_from([torch.float32, torch.float64]))
def test_clip_bounds_the_global_norm(c, seed, dtype):
    u = {k: v * 10 for k, v in update(seed, dtype).items()}
    out = step("clip", max_norm=c).apply(u, ctx())
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in out.values()))
    raw = math.sqrt(sum(float((t.double() ** 2).sum()) for t in u.values()))
    assert norm <= c
    if raw > c:
        assert norm == pytest.approx(c, rel=1e-5)
        for k in u:  # direction kept: a single common factor
            assert torch.allclose(out[k], u[k] * (norm / raw), rtol=1e-5, atol=1e-12)
    else:
        assert all(torch.equal(out[k], u[k]) for k in u)


def test_clip_leaves_small_updates_unchanged():
    u = update()
    raw = math.sqrt(sum(float((t**2).sum()) for t in u.values()))
    out = step("clip", max_norm=raw * 1.01).apply(u, ctx())
    assert all(torch.equal(out[k], u[k]) for k in u)


# ---------------------------------------------------------------------------------------------------------
# noise: empirical std within 5 % of the configured / derived value

N_NOISE = 50_000


def _noise(s, inp=None, seed=0):
    inp = inp if inp is not None else {"z": torch.zeros(N_NOISE, dtype=torch.float64)}
    out = s.apply(inp, ctx(seed))
    return {k: out[k] - inp[k] for k in inp}


@pytest.mark.parametrize("sigma", [0.01, 1.0, 7.5])
def test_gaussian_sigma(sigma):
    e = _noise(step("gaussian", sigma=sigma))["z"]
    assert float(e.std()) == pytest.approx(sigma, rel=0.05)
    assert abs(float(e.mean())) < 5 * sigma / math.sqrt(N_NOISE)


@pytest.mark.parametrize("name,key", [("gaussian", "snr_db"), ("laplace", "snr_db")])
@pytest.mark.parametrize("snr", [-3.0, 0.0, 20.0])
def test_snr_noise_is_per_tensor(name, key, snr):
    g = torch.Generator().manual_seed(2)
    inp = {"small": torch.randn(N_NOISE, generator=g, dtype=torch.float64) * 0.01,
           "big": torch.randn(N_NOISE, generator=g, dtype=torch.float64) * 5.0 + 1.0}
    e = _noise(step(name, **{key: snr}), inp)
    for k, t in inp.items():
        want = math.sqrt(float((t**2).mean()) * 10 ** (-snr / 10))
        assert float(e[k].std()) == pytest.approx(want, rel=0.05)
        # measured SNR in dB
        assert 10 * math.log10(float((t**2).mean()) / float((e[k] ** 2).mean())) == pytest.approx(snr, abs=0.3)


@pytest.mark.parametrize("b", [0.05, 2.0])
def test_laplace_scale(b):
    e = _noise(step("laplace", scale=b))["z"]
    assert float(e.std()) == pytest.approx(b * math.sqrt(2), rel=0.05)
    # Laplace, not Gaussian: E|X| = b (a Gaussian of the same std has E|X| = 1.128 b)
    assert float(e.abs().mean()) == pytest.approx(b, rel=0.03)


def test_ldp_gaussian_noise_multiplier_and_sigma():
    e = _noise(step("ldp", max_norm=2.0, noise_multiplier=0.7))["z"]
    assert float(e.std()) == pytest.approx(1.4, rel=0.05)
    e = _noise(step("ldp", max_norm=2.0, sigma=0.3))["z"]
    assert float(e.std()) == pytest.approx(0.3, rel=0.05)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_ldp_gaussian_sigma_from_epsilon_matches_opacus(accountant):
    from opacus.accountants.utils import get_noise_multiplier

    C, eps, delta = 1.5, 4.0, 1e-5
    s = step("ldp", max_norm=C, epsilon=eps, delta=delta, accountant=accountant)
    z = get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=1.0, steps=1, accountant=accountant)
    assert s.noise_std() == pytest.approx(z * C, rel=1e-12)
    e = _noise(s)["z"]
    assert float(e.std()) == pytest.approx(z * C, rel=0.05)


def test_ldp_gaussian_clips_before_noise():
    u = {k: v * 100 for k, v in update().items()}
    s = step("ldp", max_norm=1.0, sigma=1e-9)
    out = s.apply(u, ctx())
    norm = math.sqrt(sum(float((t**2).sum()) for t in out.values()))
    assert norm == pytest.approx(1.0, abs=1e-6)


def test_ldp_laplace_clips_l1_and_uses_b_equal_c_over_epsilon():
    C, eps = 2.0, 0.5
    s = step("ldp", max_norm=C, epsilon=eps, mechanism="laplace")
    e = _noise(s)["z"]
    b = C / eps
    assert float(e.std()) == pytest.approx(math.sqrt(2) * b, rel=0.05)
    assert float(e.abs().mean()) == pytest.approx(b, rel=0.03)
    assert s.privacy(ctx()) == (pytest.approx(eps), 0.0)
    u = {k: v * 100 for k, v in update().items()}
    tiny = step("ldp", max_norm=C, noise_multiplier=1e-12, mechanism="laplace").apply(u, ctx())
    assert sum(float(t.abs().sum()) for t in tiny.values()) == pytest.approx(C, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# bit costs


NUMELS = [108, 4, 170]


def test_default_pipeline_is_32_bits_per_parameter():
    assert build_pipeline([]).bits(NUMELS) == 32 * sum(NUMELS)
    assert build_pipeline([{"name": "clip"}]).bits(NUMELS) == 32 * sum(NUMELS)


def test_sign_costs_one_bit_per_parameter():
    n = sum(NUMELS)
    assert step("sign").bits(NUMELS) == n
    assert step("sign", scale="mean-abs").bits(NUMELS) == n + 32 * len(NUMELS)
    assert build_pipeline([{"name": "sign"}]).bits([10**6]) / 10**6 == pytest.approx(1.0)


def test_quantiser_bits():
    # levels 16 -> 31 signed indices -> 5 bits each, plus a 32-bit scale per tensor
    for name in ("uniform", "qsgd"):
        assert step(name, levels=16).bits(NUMELS) == 5 * sum(NUMELS) + 32 * len(NUMELS)
        assert step(name, levels=2).bits(NUMELS) == 2 * sum(NUMELS) + 32 * len(NUMELS)
        assert step(name, levels=2).bits(NUMELS) < step(name, levels=256).bits(NUMELS) < 32 * sum(NUMELS)


def test_sparse_bits_fewer_than_dense_and_monotone():
    dense = 32 * sum(NUMELS)
    b90 = step("topk", sparsity=0.9).bits(NUMELS)
    b99 = step("topk", sparsity=0.99).bits(NUMELS)
    assert b99 < b90 < dense
    # 108 entries, keep 11: 11 floats + 11 * 7-bit indices (cheaper than a 108-bit bitmap)
    assert step("topk", k=11).bits([108]) == 11 * 32 + 11 * 7
    # keep 60 of 108: bitmap (108 bits) is cheaper than 60 indices
    assert step("topk", k=60).bits([108]) == 60 * 32 + 108
    assert step("randk", sparsity=0.9).bits(NUMELS) == b90
    assert step("prune", percent=90).bits(NUMELS) < dense


def test_noise_after_sparsification_is_dense_again():
    p = build_pipeline([{"name": "topk", "sparsity": 0.9}, {"name": "gaussian", "sigma": 0.1}])
    assert p.bits(NUMELS) == 32 * sum(NUMELS)
