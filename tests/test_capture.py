"""``fedleak attack``: attack an update captured from plain PyTorch FL code; compact update files (update_io).

The end-to-end tests train with a plain PyTorch loop (nn.Module, SGD, ``torch.save``) and hand only the saved
files to the command; the test keeps the images and compares offline.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedleak.cli import main
from fedleak.client import update_io
from fedleak.client.data import ImageSet, load_builtin
from fedleak.client.models import build_model
from fedleak.client.update import Update
from fedleak.experiment.capture import CaptureRequest, load_capture
from fedleak.experiment.case import Case
from fedleak.io import check_complete, load_tensors
from fedleak.metrics.scores import psnr

SIZE = 16
MODEL = ["--model", "lenet-dlg", "--set", "model.activation=sigmoid", "--image-size", str(SIZE)]


@pytest.fixture
def client(tmp_path, one_thread):
    """A plain PyTorch client: the sent model's weights, one image and its label (kept by the test only)."""
    x = load_builtin(SIZE, count=1).images
    y = torch.tensor([3])
    model = build_model("lenet-dlg", num_classes=10, image_size=SIZE, activation="sigmoid", seed=0)
    torch.save(model.state_dict(), tmp_path / "global.pt")
    return model, x, y


def _attack(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(["attack", *argv])
    return rc, capsys.readouterr().err


def test_captured_fedsgd_gradients_end_to_end(client, tmp_path, capsys):
    model, x, y = client
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    torch.save({n: p.grad.clone() for n, p in model.named_parameters()}, tmp_path / "grads.pt")
    out = tmp_path / "run"
    rc, err = _attack(["--update", str(tmp_path / "grads.pt"), "--weights", str(tmp_path / "global.pt"), *MODEL,
                       "--batch-size", "1", "--attack", "idlg", "--set", "attack.iterations=8", "--out", str(out),
                       "-q"], capsys)
    assert rc == 0, err
    check_complete(out)
    rec = load_tensors(out / "reconstruction.pt")
    assert float(psnr(x, rec["images"])) > 30.0  # offline: the command never saw x
    m = json.loads((out / "metrics.json").read_text())
    assert m["captured"] is True and m["summary"]["psnr"] is None and "psnr" in m["not_computable"]["metrics"]
    assert m["summary"]["recovered_labels"] == [3] and m["attack"]["iterations_run"] == 8
    assert m["summary"]["final_loss"] < 1e-3
    assert m["update"]["kind"] == "gradient" and m["update"]["kind_detection"].startswith("gradients")
    assert m["model"]["weights_sha256"] and (out / "grid.png").is_file() and (out / "capture.json").is_file()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "not computable" in page and 'data-kind="reconstruction"' in page
    assert main(["run", "--resume", str(out)]) == 2  # a captured run is not re-simulated
    assert "captured-update run" in capsys.readouterr().err


def test_captured_fedavg_new_weights_are_a_delta(client, tmp_path, capsys):
    """The client's new weights after 3 plain SGD steps (safetensors): the update is theta0 - theta_3."""
    from safetensors.torch import save_file

    model, x, y = client
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "new.safetensors"))
    out = tmp_path / "run"
    rc, err = _attack(["--update", str(tmp_path / "new.safetensors"), "--weights", str(tmp_path / "global.pt"),
                       *MODEL, "--labels", "3", "--lr", "0.1", "--local-steps", "3", "--attack", "idlg",
                       "--set", "attack.iterations=8", "--out", str(out), "-q"], capsys)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["update"]["kind"] == "delta" and m["update"]["protocol"] == "fedavg"
    assert m["update"]["kind_detection"].startswith("weights") and m["update"]["labels_shared"]
    assert float(psnr(x, load_tensors(out / "reconstruction.pt")["images"])) > 25.0


