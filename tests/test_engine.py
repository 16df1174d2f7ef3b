"""The engine's registries (losses, priors, parameterisations, schedules), its typed options and the presets'
typed options: names resolve through one registry each, a registered loss or prior is used without editing the
engine, unknown names list the valid ones, and the sign-compressed iteration budget of ``rog`` applies only when
``iterations`` was not given."""
from __future__ import annotations

import types

import pytest
import torch

import fedleak

from fedleak.attacks import ATTACKS, attack, check_attack_config
from fedleak.attacks.engine import EngineConfig, resolve_parts
from fedleak.attacks.losses import LOSSES, MatchLoss
from fedleak.attacks.presets import PRESET_OPTIONS, PRESETS, SIGN_ITERATIONS, engine_config, sign_budget
from fedleak.attacks.priors import PRIORS, Prior
from fedleak.config.schema import load_config
from fedleak.errors import ConfigError
from fedleak.experiment.case import Case


@pytest.fixture(scope="module")
def small():
    torch.set_num_threads(1)
    case = Case({"seed": 1, "data": {"size": 16, "batch_size": 1}, "model": {"name": "lenet"},
                 "attack": "rog"})
    return case.server_view(), case.client_update()


def _register(monkeypatch, registry, name, obj):
    """Register ``obj`` for this test only (the registry's entries are restored afterwards)."""
    monkeypatch.setattr(registry, "_items", dict(registry._items))
    monkeypatch.setattr(registry, "_docs", dict(registry._docs))
    monkeypatch.setattr(registry, "_caps", dict(registry._caps))
    registry.register(name, doc=f"test {name}")(obj)


# --- unknown names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, valid", [
    ("loss", "l1", "valid: cosine, l2"),
    ("schedule", "linear", "valid: cosine, multistep, none"),
    ("param", "wavelet", "valid: lowres, pixels"),
    ("priors", {"nope": 1.0}, "unknown prior 'nope'; valid: bn-stats, tv"),
    ("optimizer", "sgd", "valid: adam, lbfgs"),
])
def test_unknown_names_list_the_valid_ones(key, value, valid):
    with pytest.raises(ConfigError, match=valid) as e:
        load_config(base={"attack": {"name": "rog", key: value}})
    assert "\n" not in str(e.value) and str(e.value).startswith("attack 'rog': option ")
    with pytest.raises(ConfigError, match=valid):
        EngineConfig(**{key: value})


def test_unknown_option_is_named_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown option 'iteration' \(did you mean 'iterations'\?\); valid: "):
        check_attack_config({"name": "dlg", "iteration": 3})


def test_registered_names_are_valid_in_a_config(monkeypatch):
    _register(monkeypatch, PRIORS, "flat", Prior(lambda x: x.var()))
    cfg = load_config(base={"attack": {"name": "inverting-gradients", "priors": {"flat": 0.5}}})
    opts = check_attack_config(cfg.attack)
    assert opts.priors == {"flat": 0.5} and opts.prior_weights() == {"tv": 0.05, "flat": 0.5}
    assert [name for name, _, _ in resolve_parts(opts).priors] == ["tv", "flat"]


# --- a registered loss / prior is used by the engine -------------------------------------------------------

def test_registered_loss_is_used_without_editing_the_engine(monkeypatch, small):
    view, update = small
    _register(monkeypatch, LOSSES, "double-l2", MatchLoss(lambda dot, gg, tt, l2: 2 * l2, direct=True))
    ref = attack("rog", view, update, iterations=2)
    mine = attack("rog", view, update, iterations=2, loss="double-l2")
    assert mine.info["attack_config"]["loss"] == "double-l2"
    # same start (same seed), twice the loss: the engine called the registered combine
    assert mine.loss_history[0] == 2 * ref.loss_history[0]


def test_registered_prior_is_used_without_editing_the_engine(monkeypatch, small):
    view, update = small
    calls = []

    def brightness(x):
        calls.append(tuple(x.shape))
        return x.mean()

    _register(monkeypatch, PRIORS, "brightness", Prior(brightness))
    plain = attack("rog", view, update, iterations=3)
    assert calls == []
    pushed = attack("rog", view, update, iterations=3, priors={"brightness": 10.0})
    assert calls == [(1, 3, 16, 16)] * 3  # once per iteration, on the full-resolution images
    assert pushed.images.mean() < plain.images.mean()  # the penalty pulled the images darker
    calls.clear()
    attack("rog", view, update, iterations=2, priors={"brightness": 0.0})
    assert calls == []  # a zero weight costs nothing


