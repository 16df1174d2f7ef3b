"""The ROG enhancement stage (fedleak.enhance), its network (fedleak.enhance.net) and its training."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fedleak.enhance import net as EN
from fedleak.enhance import ENHANCERS, Enhancer
from fedleak.enhance.stage import check_config, classical, enhance, latent
from fedleak.errors import ConfigError, DataError

TINY = {"name": EN.ARCH_NAME, "version": EN.ARCH_VERSION, "scale": 4, "width": 8, "blocks": [1, 1, 1], "hr_width": 4}


def _random_net(arch=TINY, seed=0):
    torch.manual_seed(seed)
    net = EN.build(arch)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # also move the zero-initialised output layers
    return net.eval()


def _lowres_images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(b, 3, size // 4, size // 4, generator=g) * 0.6 + 0.2
    return F.interpolate(z, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


# ------------------------------------------------------------------------------------------ weights files
def test_save_load_roundtrip(tmp_path):
    net = _random_net()
    f = EN.save(net, TINY, tmp_path / "e.safetensors", {"seed": 3, "steps": 7})
    side = json.loads((tmp_path / "e.json").read_text())
    assert side["architecture"] == TINY and side["seed"] == 3 and side["steps"] == 7
    assert side["parameters"] == EN.num_parameters(net)
    loaded, arch = EN.load(f)
    assert arch == TINY
    x = _lowres_images()
    with torch.no_grad():
        assert all(torch.equal(v.half().float(), loaded.state_dict()[k]) for k, v in net.state_dict().items())
        assert torch.allclose(net.enhance(x), loaded.enhance(x), atol=2e-3)  # stored as float16
        assert not torch.allclose(net.enhance(x), x, atol=2e-2)  # the random weights really do something
    f32 = EN.save(net, TINY, tmp_path / "e32.safetensors", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(net.enhance(x), EN.load(f32)[0].enhance(x))
    # and through the pipeline stage, with the user file replacing the default
    out = enhance(x, None, {"name": "learned", "weights": str(f)})
    with torch.no_grad():
        assert torch.equal(out, loaded.enhance(x))


def test_untrained_network_is_identity():
    x = _lowres_images()
    with torch.no_grad():
        assert torch.allclose(EN.build(TINY).enhance(x), x, atol=1e-6)


def test_missing_weights_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        enhance(_lowres_images(), None, {"name": "learned", "weights": str(tmp_path / "nope.safetensors")})


def test_corrupt_weights_clear_error(tmp_path):
    f = tmp_path / "bad.safetensors"
    f.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(DataError, match="unreadable"):
        EN.load(f)
    good = EN.save(_random_net(), TINY, tmp_path / "good.safetensors")
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(DataError) as e:
        check_config({"name": "learned", "weights": str(good)})
    assert "\n" not in str(e.value)


def test_wrong_architecture_clear_error(tmp_path):
    from safetensors.torch import save_file

    net = _random_net()
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    # metadata claims a wider network than the tensors hold
    wide = dict(TINY, width=16)
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={EN.META_KEY: json.dumps(wide)})
    with pytest.raises(DataError, match="do not match architecture"):
        EN.load(tmp_path / "w.safetensors")
    # an unknown architecture name
    save_file(tensors, str(tmp_path / "u.safetensors"), metadata={EN.META_KEY: json.dumps(dict(TINY, name="srgan"))})
    with pytest.raises(DataError, match="unsupported architecture"):
        EN.load(tmp_path / "u.safetensors")
    # a safetensors file that is not enhancer weights at all
    save_file({"a": torch.zeros(2)}, str(tmp_path / "o.safetensors"))
    with pytest.raises(DataError, match="not fedleak enhancer weights"):
        EN.load(tmp_path / "o.safetensors")


def test_bad_enhancer_options():
    with pytest.raises(ConfigError, match="unknown"):
        check_config({"name": "gan"})
    with pytest.raises(ConfigError, match="unknown option"):
        check_config({"name": "classical", "weights": "x"})
    with pytest.raises(ConfigError):
        check_config({"name": "classical", "weight": -1})
    with pytest.raises(ConfigError, match="not divisible"):
        enhance(torch.rand(1, 3, 30, 30), None, {"name": "classical"})


def test_unknown_enhancer_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        check_config("gan")
    msg = str(e.value)
    assert "\n" not in msg and "'gan'" in msg
    assert all(n in msg for n in ENHANCERS.names()) and {"none", "classical", "learned"} <= set(ENHANCERS.names())


def test_unknown_classical_option_lists_valid_options():
    with pytest.raises(ConfigError) as e:
        check_config({"name": "classical", "strength": 3})
    msg = str(e.value)
    assert "\n" not in msg and "'strength'" in msg
    assert all(k in msg for k in ("method", "weight", "h", "scale"))
    with pytest.raises(ConfigError, match="method"):
        check_config({"name": "classical", "method": "bm3d"})
    with pytest.raises(ConfigError, match="scale"):
        check_config({"name": "classical", "scale": 4.0})
    with pytest.raises(ConfigError, match="takes no options"):
        check_config({"name": "none", "scale": 4})


def test_check_config_returns_every_option():
    for none in (None, "", "null", "none", "NONE", {"name": None}, {}):
        assert check_config(none) == {"name": "none"}
    acc = {"accept": "layers", "blend": [0.0, 0.25, 0.5, 0.75, 1.0], "margin": 0.0}
    assert check_config("classical") == {"name": "classical", "method": "tv", "weight": None, "h": None, "scale": 4,
                                         **acc}
    assert check_config({"name": "classical", "method": "nlm", "h": 0}) == {
        "name": "classical", "method": "nlm", "weight": None, "h": 0.0, "scale": 4, **acc}
    if EN.default_weights_path().is_file():
        assert check_config("learned") == {"name": "learned", "weights": None, "scale": 4, **acc}
        with pytest.raises(ConfigError, match="trained for scale 4"):
            check_config({"name": "learned", "scale": 2})
    # the result is a valid section again (the runner writes it to config.yaml)
    assert check_config(check_config({"name": "classical", "weight": 0.1})) == check_config({"name": "classical", "weight": 0.1})


def test_registered_enhancer_is_reachable(monkeypatch):
    """Adding an enhancer is one registration: check_config and enhance find it with no other edit."""
    from pydantic import Field

    import fedleak.enhance
    from fedleak.options import Options

    for attr in ("_items", "_docs", "_options", "_caps"):  # undo the registration after the test
        monkeypatch.setattr(ENHANCERS, attr, dict(getattr(ENHANCERS, attr)))
    checked = []

    class GreyOptions(Options):
        level: float = Field(0.5, ge=0, le=1)

    ENHANCERS.register("grey", doc="flat grey", options=GreyOptions)(
        Enhancer(run=lambda x, o: torch.full_like(x, o.level), check=checked.append))
    assert check_config({"name": "grey", "level": 0.25}) == {"name": "grey", "level": 0.25, "accept": "layers",
                                                             "blend": [0.0, 0.25, 0.5, 0.75, 1.0], "margin": 0.0}
    assert checked and checked[-1].level == 0.25
    out = fedleak.enhance.enhance(torch.rand(2, 3, 8, 8), None, {"name": "grey", "level": 0.25})
    assert out.shape == (2, 3, 8, 8) and torch.all(out == 0.25)
    with pytest.raises(ConfigError, match="level"):
        check_config({"name": "grey", "level": 2})
    with pytest.raises(ConfigError, match="grey"):
        check_config({"name": "nope"})  # listed among the valid names


def test_shipped_weights_load_and_are_small():
    f = EN.default_weights_path()
    if not f.is_file():
        pytest.skip("no shipped weights in this checkout")
    net, arch = EN.load(f)
    assert arch["scale"] == 4
    assert f.stat().st_size < 8 * 2**20
    side = json.loads(EN.sidecar_path(f).read_text())
    for k in ("architecture", "data", "seed", "git_commit", "steps", "final_loss"):
        assert k in side
    x = _lowres_images(1, 64)
    out = enhance(x, None, "learned")
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1


# ------------------------------------------------------------------------------------------ classical
def test_latent_inverts_bicubic_upsampling():
    z = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    x = F.interpolate(z, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(latent(x, 4), z, atol=1e-5)


def test_classical_identity_at_zero_weight_and_denoises():
    from fedleak.metrics.scores import psnr

    x = _lowres_images(2, 64)
    assert torch.allclose(classical(x, 4, "tv", 0.0), x, atol=1e-4)
    # a piecewise-smooth image (TV's model) with noise on its latent
    t = torch.linspace(0, 1, 16)
    z = torch.stack([0.3 + 0.4 * (t[None, :] > 0.5) + 0.1 * t[:, None],
                     0.5 + 0.2 * torch.sin(3 * t)[None, :].expand(16, 16),
                     0.2 + 0.5 * (t[:, None] > 0.3) * (t[None, :] < 0.7)])
    x = F.interpolate(torch.stack([z, z.flip(-1)]), scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    g = torch.Generator().manual_seed(1)
    noisy = F.interpolate((latent(x) + 0.08 * torch.randn(2, 3, 16, 16, generator=g)).clamp(0, 1),
                          scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    den = enhance(noisy, None, {"name": "classical", "weight": 0.05})
    assert float(psnr(x, den).mean()) > float(psnr(x, noisy).mean()) + 1.0


# ------------------------------------------------------------------------------------------ training
def test_tiny_training_lowers_the_loss(tmp_path):
    import numpy as np

    from fedleak.enhance.data import crops_tensor, load_photos
    from fedleak.enhance.train import Degradation, TrainConfig, train

    torch.set_num_threads(1)
    # white latent noise: the simplest ROG-like degradation, learnable in a few dozen steps of a tiny net
    deg = Degradation(sigma_min=0.08, sigma_max=0.12, bank_fraction=0, contrast=(1.0, 1.0), bias_std=0.0,
                      colour_corr=(0.0, 0.1))
    cfg = TrainConfig(steps=40, batch=4, patch=32, pool=8, lr=5e-3, final_lr=5e-3 / 3, seed=0, arch=dict(TINY),
                      degradation=deg)
    info = train("skimage", tmp_path / "t.safetensors", cfg, progress=False, log=lambda s: None)
    assert len(info["losses"]) == 40
    side = json.loads((tmp_path / "t.json").read_text())
    assert side["steps"] == 40 and side["seed"] == 0 and side["data"] == "skimage"
    assert side["final_loss"] == pytest.approx(info["final_loss"])
    # held-out pairs from the same degradation: the trained net beats the untrained one (= the raw input)
    photos, _ = load_photos("skimage")
    clean = crops_tensor(photos, 6, 64, np.random.default_rng(99))
    noisy = deg.apply(clean, torch.Generator().manual_seed(99))
    trained, _ = EN.load(tmp_path / "t.safetensors")
    with torch.no_grad():
        before = (EN.build(TINY).enhance(noisy) - clean).abs().mean()
        after = (trained.enhance(noisy) - clean).abs().mean()
    assert after < 0.92 * before


def test_train_enhancer_cli_deterministic(tmp_path):
    from fedleak.cli import main

    outs = []
    for i in range(2):
        f = tmp_path / f"w{i}.safetensors"
        assert main(["train-enhancer", "--out", str(f), "--seed", "5", "--steps", "2",
                     "--batch", "2", "--patch", "32", "--pool", "4", "--width", "8", "--quiet"]) == 0
        outs.append(EN.load(f)[0].state_dict())
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_evaluation_photos_are_never_training_photos(tmp_path):
    """The builtin photos the demo evaluates on (and motorcycle_right, the other view of a builtin photo) are
    not in the default training set, by name or by content; the shipped weights' sidecar lists none of them;
    copies of them in a folder, and `--data builtin`, are refused."""
    import shutil

    from fedleak.client.data import BUILTIN_PHOTOS, builtin_dir
    from fedleak.enhance.data import DEFAULT_DATA, eval_hashes, photo_paths
    from fedleak.io import sha256_file

    eval_names = {f for f, _ in BUILTIN_PHOTOS} | {"motorcycle_right.png"}
    hashes = eval_hashes()
    assert set(hashes.values()) == eval_names  # every evaluation photo is there to be hashed
    train_files = photo_paths(DEFAULT_DATA)
    assert len(train_files) >= 10
    assert not {f.name for f in train_files} & eval_names
    assert not {sha256_file(f) for f in train_files} & set(hashes)
    shipped = json.loads(EN.default_weights_path().with_suffix(".json").read_text())
    assert shipped["photos"] and not set(shipped["photos"]) & eval_names
    assert shipped["data"] == DEFAULT_DATA
    with pytest.raises(DataError, match="evaluation photos"):
        photo_paths("builtin")
    d = tmp_path / "mine"
    d.mkdir()
    shutil.copy(builtin_dir() / "coffee.png", d / "renamed.png")
    with pytest.raises(DataError, match="evaluation photo coffee.png"):
        photo_paths(f"skimage,{d}")


def test_refuses_evaluation_folder(tmp_path):
    from fedleak.enhance.data import photo_paths

    d = tmp_path / "imagenet-val-sample"
    d.mkdir()
    with pytest.raises(DataError, match="never train"):
        photo_paths(str(d))


# ------------------------------------------------------------------------------------------ pipeline
def test_enhancer_sees_only_the_reconstruction_and_view(tmp_path, monkeypatch, base_config):
    """At attack time the stage gets rec.images, the server view, and for its acceptance test the update the
    server received and the attack's reconstruction -- nothing derived from the true images."""
    import fedleak.enhance as E  # the runner calls the package's public enhance()
    from fedleak.experiment.runner import run
    from fedleak.server.view import ServerView

    calls = []
    real = E.enhance

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "enhance", spy)
    cfg = dict(base_config, data={"source": "builtin", "size": 16, "batch_size": 2},
               attack={"name": "rog", "iterations": 2}, enhancer={"name": "classical"})
    run_dir, metrics = run(cfg, out=tmp_path / "r", progress=False)
    assert len(calls) == 1
    args, kwargs = calls[0]
    assert set(kwargs) == {"update", "rec"} and len(args) == 3
    images, view, ecfg = args
    assert kwargs["rec"].images is images and kwargs["update"].tensors  # the attack's own output and input
    assert isinstance(view, ServerView)
    assert not any(isinstance(v, torch.Tensor) and v.dim() == 4 for v in vars(view).values())
    rec = torch.load(run_dir / "reconstruction.pt", weights_only=True)
    assert torch.equal(images, rec["images"])  # exactly the attack's output
    from fedleak.experiment.case import Case

    true = Case(cfg).images
    assert not torch.allclose(images, true, atol=1e-3)
    assert "enhanced" in metrics and "raw" in metrics
    assert ecfg["name"] == "classical"


