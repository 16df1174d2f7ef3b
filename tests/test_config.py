"""Run configuration: overrides, pipeline strings, and one clear error per kind of mistake."""
from __future__ import annotations

import pytest
import torch

from fedleak.config.schema import RunConfig, load_config, parse_pipeline
from fedleak.errors import ConfigError, NumericalError


def test_defaults_and_overrides(base_config):
    cfg = load_config(base=base_config, overrides=["seed=7", "data.size=24", "protocol.name=fedavg",
                                                   "protocol.local_steps=3", "obfuscation=qsgd(8)"])
    assert cfg.seed == 7 and cfg.data.size == 24
    assert cfg.protocol.name == "fedavg" and cfg.protocol.local_steps == 3
    assert cfg.obfuscation == [{"name": "qsgd", "levels": 8}]
    assert RunConfig().attack == {"name": "rog-refine"}  # the default attack (the staged preset)


def test_pipeline_string_and_list_forms_agree(base_config):
    a = load_config(base=dict(base_config, obfuscation="clip(2) -> gaussian(snr_db=10) -> topk(0.9, scope=global)"))
    b = load_config(base=dict(base_config, obfuscation=[
        {"name": "clip", "max_norm": 2}, {"name": "gaussian", "snr_db": 10},
        {"name": "topk", "sparsity": 0.9, "scope": "global"}]))
    assert a.obfuscation == b.obfuscation
    c = load_config(base=dict(base_config, obfuscation=[{"name": "qsgd", "levels": 4}]),
                    overrides=["obfuscation.0.levels=8"])
    assert c.obfuscation == [{"name": "qsgd", "levels": 8}]


def test_yaml_file(tmp_path, attack_cfg):
    p = tmp_path / "run.yaml"
    p.write_text(f"seed: 3\ndata: {{size: 16}}\nattack: {{name: {attack_cfg['name']}}}\n"
                 "obfuscation:\n  - {name: sign, scale: mean-abs}\n")
    cfg = load_config(p, overrides=["data.batch_size=2"])
    assert cfg.seed == 3 and cfg.data.batch_size == 2
    assert cfg.obfuscation == [{"name": "sign", "scale": "mean-abs"}]


# ---------------------------------------------------------------------------------------------------------
# one error per mistake


def test_unknown_obfuscation_lists_valid_names(base_config):
    with pytest.raises(ConfigError) as e:
        load_config(base=dict(base_config, obfuscation=[{"name": "gausian", "sigma": 1}]))
    msg = str(e.value)
    assert "unknown obfuscation 'gausian'" in msg and "did you mean 'gaussian'" in msg
    for name in ("clip", "dpsgd", "gaussian", "laplace", "ldp", "prune", "qsgd", "randk", "sign", "topk",
                 "uniform"):
        assert name in msg


def test_unknown_obfuscation_in_a_pipeline_string(base_config):
    with pytest.raises(ConfigError, match="unknown obfuscation 'zip'; valid: "):
        load_config(base=dict(base_config, obfuscation="clip(1) -> zip(3)"))


@pytest.mark.parametrize("step,needle", [
    ({"name": "qsgd", "levels": 1}, "levels must be >= 2"),
    ({"name": "topk", "sparsity": 1.5}, "sparsity must be < 1"),
    ({"name": "gaussian", "sigma": "lots"}, "sigma must be a number"),
    ({"name": "ldp", "max_norm": 1, "epsilon": -2}, "epsilon must be > 0"),
    ({"name": "dpsgd", "noise_multiplier": 1, "accountant": "gdp"}, "accountant must be one of"),
])
def test_bad_obfuscation_value(base_config, step, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(base=dict(base_config, obfuscation=[step]))


def test_unknown_obfuscation_option_lists_valid_ones(base_config):
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'sigmaa'; valid: sigma, snr_db"):
        load_config(base=dict(base_config, obfuscation="gaussian(sigmaa=0.1)"))


def test_non_finite_value(base_config):
    with pytest.raises(ConfigError, match="finite"):
        load_config(base=base_config, overrides=["obfuscation=gaussian(.inf)"])


@pytest.mark.parametrize("overrides,needle", [
    (["dataa.size=3"], "unknown key 'dataa'; valid: seed, threads, data"),
    (["data.sise=3"], "unknown key 'data.sise'; valid: source, size"),
    (["data.size=2"], "data.size"),
    (["protocol.name=fedprox"], "protocol.name"),
    (["protocol.local_batch_size=5"], "exceeds data.batch_size=2"),
    (["model.name=lenett"], "unknown model 'lenett'"),
    (["model.activation=swish"], "unknown activation 'swish'"),
    (["attack.name=no-such-attack"], "unknown attack 'no-such-attack'"),
    (["seed"], "--set expects key=value"),
])
def test_bad_config_entries(base_config, overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(base=base_config, overrides=overrides)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {size: 16\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(lst)


def test_pipeline_string_syntax_errors():
    with pytest.raises(ValueError, match="only the first argument may be positional"):
        parse_pipeline("topk(0.9, global)")
    with pytest.raises(ValueError, match="unbalanced parentheses"):
        parse_pipeline("qsgd(16")


# ---------------------------------------------------------------------------------------------------------
# NaN in a gradient


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_nan_gradient_raises_numerical_error(base_config, protocol):
    from fedleak.experiment.case import Case

    case = Case(dict(base_config, protocol={"name": protocol}, obfuscation="qsgd(4)"))
    with torch.no_grad():
        case.model.fc1.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="NaN/Inf"):
        case.client_update()