def test_tv_key_and_priors_tv_mean_the_same(small):
    view, update = small
    a = attack("rog", view, update, iterations=3, tv=0.3, tv_size=32)
    b = attack("rog", view, update, iterations=3, priors={"tv": 0.3}, tv_size=32)
    assert torch.equal(a.images, b.images)
    with pytest.raises(ConfigError, match="tv given twice"):
        check_attack_config({"name": "rog", "tv": 0.1, "priors": {"tv": 0.1}})


# --- typed preset options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_options_carry_the_preset_defaults(preset):
    model = ATTACKS.options_model(preset)
    assert model is PRESET_OPTIONS[preset] and issubclass(model, EngineConfig)
    defaults = model()
    for key, value in PRESETS[preset].items():
        assert getattr(defaults, key) == value, key
    assert defaults.model_fields_set == set()
    caps = ATTACKS.caps(preset)
    assert caps.seeds and caps.checkpoints and not caps.needs_labels
    opts = check_attack_config({"name": preset, "lr": 0.5})
    assert isinstance(opts, model) and opts.lr == 0.5 and opts.model_fields_set == {"lr"}
    assert opts.iterations == PRESETS[preset]["iterations"]


def test_preset_options_keep_the_engine_checks():
    assert PRESET_OPTIONS["inverting-gradients"]().tv == 0.05 and EngineConfig().tv == 0.0
    with pytest.raises(ConfigError, match="attack 'inverting-gradients': option tv must be >= 0"):
        ATTACKS.options("inverting-gradients", {"tv": -1})


def test_every_registered_attack_declares_an_options_model():
    assert [n for n in ATTACKS.names() if ATTACKS.options_model(n) is None] == []
    opts = check_attack_config({"name": "imprint", "tolerance": 1e-5})
    assert opts.tolerance == 1e-5
    with pytest.raises(ConfigError, match="'tolerence'"):
        check_attack_config({"name": "imprint", "tolerence": 1e-5})


# --- the sign-compressed iteration budget -----------------------------------------------------------------

def test_sign_budget_applies_unless_sign_iterations_is_given():
    signed = types.SimpleNamespace(obfuscation=[{"name": "sign"}])
    plain = types.SimpleNamespace(obfuscation=[{"name": "topk", "sparsity": 0.9}])
    assert SIGN_ITERATIONS == {"rog": 300}
    assert engine_config("rog", signed).iterations == 300
    assert engine_config("rog", plain).iterations == 100
    assert engine_config("rog", None).iterations == 100
    # iterations is the other updates' budget (the no-silent-override rule, tests/test_budget_rule.py)
    assert engine_config("rog", signed, iterations=7).iterations == 300
    assert engine_config("rog", signed, sign_iterations=7).iterations == 7
    assert engine_config("inverting-gradients", signed).iterations == 1000  # no sign budget for this preset
    opts = check_attack_config({"name": "rog", "lr": 0.1})
    assert sign_budget("rog", opts, signed).iterations == 300 and opts.iterations == 100  # not mutated


# the sign budget reaching the engine: tests/test_budget_rule.py::test_the_sign_budget_reaches_the_engine_and_is_noted


# --- prior weights scaled by the batch size -------------------------------------------------------------------

def test_tv_batch_scales_the_prior_weights_by_the_root_of_the_batch_ratio():
    cfg = EngineConfig(tv=2.0, tv_size=64, tv_batch=8, priors={"bn-stats": 0.5})
    weights = [w for w, _ in resolve_parts(cfg).prior_terms(cfg, 128, 2)]
    assert weights == pytest.approx([2.0 * (128 / 64) * 0.5, 0.5 * 0.5])  # sqrt(2 / 8) = 0.5; bn-stats: no side
    plain = EngineConfig(tv=2.0)
    assert [w for w, _ in resolve_parts(plain).prior_terms(plain, 128, 2)] == [2.0]


