"""Victim models: ROG's architectures, seeded initialisation, user models from ``import:``."""
from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from fedleak.errors import ConfigError
from fedleak.client.models import MODELS, build_model


def shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.named_parameters()}


def meta_model(name, **kw):
    """Build on the meta device: full-size shapes without allocating or initialising 100+ MB."""
    with torch.device("meta"):
        return build_model(name, **kw)


def test_registered_models():
    assert {"lenet", "resnet18-rog", "resnet18", "resnet18-cifar", "convnet"} <= set(MODELS.names())


def test_lenet_matches_rog_at_128():
    m = meta_model("lenet", num_classes=1000, image_size=128)
    assert shapes(m) == {
        "features.0.weight": (32, 3, 5, 5),
        "features.0.bias": (32,),
        "features.3.weight": (64, 32, 5, 5),
        "features.3.bias": (64,),
        "fc1.weight": (512, 65_536),  # 64 channels * 32 * 32 after two 2x2 max-pools, no bias
        "fc2.weight": (1000, 512),  # no bias
    }
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert all(c.padding == (2, 2) and c.stride == (1, 1) for c in convs)
    assert sum(isinstance(mod, nn.MaxPool2d) for mod in m.modules()) == 2


def test_lenet_forward_small_and_width():
    m = build_model("lenet", num_classes=10, image_size=16, width=0.5, seed=0)
    assert shapes(m)["fc1.weight"] == (256, 32 * 4 * 4)
    assert m(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_model("lenet", image_size=18)


def test_resnet18_rog_has_no_batchnorm_and_a_wide_bias_free_fc():
    m = meta_model("resnet18-rog", num_classes=1000, image_size=128)
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())
    assert m.fc.weight.shape == (1000, 512 * 64) and m.fc.bias is None
    stem = m.stem[0]
    assert stem.weight.shape == (64, 3, 7, 7) and stem.stride == (2, 2) and stem.bias is None
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())
    assert isinstance(m.pool, nn.AdaptiveAvgPool2d) and m.pool.output_size in (8, (8, 8))
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, 8 blocks x 2, 3 downsampling shortcuts
    # ResNet-18 conv weights (11,166,912 with a 7x7 stem) + the 32,768 x 1000 fc
    assert sum(p.numel() for p in m.parameters()) == 11_166_912 + 32_768_000


def test_resnet18_rog_forward_small():
    m = build_model("resnet18-rog", num_classes=7, image_size=32, width=0.125, seed=0)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_standard_resnets_have_batchnorm():
    for name in ("resnet18", "resnet18-cifar"):
        m = meta_model(name, num_classes=10)
        assert any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
        assert m.fc.bias is not None


@pytest.mark.parametrize("name,kw", [("lenet", {"image_size": 16}), ("resnet18-rog", {"width": 0.125}),
                                     ("convnet", {"width": 0.125})])
def test_seeded_init_is_reproducible_and_isolated(name, kw):
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    a = build_model(name, num_classes=10, seed=5, **kw)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG untouched by the seeded build
    b = build_model(name, num_classes=10, seed=5, **kw)
    c = build_model(name, num_classes=10, seed=6, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_activation_choice():
    m = build_model("lenet", num_classes=10, image_size=16, activation="sigmoid")
    assert any(isinstance(mod, nn.Sigmoid) for mod in m.modules())
    assert not any(isinstance(mod, nn.ReLU) for mod in m.modules())
    with pytest.raises(ConfigError, match="unknown activation 'swish'"):
        build_model("lenet", activation="swish")


# ---------------------------------------------------------------------------------------------------------
# user models


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "fl_user_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self, num_classes=10, image_size=32, hidden=8):
                super().__init__()
                self.image_size = image_size
                self.fc1 = nn.Linear(3 * image_size * image_size, hidden)
                self.fc2 = nn.Linear(hidden, num_classes, bias=False)

            def forward(self, x):
                return self.fc2(torch.relu(self.fc1(x.flatten(1))))

        def no_args():
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 1000))

        def not_a_model(**kw):
            return "model"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fl_user_models"


def test_user_model_via_import(user_module):
    m = build_model(f"import:{user_module}:Tiny", num_classes=4, image_size=8, seed=1, hidden=5)
    assert shapes(m) == {"fc1.weight": (5, 192), "fc1.bias": (5,), "fc2.weight": (4, 5)}
    again = build_model(f"import:{user_module}:Tiny", num_classes=4, image_size=8, seed=1, hidden=5)
    assert torch.equal(m.fc1.weight, again.fc1.weight)
    assert isinstance(build_model(f"import:{user_module}:no_args"), nn.Sequential)


@pytest.mark.parametrize("spec,needle", [
    ("import:fl_user_models", "must look like 'import:package.module:Factory'"),
    ("import:fl_no_such_module_xyz:Tiny", "cannot import user model module"),
    ("import:fl_user_models:Missing", "has no attribute 'Missing'"),
    ("import:fl_user_models:not_a_model", "returned str, not an nn.Module"),
])
def test_user_model_errors(user_module, spec, needle):
    with pytest.raises(ConfigError, match=needle):
        build_model(spec)


def test_user_model_in_a_case(user_module, base_config):
    from fedleak.experiment.case import Case

    case = Case(dict(base_config, model={"name": f"import:{user_module}:Tiny", "num_classes": 1000,
                                         "options": {"hidden": 6}}))
    assert case.model.fc1.out_features == 6 and case.model.image_size == 16
    u = case.client_update()
    assert set(u.tensors) == {"fc1.weight", "fc1.bias", "fc2.weight"}