def test_run_enhancer_flag_bad_file_fails_before_attack(tmp_path, capsys, monkeypatch):
    import fedleak.attacks as A
    from fedleak.cli import main

    def no_attack(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("the attack ran before the enhancer weights were checked")

    monkeypatch.setattr(A, "attack", no_attack)
    rc = main(["run", "--set", "data.size=16", "--set", "data.batch_size=1", "--enhancer",
               str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "r"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "not found" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "r" / "reconstruction.pt").exists()


# ------------------------------------------------------------------------------------------ acceptance test
@pytest.fixture(scope="module")
def refined():
    from fedleak.attacks import attack
    from fedleak.experiment.case import Case

    torch.set_num_threads(1)
    case = Case({"seed": 0, "data": {"source": "builtin", "size": 32, "batch_size": 2}, "model": {"name": "lenet"},
                 "attack": "rog-refine"})
    view, update = case.server_view(), case.client_update()
    rec = attack("rog-refine", view, update, stages={"0": {"iterations": 30}, "1": {"iterations": 5},
                                                           "2": {"iterations": 10}})
    return case, view, update, rec


def _noise_enhancer():
    if "test-noise" not in ENHANCERS:
        from fedleak.options import NoOptions

        def run(x, opts):
            g = torch.Generator().manual_seed(0)
            return (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)

        ENHANCERS.register("test-noise", doc="test: adds noise", options=NoOptions)(Enhancer(run=run))
    return "test-noise"


def test_acceptance_rejects_a_harmful_enhancer_and_never_raises_the_loss(refined):
    from fedleak.attacks.engine.stages import attack_objective

    _, view, update, rec = refined
    name = _noise_enhancer()
    plain = enhance(rec.images, view, {"name": name, "accept": "none"}, update=update, rec=rec)
    assert (plain - rec.images).abs().mean() > 0.05  # the enhancer really damages the images
    out = enhance(rec.images, view, name, update=update, rec=rec)
    assert rec.info["enhancer_blend"] == [0.0, 0.0] and torch.equal(out, rec.images.clamp(0, 1))
    score, close = attack_objective(view, update, rec.info["attack_config"], rec.labels, priors=False)
    try:
        assert score(out).total <= score(rec.images).total < score(plain).total
    finally:
        close()
    # without the update (no server-side test possible) the enhancer's output is returned as is
    assert torch.equal(enhance(rec.images, view, name), plain)


def test_acceptance_takes_a_blend_that_lowers_the_loss(refined):
    """Offered the true images as 'enhanced' (a test-only oracle, never what an enhancer sees), the test picks
    non-zero blend weights, and they raise PSNR: the loss is a usable stand-in for the truth."""
    from fedleak.enhance.stage import Acceptance, accept_blend
    from fedleak.metrics.scores import psnr

    case, view, update, rec = refined
    out, alphas = accept_blend(rec.images.clamp(0, 1), case.images, view, update, rec, Acceptance())
    assert all(a > 0 for a in alphas)
    assert float(psnr(out, case.images).mean()) > float(psnr(rec.images, case.images).mean()) + 1.0


def test_layers_rule_rejects_a_blend_that_trades_one_layer_for_another():
    """accept: layers takes a candidate only when its total drops and no parameter's loss rises; accept: loss
    takes any candidate whose total drops; a margin asks for a larger drop."""
    from fedleak.attacks.engine.stages import Score
    from fedleak.enhance.stage import Acceptance, _better

    best = Score(10.0, (1.0, 9.0))
    trade = Score(9.0, (1.5, 7.5))  # lower total, but the first layer fits worse
    both = Score(9.5, (0.9, 8.6))
    assert _better(trade, best, Acceptance(accept="loss")) and not _better(trade, best, Acceptance())
    assert _better(both, best, Acceptance()) and _better(both, best, Acceptance(accept="loss"))
    assert not _better(both, best, Acceptance(margin=0.05)) and _better(trade, best, Acceptance(accept="loss", margin=0.05))
    assert not _better(Score(10.0, (0.5, 9.5)), best, Acceptance(accept="loss"))  # equal total: kept as is


def test_layers_acceptance_never_raises_any_layer(refined):
    """On a real reconstruction with a harmful and a helpful (the truth, a test-only oracle) candidate, the
    images the layers rule returns fit every parameter at least as well as the raw reconstruction."""
    from fedleak.attacks.engine.stages import attack_objective
    from fedleak.enhance.stage import Acceptance, accept_blend

    case, view, update, rec = refined
    raw = rec.images.clamp(0, 1)
    score, close = attack_objective(view, update, rec.info["attack_config"], rec.labels, priors=False)
    try:
        before = score(raw)
        for cand in (case.images, (raw + 0.3 * torch.randn(raw.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)):
            out, _ = accept_blend(raw, cand, view, update, rec, Acceptance())
            after = score(out)
            assert after.total <= before.total
            assert all(a <= b for a, b in zip(after.layers, before.layers))
    finally:
        close()


def test_acceptance_options_are_checked():
    assert check_config({"name": "classical"})["accept"] == "layers"
    assert check_config({"name": "learned", "accept": "objective", "blend": [1, 0.5]})["blend"] == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="blend"):
        check_config({"name": "classical", "blend": [2]})
    with pytest.raises(ConfigError, match="accept"):
        check_config({"name": "classical", "accept": "maybe"})
