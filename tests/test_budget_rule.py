"""The no-silent-override rule (issue 15 item 3, issue 12 item 3; README "Budgets"):

* attack options in a config file belong to the attack named in that file: ``--set attack.name=X`` drops them
  (with a notice) and X runs its own defaults, except the ``attack.*`` options that were themselves overridden;
* ``iterations`` never replaces a preset's sign budget: a sign-compressed update runs ``sign_iterations``
  (the preset's, or the user's when set explicitly).
"""
from __future__ import annotations

import logging
import types
from pathlib import Path

import pytest

import fedleak
from fedleak.attacks import ATTACKS, attack
from fedleak.attacks.presets import PRESETS, SIGN_ITERATIONS, engine_config
from fedleak.experiment.case import Case

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
QSGD = REPO / "configs" / "rog_qsgd.yaml"
SIGN = types.SimpleNamespace(obfuscation=[{"name": "sign"}])
PLAIN = types.SimpleNamespace(obfuscation=[{"name": "topk", "sparsity": 0.9}])


def _file(tmp_path, attack_section: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(f"data: {{size: 16, batch_size: 1}}\nattack: {attack_section}\n")
    return p


# ------------------------------------------------------------------------------ switching the attack by --set
def test_switching_the_attack_drops_the_files_budget(tmp_path, caplog):
    path = _file(tmp_path, "{name: rog, iterations: 100, lr: 0.05}")
    with caplog.at_level(logging.WARNING, logger="fedleak.config"):
        cfg = fedleak.load_config(path, ["attack.name=inverting-gradients"])
    assert cfg.attack == {"name": "inverting-gradients"}
    assert cfg.sections.attack_options.iterations == PRESETS["inverting-gradients"]["iterations"] == 1000
    assert cfg.sections.attack_options.lr == PRESETS["inverting-gradients"]["lr"]
    (notice,) = cfg.notices
    assert "iterations=100" in notice and "lr=0.05" in notice and "written for rog" in notice
    assert notice in caplog.text


def test_options_given_with_the_switch_are_kept(tmp_path):
    path = _file(tmp_path, "{name: rog, iterations: 100, labels: llg}")
    cfg = fedleak.load_config(path, ["attack.name=inverting-gradients", "attack.iterations=30"])
    assert cfg.attack == {"name": "inverting-gradients", "iterations": 30}
    # an override before the switch counts too
    cfg = fedleak.load_config(path, ["attack.labels=known", "attack.name=inverting-gradients"])
    assert cfg.attack == {"name": "inverting-gradients", "labels": "known"}


def test_the_same_attack_keeps_the_files_options(tmp_path):
    path = _file(tmp_path, "{name: rog, iterations: 100}")
    for ovs in ([], ["attack.name=rog"], ["attack.lr=0.1"]):
        cfg = fedleak.load_config(path, ovs)
        assert cfg.attack["iterations"] == 100 and cfg.notices == []


def test_a_whole_attack_section_from_set_is_taken_as_given(tmp_path):
    path = _file(tmp_path, "{name: rog, iterations: 100}")
    cfg = fedleak.load_config(path, ["attack={name: inverting-gradients, iterations: 20}"])
    assert cfg.attack == {"name": "inverting-gradients", "iterations": 20} and cfg.notices == []


def test_the_readme_demo_runs_the_presets_own_budget():
    """The README's `--set attack.name=...` lines over configs/demo.yaml: the preset's budget, and
    rog-refine (which has no top-level `iterations`) loads instead of failing."""
    cfg = fedleak.load_config(DEMO, ["attack.name=inverting-gradients"])
    assert cfg.sections.attack_options.iterations == 1000
    cfg = fedleak.load_config(DEMO, ["attack.name=rog"])
    assert cfg.sections.attack_options.iterations == PRESETS["rog"]["iterations"]
    cfg = fedleak.load_config(DEMO, ["attack.name=rog-refine"])
    assert cfg.attack["name"] == "rog-refine"


def test_api_overrides_on_a_dict_follow_the_rule():
    case = Case({"data": {"size": 16, "batch_size": 1}, "attack": {"name": "rog", "iterations": 5}},
                overrides=["attack.name=idlg"])
    assert case.config.attack == {"name": "idlg"}
    assert len(case.config.notices) == 1


# ------------------------------------------------------------------------------ the sign budget
def test_iterations_never_replace_the_sign_budget():
    assert SIGN_ITERATIONS == {"rog": 300}
    assert engine_config("rog", SIGN).iterations == 300
    assert engine_config("rog", PLAIN).iterations == 100 and engine_config("rog", None).iterations == 100
    # a config's iterations (even rog_qsgd.yaml's 100) is the budget of the other updates only
    assert engine_config("rog", SIGN, iterations=100).iterations == 300
    assert engine_config("rog", PLAIN, iterations=7).iterations == 7
    # set explicitly, the sign budget is the user's; null: the same as iterations
    assert engine_config("rog", SIGN, iterations=7, sign_iterations=11).iterations == 11
    assert engine_config("rog", SIGN, iterations=7, sign_iterations=None).iterations == 7
    assert engine_config("inverting-gradients", SIGN).iterations == 1000  # no sign budget for this preset


def test_rog_qsgd_config_with_sign_runs_the_sign_budget():
    cfg = fedleak.load_config(QSGD, ["obfuscation=sign", "data.batch_size=8"])
    assert cfg.attack["iterations"] == 100
    assert engine_config("rog", SIGN, **{k: v for k, v in cfg.attack.items() if k != "name"}).iterations == 300


def test_the_sign_budget_reaches_the_engine_and_is_noted():
    case = Case({"seed": 2, "data": {"size": 16, "batch_size": 1}, "model": {"name": "lenet"},
                 "obfuscation": ["sign"], "attack": "rog"})
    view, update = case.server_view(), case.client_update()
    seen = []

    def stop(state):
        seen.append(state["iterations"])
        if state["iteration"] >= 1:
            raise KeyboardInterrupt

    rec = attack("rog", view, update, iterations=5, callback=stop)
    assert rec.info["interrupted"] and "sign budget of 300" in rec.info["notes"][0]
    attack("rog", view, update, iterations=5, sign_iterations=4, callback=stop)
    assert seen[0] == 300 and seen[-1] == 4


def test_staged_stage_iterations_keep_the_stage_sign_budget():
    preset_stages = ATTACKS.options("rog-refine", {}).stages
    opts = ATTACKS.options("rog-refine", {"stages": {"1": {"iterations": 7}}})
    assert [c.iterations for c in opts.stage_configs(None)] == [preset_stages[0].iterations, 7,
                                                                preset_stages[2].iterations]
    assert [c.iterations for c in opts.stage_configs(SIGN)] == [s.sign_iterations for s in preset_stages
                                                                if s.sign_iterations != 0]  # 0: skipped
    opts = ATTACKS.options("rog-refine", {"stages": {"1": {"iterations": 7, "sign_iterations": 8}}})
    assert [c.iterations for c in opts.stage_configs(SIGN)][1] == 8


@pytest.mark.parametrize("bad", [0, -3, "x", 1.5])
def test_bad_sign_iterations_is_one_line(bad):
    with pytest.raises(fedleak.errors.ConfigError, match="sign_iterations"):
        ATTACKS.options("rog", {"sign_iterations": bad})