def test_kind_detection_lists_and_buffers(client, tmp_path):
    model, x, y = client
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    torch.save([p.grad.clone() for p in model.parameters()], tmp_path / "list.pt")  # DLG-style list of grads
    req = CaptureRequest(update=str(tmp_path / "list.pt"), model="lenet-dlg", weights=str(tmp_path / "global.pt"),
                         batch_size=1, shape=(3, SIZE, SIZE), overrides=["model.activation=sigmoid"])
    cap = load_capture(req)
    assert cap.update.kind == "gradient" and cap.cfg.model.num_classes == 10  # inferred from the classifier
    assert all(torch.equal(a, p.grad) for a, p in zip(cap.update.tensors.values(), model.parameters()))
    bn = build_model("convnet", num_classes=10, image_size=SIZE, width=0.125, seed=0)
    torch.save(bn.state_dict(), tmp_path / "bn.pt")
    with pytest.raises(Exception, match="--lr"):  # buffers: new weights, and FedAvg needs the learning rate
        load_capture(CaptureRequest(update=str(tmp_path / "bn.pt"), model="convnet", weights=str(tmp_path / "bn.pt"),
                                    batch_size=1, shape=(3, SIZE, SIZE), overrides=["model.width=0.125"]))


# ------------------------------------------------------------------------------------------ bad input
class _Evil:
    """Unpickling this object would create the marker file (``weights_only`` refuses it)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _grads(model, x, y) -> dict:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_bad_inputs_are_one_line_and_nothing_runs(client, tmp_path, capsys):
    model, x, y = client
    g = _grads(model, x, y)
    names = list(g)
    base = ["--weights", str(tmp_path / "global.pt"), *MODEL, "--batch-size", "1", "--out", str(tmp_path / "run")]
    cases = {}
    torch.save(build_model("lenet", num_classes=10, image_size=SIZE).state_dict(), tmp_path / "other.pt")
    cases["other-arch"] = (["--update", str(tmp_path / "g.pt"), *base, "--weights", str(tmp_path / "other.pt")],
                           "does not fit lenet-dlg")
    marker = tmp_path / "pwned"
    torch.save({"w": _Evil(marker)}, tmp_path / "evil.pt")
    cases["evil-update"] = (["--update", str(tmp_path / "evil.pt"), *base], "refusing to load")
    cases["evil-weights"] = (["--update", str(tmp_path / "g.pt"), *base, "--weights", str(tmp_path / "evil.pt")],
                             "refusing to load")
    torch.save({("renamed" if k == names[0] else k): v for k, v in g.items()}, tmp_path / "names.pt")
    cases["names"] = (["--update", str(tmp_path / "names.pt"), *base], f"missing: {names[0]}.*unexpected: renamed")
    torch.save({k: (v[:1] if k == names[1] else v) for k, v in g.items()}, tmp_path / "shape.pt")
    cases["shape"] = (["--update", str(tmp_path / "shape.pt"), *base], f"shape mismatch: {names[1]}")
    nan = dict(g)
    nan[names[2]] = nan[names[2]].clone()
    nan[names[2]].view(-1)[0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    cases["nan"] = (["--update", str(tmp_path / "nan.pt"), *base], f"tensor '{names[2]}' has 1 NaN")
    torch.save(g, tmp_path / "g.pt")
    torch.save(model.state_dict(), tmp_path / "w_new.pt")
    cases["no-lr"] = (["--update", str(tmp_path / "w_new.pt"), *base, "--update-kind", "weights"], "give --lr")
    cases["no-shape"] = (["--update", str(tmp_path / "g.pt"), "--model", "lenet-dlg", "--batch-size", "1"],
                         "--shape")
    cases["missing"] = (["--update", str(tmp_path / "nope.pt"), *base], "not found")
    import re

    for name, (argv, pattern) in cases.items():
        rc, err = _attack(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("fedleak: error:"), (name, err)
        assert re.search(pattern, lines[0]), (name, lines[0])
        assert "Traceback" not in err
    assert not marker.exists()  # the pickle never ran
    assert not (tmp_path / "run").exists()  # every check happens before the run folder is made


# ------------------------------------------------------------------------------------------ compact files
def _case(obfuscation, protocol=None) -> Case:
    s = load_builtin(32, count=2)
    cfg = {"data": {"size": 32, "batch_size": 2}, "model": {"name": "lenet", "num_classes": 10},
           "obfuscation": obfuscation}
    if protocol:
        cfg["protocol"] = protocol
    return Case(cfg, images=ImageSet(s.images, torch.tensor([3, 4]), s.names))


@pytest.mark.parametrize("obfuscation, codec, min_ratio", [
    ([{"name": "topk", "sparsity": 0.99}], "sparse", 30.0),
    ([{"name": "randk", "sparsity": 0.9, "rescale": True}], "sparse", 7.0),
    ([{"name": "qsgd", "levels": 16}], "levels", 5.5),  # 5 bits per entry
    ([{"name": "qsgd", "levels": 16, "norm": "l2"}], "levels", 5.5),
    ([{"name": "clip", "max_norm": 0.5}, {"name": "uniform", "levels": 4}], "levels", 9.0),  # 3 bits
    ([{"name": "sign"}], "sign", 25.0),
    ([{"name": "sign", "scale": "mean-abs"}], "sign", 25.0),
    ([{"name": "gaussian", "sigma": 0.01}], "dense", 0.95),
])
def test_compact_update_round_trip_is_exact_and_small(tmp_path, obfuscation, codec, min_ratio, one_thread):
    u = _case(obfuscation, {"name": "fedavg", "local_steps": 2, "lr": 0.05}).client_update()
    f = tmp_path / "u.safetensors"
    u.save(f)
    v = Update.load(f)
    assert list(v.tensors) == list(u.tensors)
    assert all(torch.equal(u.tensors[k], v.tensors[k]) for k in u.tensors)
    assert v.meta() == u.meta()
    _, md = update_io.read_parts(f)
    header = json.loads(md[update_io.CODEC_KEY])
    assert header["version"] == update_io.VERSION
    assert {h["codec"] for h in header["tensors"].values()} == {codec}
    dense = sum(4 * t.numel() for t in u.tensors.values())
    assert dense / f.stat().st_size > min_ratio


def test_pack_unpack_and_tampered_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    for width in (1, 3, 5, 8, 11):
        n = 1000 + width
        codes = torch.randint(0, 2 ** width, (n,), generator=g)
        packed = update_io.pack(codes, width)
        assert packed.numel() == -(-n * width // 8)
        assert torch.equal(update_io.unpack(packed, width, n), codes)
    # an older dense file (no codec header) is still read
    from safetensors.torch import save_file

    t = {"w": torch.randn(3, 4, generator=g)}
    save_file(t, str(tmp_path / "old.safetensors"), metadata={"fedleak_update": json.dumps({"kind": "gradient"})})
    assert torch.equal(Update.load(tmp_path / "old.safetensors").tensors["w"], t["w"])
    # a truncated codes part is one clear error
    u = _case([{"name": "qsgd", "levels": 16}]).client_update()
    u.save(tmp_path / "q.safetensors")
    parts, md = update_io.read_parts(tmp_path / "q.safetensors")
    k = next(k for k in parts if k.endswith(":codes"))
    parts[k] = parts[k][:10].clone()
    save_file(parts, str(tmp_path / "bad.safetensors"), metadata=md)
    with pytest.raises(Exception, match="cannot be decoded|too short"):
        Update.load(tmp_path / "bad.safetensors")


def test_simulate_writes_compact_and_attack_reads_it_back(tmp_path, capsys, one_thread):
    sim = tmp_path / "sim"
    assert main(["simulate", "--set", "data.size=16", "--set", "data.batch_size=1", "--set", "model.num_classes=1000",
                 "--set", "obfuscation=qsgd(16)", "--out", str(sim)]) == 0
    f = sim / "update.safetensors"
    stats = json.loads((sim / "stats.json").read_text())
    assert 4 * stats["num_parameters"] / f.stat().st_size > 5.5  # 5-bit levels, not dense float32
    out = tmp_path / "run"
    rc, err = _attack(["--update", str(f), "--set", "attack.stages.0.iterations=2", "--set", "attack.stages.1.iterations=2", "--out", str(out), "-q"], capsys)
    assert rc == 0, err  # no model or protocol flags: the file carries them
    m = json.loads((out / "metrics.json").read_text())
    assert m["update"]["format"] == "fedleak" and m["update"]["obfuscation"][0]["name"] == "qsgd"
    assert m["model"]["name"] == "lenet" and m["attack"]["name"] == "rog-refine"  # the default of fedleak run
    assert m["summary"]["bits_per_parameter"] == pytest.approx(stats["bits_per_parameter"])
    assert os.path.getsize(out / "reconstruction.pt") > 0


def test_labels_and_shape_arguments(tmp_path):
    from fedleak.errors import ConfigError
    from fedleak.experiment.capture import parse_labels, parse_shape

    assert parse_labels("3,1,4") == [3, 1, 4]
    (tmp_path / "y.txt").write_text("3 1\n4\n")
    assert parse_labels(str(tmp_path / "y.txt")) == [3, 1, 4]
    torch.save(torch.tensor([[2], [7]]), tmp_path / "y.pt")
    assert parse_labels(str(tmp_path / "y.pt")) == [2, 7]
    assert parse_shape("1,28,28") == (1, 28, 28)
    for bad in ("3,32,30", "3x32", "a,b,c"):
        with pytest.raises(ConfigError, match="--shape"):
            parse_shape(bad)
    with pytest.raises(ConfigError, match="--labels"):
        parse_labels("3,x")


def test_user_model_by_import_path(tmp_path, monkeypatch, capsys):
    """``--model import:pkg.module:Factory``: the user's own nn.Module, gradients saved as safetensors."""
    from safetensors.torch import save_file

    from conftest import GREY_ATTACK

    (tmp_path / "tinynet_capture.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10, image_size=8):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, 4, 3, padding=1)\n"
        "        self.fc = nn.Linear(4 * image_size * image_size, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.sigmoid(self.conv(x)).flatten(1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tinynet_capture

    net = tinynet_capture.Net(num_classes=5, image_size=8)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    F.cross_entropy(net(torch.rand(2, 1, 8, 8)), torch.tensor([1, 4])).backward()
    save_file({n: p.grad.contiguous() for n, p in net.named_parameters()}, str(tmp_path / "g.safetensors"))
    out = tmp_path / "run"
    rc, err = _attack(["--model", "import:tinynet_capture:Net", "--weights", str(tmp_path / "w.pt"),
                       "--update", str(tmp_path / "g.safetensors"), "--shape", "1,8,8", "--labels", "1,4",
                       "--attack", GREY_ATTACK, "--out", str(out), "-q"], capsys)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["update"]["format"] == "safetensors" and m["update"]["channels"] == 1
    assert load_tensors(out / "reconstruction.pt")["images"].shape == (2, 1, 8, 8)
    check_complete(out)


def test_update_captured_from_a_flower_client(client, tmp_path, capsys):
    """A plain-PyTorch Flower ``NumPyClient`` (local SGD in ``fit``): the server saves the parameters it sent
    and the ones ``fit`` returned, and attacks them."""
    flwr_client = pytest.importorskip("flwr.client")
    import numpy as np

    model, x, y = client

    class PlainClient(flwr_client.NumPyClient):
        def __init__(self, net):
            self.net = net

        def get_parameters(self, config):
            return [v.detach().cpu().numpy() for v in self.net.state_dict().values()]

        def fit(self, parameters, config):
            keys = list(self.net.state_dict())
            self.net.load_state_dict({k: torch.tensor(np.asarray(a)) for k, a in zip(keys, parameters)})
            opt = torch.optim.SGD(self.net.parameters(), lr=config["lr"])
            for _ in range(config["local_steps"]):
                opt.zero_grad()
                F.cross_entropy(self.net(x), y).backward()
                opt.step()
            return self.get_parameters(config), int(x.shape[0]), {}

    victim = PlainClient(build_model("lenet-dlg", num_classes=10, image_size=SIZE, activation="sigmoid", seed=1))
    sent = [v.numpy() for v in model.state_dict().values()]  # the server's global model this round
    returned, _, _ = victim.fit(sent, {"lr": 0.1, "local_steps": 2})
    keys = list(model.state_dict())
    torch.save(dict(zip(keys, map(torch.tensor, sent))), tmp_path / "sent.pt")
    torch.save(dict(zip(keys, map(torch.tensor, returned))), tmp_path / "returned.pt")
    out = tmp_path / "run"
    rc, err = _attack(["--update", str(tmp_path / "returned.pt"), "--weights", str(tmp_path / "sent.pt"), *MODEL,
                       "--batch-size", "1", "--lr", "0.1", "--local-steps", "2", "--attack", "idlg",
                       "--set", "attack.iterations=8", "--out", str(out), "-q"], capsys)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["update"]["kind"] == "delta" and m["summary"]["recovered_labels"] == [3]
    assert float(psnr(x, load_tensors(out / "reconstruction.pt")["images"])) > 25.0
