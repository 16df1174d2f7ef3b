"""Audit a Flower federated-learning simulation live with fedleak (Flower's current ServerApp/ClientApp API).

The Flower side is what a Flower user writes: a PyTorch ``Net``, a ``ClientApp`` whose ``@app.train()``
function loads the global weights from the message's ``ArrayRecord``, runs an ordinary SGD loop over its
local ``DataLoader`` and replies with its new ``state_dict`` and a ``MetricRecord``, and a ``ServerApp``
whose ``@app.main()`` runs Flower's ``FedAvg`` (``flwr.serverapp.strategy``) with ``strategy.start(...)``.
Each of the four clients holds bundled photos (one by default); nothing of fedleak runs on the clients.

The one fedleak line is on the server: ``FedAvg`` is wrapped in ``fedleak.integrations.flower.AuditStrategy``,
which forwards everything to FedAvg unchanged and, in every round, attacks each client's reply (ROG by
default, from the server's knowledge only: the weights it sent, the weights that came back, the learning
rate and step count the client reported), then scores the reconstruction against the client's true images
(the simulation knows them). Results: ``OUT/audit.json`` and one PNG per round and client;
``fedleak report OUT`` renders them as one HTML page.

``--capture DIR`` makes each client also save what it sent, for ``fedleak attack``: per round and client a
folder ``DIR/round001-client0/`` with ``server_weights.pt`` (the global ``state_dict`` it received),
``update.pt`` (its ``state_dict`` after local training) and ``meta.json`` (lr, local steps, batch size,
labels, the model as ``import:flower_audit:Net``).

    pip install -e ".[flwr]"                # Flower with its Ray simulation engine
    python examples/flower_audit.py         # 4 clients x 2 rounds, ROG 100 iterations

How it runs (``--engine``): ``flwr-run`` (default) is Flower's own way: this file is packaged as a Flower
App (a temporary folder with a ``pyproject.toml`` naming ``serverapp``/``clientapp``) and run with
``flwr run APP --stream`` on a local simulation SuperLink that the script starts on a free port, with its own
``FLWR_HOME``, and stops at the end. ``run_simulation`` runs everything in this process through
``flwr.simulation.run_simulation``, which Flower 1.42 marks deprecated (it logs a warning).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage telemetry from Flower
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

NUM_CLASSES = 1000  # the bundled photos carry ImageNet class indices


class Net(nn.Module):
    """A small CNN (three 5x5 convolutions, sigmoid, one linear layer), as in the gradient-leakage papers."""

    def __init__(self, num_classes: int = NUM_CLASSES, image_size: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
        )
        self.fc = nn.Linear(12 * (image_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


def initial_model(image_size: int) -> Net:
    torch.manual_seed(0)  # the same initial global model on every run
    return Net(image_size=image_size)


def load_partition(partition_id: int, per_client: int, image_size: int) -> TensorDataset:
    """Client ``partition_id``'s local data: ``per_client`` of the photos bundled with fedleak."""
    from fedleak.client.data import load_builtin

    d = load_builtin(image_size, start=partition_id * per_client, count=per_client)
    return TensorDataset(d.images, d.labels)


def train(net: nn.Module, loader: DataLoader, epochs: int, lr: float) -> tuple[float, int]:
    """Plain local SGD: ``epochs`` passes over ``loader``; returns (mean loss, number of optimiser steps)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            opt.zero_grad()
            loss = loss_fn(net(images), labels)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
    return total / max(steps, 1), steps


def save_capture(folder: Path, received: dict, sent: dict, meta: dict) -> None:
    """What one client sent in one round, for ``fedleak attack --weights ... --update ...``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(received, folder / "server_weights.pt")
    torch.save(sent, folder / "update.pt")
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


OPTS_KEY = "fedleak-example-opts"  # run_config key holding this script's options (JSON), under `flwr run`


def options_of(context) -> argparse.Namespace:
    """The script's options inside a Flower App run (``flwr run``): from the run config."""
    return argparse.Namespace(**json.loads(context.run_config[OPTS_KEY]))


