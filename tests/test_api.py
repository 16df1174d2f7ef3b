"""The public Python API and the rule that attacks never see the client's images."""
import subprocess
import sys

import pytest
import torch

import fedleak
from fedleak.attacks import ATTACKS, Reconstruction

FAKE = "test-fake-api"

if FAKE not in ATTACKS:

    from conftest import SeededFakeOptions

    @ATTACKS.register(FAKE, doc="test attack: a deterministic function of the update only",
                      options=SeededFakeOptions)
    def _fake(view, update, options, callback=None):
        iterations = options.iterations
        g = torch.Generator().manual_seed(options.seed)
        x = torch.rand(view.batch_size, *view.image_shape, generator=g)
        first = next(iter(update.tensors.values())).flatten()
        x = (x + first[: x.numel()].sum()).remainder(1.0)  # depends on the update, not on the images
        return Reconstruction(images=x, labels=update.labels, loss_history=[1.0] * iterations)

# the real attacks once they exist (cheap settings), else the test attack
ATTACK_SETTINGS = [(n, {"iterations": 3}) for n in ("rog", "dlg") if n in ATTACKS.names()] or [(FAKE, {})]


pytestmark = pytest.mark.usefixtures("one_thread")


CFG = {"seed": 4, "threads": 1, "data": {"size": 16, "batch_size": 2}, "model": {"name": "lenet"},
       "attack": {"name": ATTACK_SETTINGS[0][0]}}  # the config default (rog) may not be registered yet


def test_four_line_api():
    case = fedleak.Case(CFG)
    update = case.client_update()
    name, opts = ATTACK_SETTINGS[0]
    rec = fedleak.attack(name, case.server_view(), update, **opts)
    res = fedleak.evaluate(case.images, rec)
    assert isinstance(rec, fedleak.Reconstruction) and isinstance(update, fedleak.Update)
    assert rec.images.shape == case.images.shape
    assert set(res["mean"]) >= {"psnr", "ssim", "ssim_rog", "perceptual"}
    assert sorted(res["permutation"]) == [0, 1]
    assert isinstance(case.server_view(), fedleak.ServerView)
    assert isinstance(fedleak.load_config(None, [f"attack.name={name}"]), fedleak.RunConfig)
    assert callable(fedleak.run)


def test_version_and_dir():
    assert isinstance(fedleak.__version__, str) and fedleak.__version__
    for name in ("Case", "attack", "evaluate", "load_config", "run", "Reconstruction", "Update", "ServerView"):
        assert name in dir(fedleak) and name in fedleak.__all__
    with pytest.raises(AttributeError):
        fedleak.no_such_thing


def test_import_is_lazy():
    code = "import sys, fedleak; print('torch' in sys.modules, 'matplotlib' in sys.modules, fedleak.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["False", "False"]


@pytest.mark.parametrize("name, opts", ATTACK_SETTINGS)
def test_attack_never_touches_true_images(name, opts):
    """Run the attack on an untouched case and on a case whose images were destroyed (in place, so any
    alias inside the view or the update would be poisoned too) and then deleted: identical results."""
    clean = fedleak.Case(CFG)
    torch.manual_seed(0)
    ref = fedleak.attack(name, clean.server_view(), clean.client_update(), seed=1, **opts)

    case = fedleak.Case(CFG)
    update = case.client_update()
    view = case.server_view()
    images = case.images
    images.fill_(float("nan"))  # in place: poisons every view/alias of the image tensor
    case.data.images = None
    del case.data
    assert torch.isnan(images).all()
    torch.manual_seed(0)
    rec = fedleak.attack(name, view, update, seed=1, **opts)

    assert torch.isfinite(rec.images).all()
    assert torch.equal(rec.images, ref.images)
    assert rec.loss_history == ref.loss_history
    # and the things the attack receives hold no image-shaped tensor
    for t in list(view.global_state.values()) + list(update.tensors.values()):
        assert t.shape[-3:] != images.shape[-3:] or t.shape[0] != images.shape[0]


def test_attack_result_depends_on_the_update():
    """Sanity check for the test above: the attack does use its input (a different batch gives a different
    reconstruction), so equality there is not vacuous."""
    name, opts = ATTACK_SETTINGS[0]
    a = fedleak.Case(CFG)
    b = fedleak.Case({**CFG, "data": {**CFG["data"], "start": 2}})
    ra = fedleak.attack(name, a.server_view(), a.client_update(), seed=1, **opts)
    rb = fedleak.attack(name, b.server_view(), b.client_update(), seed=1, **opts)
    assert not torch.equal(ra.images, rb.images)


def test_list_shows_every_registry(capsys):
    from fedleak import cli

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for heading, name in (("attacks:", "rog"), ("server scenarios:", "malicious-imprint"),
                          ("enhancers:", "classical"), ("models:", "lenet")):
        assert heading in out and name in out