def test_tv_batch_cap_lightens_small_batches_and_leaves_large_ones_alone():
    cfg = EngineConfig(tv=4.0, tv_batch=4, tv_batch_cap=True)
    weight = lambda b: resolve_parts(cfg).prior_terms(cfg, 128, b)[0][0]
    assert weight(1) == pytest.approx(4.0 * 0.5)  # sqrt(1 / 4)
    assert weight(4) == weight(16) == 4.0  # uncapped, batch 16 would get x 2


def test_tv_batch_floor_weighs_large_batches_and_leaves_small_ones_alone():
    cfg = EngineConfig(tv=0.1, tv_batch=8, tv_batch_floor=True)
    weight = lambda b: resolve_parts(cfg).prior_terms(cfg, 128, b)[0][0]
    assert weight(1) == weight(4) == weight(8) == pytest.approx(0.1)  # unfloored, batch 1 would get x 0.35
    assert weight(16) == pytest.approx(0.1 * 2 ** 0.5) and weight(32) == pytest.approx(0.2)


def test_tv_batch_cap_and_floor_together_are_refused():
    with pytest.raises(ConfigError, match="tv_batch_cap and tv_batch_floor"):
        EngineConfig(tv=0.1, tv_batch=8, tv_batch_cap=True, tv_batch_floor=True)


def test_tv_batch_equal_to_the_batch_leaves_the_run_unchanged(small):
    view, update = small  # batch 1
    a = attack("rog", view, update, iterations=3, tv=0.5)
    b = attack("rog", view, update, iterations=3, tv=0.5, tv_batch=1)
    c = attack("rog", view, update, iterations=3, tv=0.5, tv_batch=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


# --- the weight of the large linear layers --------------------------------------------------------------------

def test_big_weight_multiplies_the_large_linear_weights_only():
    from fedleak.attacks.engine.loop import _layer_weights
    from fedleak.attacks.simulate import ForwardModel
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, bias=False), torch.nn.Flatten(),
                                torch.nn.Linear(32, 64, bias=False), torch.nn.Linear(8, 4, bias=False))
    params = dict(model.named_parameters())
    for fast in (True, False):  # the large layers are the same whether or not they are evaluated factorised
        fwd = ForwardModel(model, params, {}, big_threshold=1000, fast=fast)
        assert _layer_weights(EngineConfig(big_threshold=1000), fwd, (8, 4, 4)) is None  # all weights 1
        w = _layer_weights(EngineConfig(big_weight=4.0, big_threshold=1000, layer_weights={"2.": 0.5, "3.": 0.5}), fwd,
                           (8, 4, 4))
        assert w == {"2.weight": 2.0, "3.weight": 0.5}  # 2048 entries >= 1000; the 576-entry conv is not linear


def test_big_weight_changes_a_stage_only_where_a_large_linear_layer_exists(small):
    view, update = small
    plain = attack("rog", view, update, iterations=3)
    same = attack("rog", view, update, iterations=3, big_weight=4.0, big_threshold=1 << 30)  # no layer that big
    fast = attack("rog", view, update, iterations=3, big_threshold=1)  # every linear layer is large
    heavy = attack("rog", view, update, iterations=3, big_weight=4.0, big_threshold=1)
    assert torch.equal(plain.images, same.images) and not torch.equal(fast.images, heavy.images)