def client_app(opts: argparse.Namespace | None = None):
    """The ClientApp: train on the local data, reply with the new weights (``opts`` None: from the run config)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def fit(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        o = opts or options_of(context)
        pid = int(context.node_config["partition-id"])
        net = Net(image_size=o.size)
        received = msg.content["arrays"].to_torch_state_dict()
        net.load_state_dict(received)
        data = load_partition(pid, o.per_client, o.size)
        lr = float(msg.content["config"]["lr"])
        loss, steps = train(net, DataLoader(data, batch_size=o.batch_size, shuffle=True), o.local_epochs, lr)
        new = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if o.capture:
            rnd = int(msg.content["config"]["server-round"])
            save_capture(Path(o.capture) / f"round{rnd:03d}-client{pid}", received, new, {
                "kind": "weights", "lr": lr, "local_steps": steps, "epochs": o.local_epochs,
                "batch_size": o.batch_size, "num_examples": len(data), "labels": data.tensors[1].tolist(),
                "model": "import:flower_audit:Net", "num_classes": NUM_CLASSES, "image_size": o.size,
                "round": rnd, "client": pid})
        metrics = MetricRecord({"train_loss": loss, "num-examples": len(data), "local-steps": steps,
                                "local-batch-size": o.batch_size})
        who = ConfigRecord({"client-id": pid})  # the simulation's partition id: lets the audit score against it
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics, "client": who}), reply_to=msg)

    return app


def server_app(opts: argparse.Namespace | None = None, holder: dict | None = None):
    """The ServerApp: Flower's FedAvg, wrapped by fedleak's audit (``opts`` None: from the run config)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedleak.integrations.flower import AuditStrategy

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        o = opts or options_of(context)
        fedavg = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=o.clients,
                        min_available_nodes=o.clients)
        strategy = AuditStrategy(fedavg, {"name": o.attack, "iterations": o.iterations},
                                 model=lambda: Net(image_size=o.size), image_size=o.size,
                                 true_data=lambda cid: load_partition(int(cid), o.per_client, o.size).tensors,
                                 out=o.out, on_record=print_record, threads=1)
        if holder is not None:
            holder["strategy"] = strategy
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_model(o.size).state_dict()),
                       num_rounds=o.rounds, train_config=ConfigRecord({"lr": o.lr}))

    return app


def print_record(r: dict) -> None:
    if r["status"] == "ok":
        print(f"[audit] round {r['round']} client {r['client']}: {r['attack']} PSNR {r['psnr']:.2f} dB, "
              f"SSIM {r['ssim']:.3f}, labels {r['label_accuracy']}, {r['seconds']:.1f}s", flush=True)
    else:
        print(f"[audit] round {r['round']} client {r['client']}: {r['status']}: {r['error']}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4, help="simulated clients (SuperNodes)")
    ap.add_argument("--per-client", type=int, default=1, help="photos per client (8 bundled in all)")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1, help="the clients' DataLoader batch size")
    ap.add_argument("--lr", type=float, default=0.01, help="the clients' SGD learning rate")
    ap.add_argument("--attack", default="rog")
    ap.add_argument("--iterations", type=int, default=100, help="attack iterations")
    ap.add_argument("--size", type=int, default=32, help="image size")
    ap.add_argument("--out", default="experiments/flower-audit")
    ap.add_argument("--engine", choices=("flwr-run", "run_simulation"), default="flwr-run",
                    help="flwr-run: Flower's `flwr run` on a local simulation SuperLink (default); run_simulation: "
                         "in this process (deprecated by Flower 1.42)")
    ap.add_argument("--capture", default=None, metavar="DIR",
                    help="clients also save server_weights.pt, update.pt and meta.json per round under DIR")
    opts = ap.parse_args(argv)
    if opts.clients * opts.per_client > 8:
        ap.error(f"{opts.clients} clients x {opts.per_client} photos: only 8 photos are bundled")
    for k in ("out", "capture"):
        if getattr(opts, k):
            setattr(opts, k, str(Path(getattr(opts, k)).resolve()))
    return opts


APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedleak-flower-audit"
version = "1.0.0"
description = "fedleak's Flower audit example, packaged as a Flower App by examples/flower_audit.py"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedleak"

[tool.flwr.app.components]
serverapp = "flwr_app:serverapp"
clientapp = "flwr_app:clientapp"

