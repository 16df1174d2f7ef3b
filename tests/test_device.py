"""``device: auto | cpu | cuda``: resolved once (fedleak/device.py), CPU unless CUDA is there and asked for (or
``auto``), a one-line refusal of ``cuda`` without CUDA, recorded in metrics.json; on a machine with CUDA one
test runs a tiny attack on the GPU and checks it agrees with the CPU."""
from __future__ import annotations

import pytest
import torch

from fedleak.attacks import attack
from fedleak.attacks.engine import EngineConfig
from fedleak.attacks.engine.precision import resolve_precision
from fedleak.cli import main as cli_main
from fedleak.client.data import ImageSet, load_builtin
from fedleak.config.schema import as_config
from fedleak.device import current_device, resolve_device, using_device
from fedleak.errors import ConfigError
from fedleak.experiment.case import Case
from fedleak.experiment.runner import run
from fedleak.experiment.sweep import task_gpus

from conftest import GREY_ATTACK

pytestmark = pytest.mark.usefixtures("one_thread")
CUDA = torch.cuda.is_available()


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_cuda_when_available():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")


def test_cuda_without_cuda_is_one_clear_line(no_cuda):
    for spec in ("cuda", "cuda:0", " CUDA "):
        with pytest.raises(ConfigError, match="CUDA is not available") as e:
            resolve_device(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="valid: auto, cpu, cuda"):
        resolve_device("gpu")


def test_the_config_key_is_checked_and_defaults_to_auto():
    assert as_config({}).device == "auto"
    assert as_config({"device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ConfigError, match="device"):
        as_config({"device": "tpu"})


def test_cli_refuses_cuda_without_cuda_in_one_line(no_cuda, tmp_path, capsys):
    rc = cli_main(["run", "--set", "device=cuda", "--set", f"attack.name={GREY_ATTACK}",
                   "--set", "data.size=16", "--set", "data.batch_size=1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "CUDA is not available" in err, err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_using_device_scopes_the_current_device(no_cuda):
    assert current_device() == torch.device("cpu")
    with using_device("cpu") as d:
        assert d == current_device() == torch.device("cpu")
    with pytest.raises(ConfigError):
        with using_device("cuda"):
            pass
    assert current_device() == torch.device("cpu")


def test_metrics_record_the_device(tmp_path, base_config):
    cfg = dict(base_config, device="cpu", threads=1,
               data={"source": "builtin", "size": 16, "batch_size": 1},
               attack={"name": "inverting-gradients", "iterations": 2})
    _, metrics = run(cfg, out=tmp_path / "r", progress=False)
    assert metrics["device"] == "cpu"
    assert metrics["attack"]["info"]["device"] == "cpu"


def test_precision_auto_on_a_gpu_picks_its_autocast_dtype(monkeypatch):
    adam = EngineConfig.model_validate({"precision": "auto", "optimizer": "adam"})
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(adam, 1, cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(adam, 1, cuda) == torch.float16
    assert resolve_precision(EngineConfig.model_validate({"precision": "float32"}), 8, cuda) is None
    lbfgs = EngineConfig.model_validate({"precision": "auto", "optimizer": "lbfgs"})
    assert resolve_precision(lbfgs, 8, cuda) is None
    assert resolve_precision(adam, 1, torch.device("cpu")) is None  # CPU, batch 1: full precision as before


def test_ray_tasks_request_a_gpu_only_for_cuda():
    def task(device):
        return {"base": {"device": device}, "overrides": []}

    assert task_gpus(task("cuda"), 0) == 1
    assert task_gpus(task("cpu"), 4) == 0
    assert task_gpus(task("auto"), 0) == 0
    assert task_gpus(task("auto"), 2) == 1


def _tiny(model: str) -> tuple:
    s = load_builtin(16, count=2)
    case = Case({"data": {"size": 16, "batch_size": 2}, "device": "cpu",
                 "model": {"name": model, "num_classes": 10, "width": 0.25}},
                images=ImageSet(s.images, torch.tensor([1, 4]), s.names))
    return case, case.server_view(), case.client_update()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("model", ["lenet", "resnet18-cifar"])
def test_a_tiny_attack_on_the_gpu_agrees_with_the_cpu(model, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    case, view, update = _tiny(model)
    gpu_case = Case(dict(case.config.to_dict(), device="cuda"), images=case.data)
    gpu_update = gpu_case.client_update()
    for k, t in update.tensors.items():  # the client on the GPU uploads the same update
        torch.testing.assert_close(gpu_update.tensors[k], t, rtol=1e-3, atol=1e-5)
    # rog: plain (unsigned) Adam on a smooth loss, so float rounding does not flip update signs between devices
    opts = {"name": "rog", "iterations": 10, "labels": "known", "precision": "float32"}
    if model == "resnet18-cifar":
        opts["priors"] = {"bn-stats": 0.01}
    cpu = attack(opts, view, update)
    with using_device("cuda"):
        gpu = attack(opts, view, update)
    assert gpu.images.device.type == "cpu" and gpu.info["device"].startswith("cuda")
    assert (gpu.images - cpu.images).abs().mean() < 1e-2
    torch.testing.assert_close(torch.tensor(gpu.loss_history), torch.tensor(cpu.loss_history), rtol=5e-2, atol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_precision_auto_runs_on_the_gpu():
    _, view, update = _tiny("lenet")
    with using_device("cuda"):
        rec = attack({"name": "inverting-gradients", "iterations": 3, "labels": "known", "precision": "auto"},
                     view, update)
    assert rec.info["precision"] in ("bfloat16", "float16") and torch.isfinite(rec.images).all()



@pytest.mark.parametrize("argv", [["train-victim", "--model", "lenet", "--epochs", "0", "--snapshots", "0"],
                                  ["train-enhancer", "--data", "builtin", "--steps", "1", "-q"]])
def test_training_commands_refuse_cuda_without_cuda_before_writing(no_cuda, tmp_path, capsys, argv):
    out = tmp_path / ("victims" if argv[0] == "train-victim" else "enhancer.safetensors")
    rc = cli_main(argv + ["--device", "cuda", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "CUDA is not available" in err, err
    assert not out.exists()


def test_train_victim_on_the_cpu_records_the_device(tmp_path):
    from fedleak.experiment.victims import VictimPlan, train_victim

    card = train_victim(VictimPlan(model="lenet", epochs=0, snapshots=[0], device="auto"), tmp_path, log=lambda s: None)
    assert card["device"] == str(resolve_device("auto")) and card["plan"]["device"] == "auto"


def test_a_cell_with_a_bad_config_asks_for_no_gpu():
    assert task_gpus({"base": {"device": "cuda"}, "overrides": ["data.size=-3"]}, 2) == 0