class _OutOfOrder(torch.nn.Module):
    """A model whose head is registered before the layer the images enter, with BatchNorm after it."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4 * 8 * 8, 3)
        self.norm = torch.nn.BatchNorm2d(4)
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.stem(x))).flatten(1))


def test_the_input_layer_is_the_first_one_the_images_pass_through_and_finding_it_changes_no_statistic():
    from fedleak.attacks.simulate import ForwardModel
    model = _OutOfOrder().train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    fwd = ForwardModel(model, dict(model.named_parameters()), dict(model.named_buffers()))
    assert fwd.input_layer((3, 8, 8)) == ("stem.weight", "stem.bias")  # not head, the first one registered
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())  # running stats and the batch count


def test_input_weight_multiplies_the_input_layers_weights_with_the_others():
    from fedleak.attacks.engine.loop import _layer_weights
    from fedleak.attacks.simulate import ForwardModel
    model = _OutOfOrder().train()
    fwd = ForwardModel(model, dict(model.named_parameters()), dict(model.named_buffers()), big_threshold=256)
    w = _layer_weights(EngineConfig(input_weight=0.5, big_weight=2.0, big_threshold=256,
                                    layer_weights={"stem.weight": 3.0}), fwd, (3, 8, 8))
    assert w == {"stem.weight": 1.5, "stem.bias": 0.5, "head.weight": 2.0}
    with pytest.raises(ConfigError, match="input_weight"):
        EngineConfig(input_weight=-1.0)


def test_input_weight_zero_is_the_attack_that_leaves_the_first_layer_out_by_name(small):
    view, update = small  # lenet: the images enter features.0
    plain = attack("rog", view, update, iterations=3)
    named = attack("rog", view, update, iterations=3, layer_weights={"features.0.": 0.0})
    unnamed = attack("rog", view, update, iterations=3, input_weight=0.0)
    assert torch.equal(named.images, unnamed.images) and not torch.equal(plain.images, unnamed.images)


# --- which iterate a run returns ---------------------------------------------------------------------------

def _iterates(view, update, **opts):
    """The attack's result and the (clamped) images after each of its iterations."""
    seen = []
    rec = attack("rog", view, update, iterations=12, lr=0.2, callback_every=1,
                 callback=lambda st: seen.append(st["images"]()), **opts)
    assert len(seen) == 12
    return rec, seen


def test_result_picks_the_returned_iterate(small):
    view, update = small
    best, seen = _iterates(view, update)  # result: best-loss (the default)
    k = min(range(12), key=best.loss_history.__getitem__)
    assert k != 11, "the test needs a run whose lowest loss is not at its last iteration"
    assert torch.equal(best.images, seen[k]) and best.info["best_loss"] == best.loss_history[k]
    last, seen_last = _iterates(view, update, result="last")
    assert last.loss_history == best.loss_history  # same run, another pick
    assert torch.equal(last.images, seen_last[-1]) and not torch.equal(last.images, best.images)
    assert last.info["best_loss"] == last.loss_history[-1]


def test_result_best_objective_scores_with_the_priors(small):
    view, update = small
    plain, _ = _iterates(view, update)
    same, _ = _iterates(view, update, result="best-objective")  # no prior: the objective is the matching loss
    assert torch.equal(plain.images, same.images)
    tv, _ = _iterates(view, update, result="best-objective", tv=10.0)
    assert tv.info["best_loss"] > min(tv.loss_history)  # the score includes the weighted TV


def test_result_names_the_valid_choices():
    with pytest.raises(ConfigError, match=r"result='first'; valid: best-loss, best-objective, last"):
        EngineConfig(result="first")
    cfg = fedleak.load_config(overrides=["attack.name=rog-refine", "attack.stages.2.signsgd.result=last"])
    opts = ATTACKS.options("rog-refine", {k: v for k, v in cfg.attack.items() if k != "name"})
    sign = types.SimpleNamespace(obfuscation=[{"name": "sign"}])
    assert [c.result for c in opts.stage_configs(sign)][-1] == "last"
    assert [c.result for c in opts.stage_configs(None)][-1] == "best-loss"


# --- init from given images (multi-stage attacks) ----------------------------------------------------------

def test_init_previous_encodes_the_given_images_per_parameterisation():
    from fedleak.attacks.engine import Latent

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    pix = Latent(EngineConfig(param="pixels", init="previous"), (2, 3, 8, 8), g, start=x)
    assert torch.equal(pix.images().detach(), x)
    up = Latent(EngineConfig(param="pixels", init="previous"), (2, 3, 32, 32), g, start=x)  # resized bicubically
    assert up.z.shape == (2, 3, 32, 32) and 0 <= float(up.z.detach().min()) and float(up.z.detach().max()) <= 1
    smooth = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    low = Latent(EngineConfig(param="lowres", scale=4, init="previous"), (2, 3, 32, 32), g, start=smooth)
    assert low.z.shape == (2, 3, 8, 8)
    assert float((low.images().detach() - smooth).abs().mean()) < 0.1
    sig = Latent(EngineConfig(param="pixels", init="previous", mapping="sigmoid"), (2, 3, 8, 8), g, start=x)
    assert torch.allclose(sig.images().detach(), x.clamp(1e-3, 1 - 1e-3), atol=1e-5)
    with pytest.raises(ConfigError, match="init: previous needs the images of a previous stage"):
        Latent(EngineConfig(init="previous"), (2, 3, 8, 8), g)
