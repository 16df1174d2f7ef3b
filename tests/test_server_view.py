"""The server view is sealed: nothing the attacker is given may depend on the client's true images.

The same config is built twice, once on the builtin photos and once on noise images of the same shape; every
:class:`ServerView` field (tensors compared exactly) and every piece of attack ``info`` must be identical. The
scenario's evaluation (the imprint report) does compare with the true batch -- it must differ, and lives only
in ``Case.scenario_metrics()``.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fedleak.client.data import ImageSet
from fedleak.errors import ConfigError


def _config(attack_cfg, server: dict) -> dict:
    return {
        "data": {"source": "builtin", "size": 16, "batch_size": 4},
        "model": {"name": "lenet", "num_classes": 1000},
        "server": server,
        "attack": dict(attack_cfg),
    }


def _noise_images(like: ImageSet) -> ImageSet:
    g = torch.Generator().manual_seed(123)
    return ImageSet(images=torch.rand(like.images.shape, generator=g), labels=(like.labels + 7) % 1000,
                    names=[f"noise{i}" for i in range(like.images.shape[0])])


def _same(a, b, where: str = "view") -> None:
    """Exact structural equality, tensors with torch.equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:  # NaN
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b, where


def _same_view(va, vb) -> None:
    for f in dataclasses.fields(va):
        a, b = getattr(va, f.name), getattr(vb, f.name)
        if f.name == "model_factory":
            assert (a is None) == (b is None), f.name
            if a is not None:  # the rebuilt models are the same
                _same(va.build_model().state_dict(), vb.build_model().state_dict(), "model_factory()")
            continue
        _same(a, b, f.name)


SERVERS = [
    ("honest", {"name": "honest"}, "rog"),
    ("malicious-imprint", {"name": "malicious-imprint", "public_count": 64, "bins": 32}, "ldp-imprint"),
    ("malicious-imprint-nested", {"name": "malicious-imprint", "public_count": 64, "bins": 32, "layout": "nested"},
     "imprint"),
]


@pytest.mark.parametrize("label,server,_att", SERVERS, ids=[s[0] for s in SERVERS])
def test_server_view_does_not_depend_on_the_true_images(attack_cfg, label, server, _att):
    from fedleak.experiment.case import Case

    cfg = _config(attack_cfg, server)
    real = Case(cfg)
    noise = Case(cfg, images=_noise_images(real.data))
    assert not torch.equal(real.images, noise.images)  # the test is meaningful
    _same_view(real.server_view(), noise.server_view())
    _same(real.server_extra, noise.server_extra, "server_extra")


@pytest.mark.parametrize("server,name", [(s, a) for _, s, a in SERVERS[1:]])
def test_imprint_attack_info_holds_nothing_from_the_true_images(attack_cfg, server, name):
    """Same update (that of the real images) and two server views built on different images: identical info;
    and the evaluation-only report is not in it."""
    from fedleak.attacks import attack
    from fedleak.experiment.case import Case

    cfg = _config(attack_cfg, server)
    real = Case(cfg)
    noise = Case(cfg, images=_noise_images(real.data))
    update = real.client_update()
    ra, rb = attack(name, real.server_view(), update), attack(name, noise.server_view(), update)
    _same(ra.info, rb.info, "info")
    assert torch.equal(ra.images, rb.images)
    assert "structure_report" not in ra.info and "imprint_report" not in ra.info


def test_scenario_metrics_compare_with_the_true_batch(attack_cfg):
    from fedleak.experiment.case import Case

    cfg = _config(attack_cfg, SERVERS[1][1])
    real = Case(cfg)
    noise = Case(cfg, images=_noise_images(real.data))
    ma, mb = real.scenario_metrics(), noise.scenario_metrics()
    assert ma["scenario"] == "malicious-imprint"
    ra, rb = ma["imprint_report"], mb["imprint_report"]
    assert ra["client_loss_original"] != rb["client_loss_original"]  # it does read the images ...
    assert ra["public_prediction_agreement"] == rb["public_prediction_agreement"] == 1.0
    assert "imprint_report" not in real.server_view().extra  # ... and stays out of the view
    assert Case(_config(attack_cfg, {"name": "honest"})).scenario_metrics() == {"scenario": "honest"}


def test_scenarios_see_only_the_server_context(attack_cfg):
    """A scenario is handed a ServerContext: no images, no labels, no case."""
    from fedleak.experiment.case import Case
    from fedleak.server.scenarios import ServerContext

    case = Case(_config(attack_cfg, {"name": "honest"}))
    ctx = case.server_context
    assert isinstance(ctx, ServerContext)
    names = {f.name for f in dataclasses.fields(ctx)}
    assert not names & {"images", "labels", "data", "case"}
    assert ctx.image_shape == (3, 16, 16) and ctx.num_classes == 1000
    assert ctx.public_crops(16, seed=0).shape == (16, 3, 16, 16)


def test_typed_scenario_options():
    from fedleak.options import NoOptions
    from fedleak.server import SCENARIOS, check_server_config
    from fedleak.server.imprint import ImprintOptions

    assert SCENARIOS.options_model("honest") is NoOptions
    assert SCENARIOS.options_model("malicious-imprint") is ImprintOptions
    opts = check_server_config({"name": "malicious-imprint", "bins": 64, "layout": "nested"})
    assert isinstance(opts, ImprintOptions) and opts.bins == 64 and opts.layout == "nested" and opts.probes == 4
    assert isinstance(check_server_config({"name": "honest"}), NoOptions)
    for bad, word in (({"bins": 1}, "bins"), ({"kappa": 1.0}, "kappa"), ({"eps": 0}, "eps"),
                      ({"public_count": 8}, "public_count"), ({"layout": "grid"}, "layout")):
        with pytest.raises(ConfigError, match=word):
            check_server_config({"name": "malicious-imprint", **bad})
    with pytest.raises(ConfigError, match="unknown option"):
        check_server_config({"name": "honest", "bins": 3})
    with pytest.raises(ConfigError, match="name"):
        check_server_config({"bins": 3})


def test_readout_attacks_declare_options():
    from fedleak.attacks import ATTACKS
    from fedleak.attacks.readout import ImprintAttackOptions, LdpImprintOptions

    assert ATTACKS.options_model("imprint") is ImprintAttackOptions
    assert ATTACKS.options_model("ldp-imprint") is LdpImprintOptions
    o = ATTACKS.options("ldp-imprint", {"confidence": 0.95})
    assert o.confidence == 0.95 and o.filter_domain == "dct"
    with pytest.raises(ConfigError, match="confidence"):
        ATTACKS.options("ldp-imprint", {"confidence": 1.5})
    assert not ATTACKS.caps("ldp-imprint").needs_labels


def test_no_import_cycle_between_scenarios_and_imprint():
    import ast
    from pathlib import Path

    import fedleak.server.scenarios as sc

    tree = ast.parse(Path(sc.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("fedleak.server.imprint") for m in imported)
    assert not any(m == "fedleak.server" for m in imported)