[tool.flwr.app.config]
{key} = {value}
"""
APP_MODULE = "from flower_audit import client_app, server_app\n\nserverapp = server_app()\nclientapp = client_app()\n"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc, seconds: float = 60.0) -> None:
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"flower-superlink exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"flower-superlink did not answer on port {port} within {seconds:.0f}s")


def run_with_flwr(opts: argparse.Namespace) -> int:
    """Package this file as a Flower App and run it with ``flwr run`` on a local simulation SuperLink (started
    here on a free port, with a private FLWR_HOME, and stopped at the end); returns flwr's exit code."""
    import shutil
    import subprocess
    import tempfile

    bindir = Path(sys.executable).parent
    exe = {n: shutil.which(n, path=str(bindir)) or shutil.which(n) for n in ("flwr", "flower-superlink")}
    if not all(exe.values()):
        raise SystemExit("the flwr and flower-superlink commands were not found: pip install 'flwr[simulation]'")
    with tempfile.TemporaryDirectory(prefix="fedleak-flwr-") as tmp:
        app, home = Path(tmp) / "app", Path(tmp) / "home"
        app.mkdir()
        home.mkdir()
        shutil.copy(Path(__file__).resolve(), app / "flower_audit.py")
        (app / "flwr_app.py").write_text(APP_MODULE)
        (app / "pyproject.toml").write_text(APP_TOML.format(key=json.dumps(OPTS_KEY),
                                                             value=json.dumps(json.dumps(vars(opts)))))
        port, control = _free_port(), _free_port()
        (home / "config.toml").write_text(f'[superlink]\ndefault = "fedleak"\n\n[superlink.fedleak]\n'
                                          f'address = "127.0.0.1:{port}"\ninsecure = true\n')
        repo = Path(__file__).resolve().parents[1]  # fedleak of this checkout, for the app's processes
        env = {**os.environ, "FLWR_HOME": str(home), "PATH": os.pathsep.join([str(bindir), os.environ.get("PATH", "")]),
               "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)}
        link = subprocess.Popen([exe["flower-superlink"], "--insecure", "--simulation", "--isolation", "subprocess",
                                 "--host", "127.0.0.1", "--port", str(port),
                                 "--control-api-address", f"127.0.0.1:{control}",
                                 "--disable-runtime-dependency-installation",
                                 "--log-file", str(home / "superlink.log")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_healthy(port, link)
            fed = f"num-supernodes={opts.clients} client-resources-num-cpus=1 init-args-num-cpus=2"
            return subprocess.run([exe["flwr"], "run", str(app), "fedleak", "--stream", "--federation-config", fed],
                                  env=env).returncode
        finally:
            link.terminate()
            try:
                link.wait(timeout=30)
            except subprocess.TimeoutExpired:
                link.kill()


def run_in_process(opts: argparse.Namespace) -> None:
    """Everything in this process through ``flwr.simulation.run_simulation`` (deprecated in Flower 1.42)."""
    from flwr.simulation import run_simulation

    run_simulation(server_app=server_app(opts), client_app=client_app(opts), num_supernodes=opts.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})


def main(argv=None) -> int:
    opts = parse_args(argv)
    audit_file = Path(opts.out) / "audit.json"
    if audit_file.exists():
        audit_file.unlink()  # this run's records only
    t0 = time.time()
    if opts.engine == "flwr-run":
        code = run_with_flwr(opts)
        if code:
            print(f"flwr run failed with exit code {code}", file=sys.stderr)
    else:
        run_in_process(opts)
    records = json.loads(audit_file.read_text())["records"] if audit_file.exists() else []
    print(f"\n{len(records)} client update(s) audited in {time.time() - t0:.0f}s ({opts.attack} "
          f"{opts.iterations} iterations, {opts.size}x{opts.size} images, lr {opts.lr}, {opts.local_epochs} "
          f"local epoch(s) of batch {opts.batch_size}, engine {opts.engine}):")
    print("| round | client | examples | PSNR (dB) | SSIM | label acc | status |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        f = (lambda k, fmt: fmt.format(r[k]) if r.get(k) is not None else "")
        print(f"| {r['round']} | {r['client']} | {f('num_examples', '{}')} | {f('psnr', '{:.2f}')} | "
              f"{f('ssim', '{:.3f}')} | {f('label_accuracy', '{:.2f}')} | {r['status']} |")
    print(f"records: {audit_file}  (fedleak report {opts.out})")
    return 0 if records and all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
