"""Realistic victims: weights for any model (safetensors or a weights-only state_dict, clear mismatch errors,
no pickle executed) and trained snapshots made offline from public data."""
from __future__ import annotations

import json
import os

import pytest
import torch

from fedleak.client.models import build_model
from fedleak.client.weights import load_weights, read_state, save_weights
from fedleak.errors import ConfigError, DataError

pytest.importorskip("sklearn")


def _lenet(seed=0, num_classes=10):
    return build_model("lenet", num_classes=num_classes, image_size=32, seed=seed)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_weights_round_trip_gives_the_same_function(tmp_path, fmt):
    a, b = _lenet(seed=1), _lenet(seed=2)
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))
    path = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(a.state_dict(), path)
    else:
        save_weights(a, path)
    sha = load_weights(b, path)
    assert len(sha) == 64
    assert torch.equal(a(x), b(x))


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    path = tmp_path / "convnet.safetensors"
    save_weights(build_model("convnet", num_classes=10, image_size=32), path)
    with pytest.raises(DataError, match=r"does not fit lenet: missing: .*; unexpected: "):
        load_weights(_lenet(), path, "lenet")


def test_weights_with_other_shapes_name_the_tensor(tmp_path):
    path = tmp_path / "w1000.safetensors"
    save_weights(_lenet(num_classes=1000), path)
    with pytest.raises(DataError, match=r"shape mismatch: .*\(1000, .*\(model: \(10, "):
        load_weights(_lenet(num_classes=10), path)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-weights",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "x": _Boom()}, path)
    with pytest.raises(DataError, match="refusing to load it"):
        read_state(path)
    assert not (tmp_path / "pwned-by-weights").exists()


def test_missing_and_corrupt_weight_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_state(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable safetensors file"):
        read_state(bad)
    listy = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(DataError, match="not a state_dict"):
        read_state(listy)


def test_public_digits_split_is_disjoint_and_fixed():
    from fedleak.client.public_data import load_public

    tr, te = load_public("digits", "train", 16), load_public("digits", "test", 16)
    assert tr.images.shape == (1438, 3, 16, 16) and te.images.shape == (359, 3, 16, 16)
    assert not set(tr.names) & set(te.names)
    assert float(tr.images.min()) >= 0 and float(tr.images.max()) <= 1
    assert load_public("digits", "test", 16).names == te.names
    with pytest.raises(ConfigError, match="valid: digits"):
        load_public("cifar")


def test_train_victim_learns_and_writes_snapshots_with_a_card(tmp_path):
    from fedleak.experiment.victims import VictimPlan, train_victim

    card = train_victim(VictimPlan(model="lenet", size=16, epochs=2, snapshots=[0, 2]), tmp_path, log=lambda m: None)
    acc = {s["epoch"]: s["test_accuracy"] for s in card["snapshots"]}
    assert acc[0] < 0.3 and acc[2] > 0.6  # chance is 0.1: it learned
    on_disk = json.loads((tmp_path / "lenet-digits16.json").read_text())
    assert on_disk["snapshots"] == card["snapshots"] and on_disk["data"]["name"] == "digits"
    init = build_model("lenet", num_classes=10, image_size=16, seed=0)
    same = build_model("lenet", num_classes=10, image_size=16, seed=5)
    load_weights(same, tmp_path / "lenet-digits16-e0.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(init.state_dict().values(), same.state_dict().values()))


def test_bad_snapshot_plan_is_one_line():
    from fedleak.experiment.victims import VictimPlan

    with pytest.raises(ConfigError, match="snapshots must be epochs between 0 and epochs=2"):
        VictimPlan(epochs=2, snapshots=[0, 5]).validate()


def test_a_run_attacks_a_trained_snapshot_and_records_its_hash(tmp_path):
    """train-victim, then `fedleak run` on that snapshot with digits from the held-out split."""
    from fedleak import cli
    from fedleak.io import sha256_file

    out = tmp_path / "victims"
    assert cli.main(["train-victim", "--model", "lenet", "--size", "16", "--epochs", "1", "--out", str(out)]) == 0
    snap = out / "lenet-digits16-e1.safetensors"
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--out", str(run_dir), "-q", "--set", "data.source=digits", "--set", "data.size=16",
                     "--set", "data.batch_size=2", "--set", "model.num_classes=10", "--set", f"model.weights={snap}",
                     "--set", "attack.iterations=2", "--set", "threads=1"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["model"]["weights_sha256"] == sha256_file(snap)
    assert m["raw"]["num_images"] == 2


def test_a_run_with_weights_of_another_model_is_one_line(tmp_path, capsys):
    from fedleak import cli

    path = tmp_path / "w.safetensors"
    save_weights(build_model("convnet", num_classes=10, image_size=16), path)
    assert cli.main(["run", "--out", str(tmp_path / "r"), "-q", "--set", "data.size=16", "--set", "data.source=digits", "--set",
                     "model.num_classes=10", "--set", f"model.weights={path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit lenet: missing:" in err[0]
