"""Audit a Flower federated-learning simulation live with fedleak.

Four Flower clients each hold one of fedleak's bundled photos (``fedleak.data.load_builtin``) and train a
LeNet with FedAvg (2 local SGD steps); each compresses its update with fedleak's ``qsgd`` obfuscation before
sending it. The server runs Flower's own ``FedAvg`` strategy, wrapped in ``fedleak.integrations.flower.AuditStrategy``,
which forwards everything to FedAvg unchanged and, in every round, attacks each client's update with ROG
(from the server's knowledge only), then scores the reconstruction against the client's true image (the
simulation knows it). Results: ``OUT/audit.json`` and one PNG (original over reconstruction) per round and
client.

    pip install -e ".[flwr]"                # Flower with its Ray simulation engine
    python examples/flower_audit.py         # about 1-2 minutes on 2 CPU cores

Options: ``--rounds 2 --levels 16 --iterations 100 --attack rog --size 32 --out experiments/flower-audit``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage telemetry from Flower
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch  # noqa: E402

NUM_CLIENTS = 4
LR = 0.01
LOCAL_STEPS = 2
MODEL = {"name": "lenet", "num_classes": 1000}


def make_model(size: int) -> torch.nn.Module:
    from fedleak.client.models import build_model

    # the same architecture on clients and server; seed 0 fixes the initial global model
    return build_model(MODEL["name"], num_classes=MODEL["num_classes"], image_size=size, seed=0)


def client_data(pid: int, size: int):
    from fedleak.client.data import load_builtin

    d = load_builtin(size, start=pid, count=1)  # client `pid` holds bundled photo number `pid`
    return d.images, d.labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--levels", type=int, default=16, help="QSGD levels used by the clients")
    ap.add_argument("--attack", default="rog")
    ap.add_argument("--iterations", type=int, default=100, help="attack iterations")
    ap.add_argument("--size", type=int, default=32, help="image size")
    ap.add_argument("--out", default="experiments/flower-audit")
    args = ap.parse_args(argv)

    import numpy as np
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedleak.integrations.flower import AuditStrategy

    size, levels = args.size, args.levels

    class QSGDClient(NumPyClient):
        """A plain FedAvg client (local SGD) whose upload is QSGD-compressed with fedleak's obfuscation."""

        def __init__(self, pid: int):
            self.pid = pid
            self.x, self.y = client_data(pid, size)
            self.model = make_model(size)
            self.names = list(self.model.state_dict().keys())

        def fit(self, parameters, config):
            from fedleak.client.obfuscations import ObfContext, build_pipeline
            from fedleak.client.protocols import buffer_dict, fedavg, param_dict

            state = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(self.names, parameters)}
            self.model.load_state_dict(state)
            params, buffers = param_dict(self.model), buffer_dict(self.model)
            rnd = int(config.get("server_round", 0))
            n = self.x.shape[0]
            ctx = ObfContext(generator=torch.Generator().manual_seed(1000 * rnd + self.pid), batch_size=n,
                             num_examples=n, local_steps=LOCAL_STEPS)
            delta, _ = fedavg(self.model, params, buffers, self.x, self.y, build_pipeline([]), ctx, LR, LOCAL_STEPS)
            qsgd = build_pipeline([{"name": "qsgd", "levels": levels}])
            sent = qsgd.apply({k: v / LR for k, v in delta.items()}, ctx)  # compress the pseudo-gradient
            new = {k: params[k] - LR * sent[k] for k in params}
            numels = [t.numel() for t in sent.values()]
            arrays = [(new[k] if k in new else state[k]).numpy() for k in self.names]
            return arrays, n, {"client_id": self.pid, "protocol": "fedavg", "lr": LR, "local_steps": LOCAL_STEPS,
                               "obfuscation": f"qsgd({levels})",
                               "bits_per_parameter": qsgd.bits(numels) / sum(numels)}

    def client_fn(context: Context):
        torch.set_num_threads(1)
        return QSGDClient(int(context.node_config["partition-id"])).to_client()

    def true_data(client_id: str):
        return client_data(int(client_id), size)  # the simulation knows the data: used for scoring only

    def on_record(r):
        if r["status"] == "ok":
            print(f"[audit] round {r['round']} client {r['client']}: {r['attack']} PSNR {r['psnr']:.2f} dB, "
                  f"SSIM {r['ssim']:.3f}, labels {r['label_accuracy']}, {r['bits_per_parameter']:.2f} bits/param, "
                  f"{r['seconds']:.1f}s", flush=True)
        else:
            print(f"[audit] round {r['round']} client {r['client']}: {r['status']}: {r['error']}", flush=True)

    audit = {}

    def server_fn(context: Context):
        init = [v.detach().numpy() for v in make_model(size).state_dict().values()]
        fedavg_strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=NUM_CLIENTS,
                                 min_available_clients=NUM_CLIENTS, initial_parameters=ndarrays_to_parameters(init),
                                 on_fit_config_fn=lambda r: {"server_round": r})
        strategy = AuditStrategy(fedavg_strategy, {"name": args.attack, "iterations": args.iterations},
                                 model=MODEL, image_size=size, true_data=true_data, out=args.out,
                                 on_record=on_record, threads=1)
        audit["strategy"] = strategy
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    t0 = time.time()
    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=NUM_CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    records = audit["strategy"].records if "strategy" in audit else []
    print(f"\n{len(records)} client update(s) audited in {time.time() - t0:.0f}s "
          f"(QSGD {levels} levels, {args.attack} {args.iterations} iterations, {size}x{size} images):")
    print("| round | client | bits/param | PSNR (dB) | SSIM | label acc | status |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        f = (lambda k, fmt: fmt.format(r[k]) if r.get(k) is not None else "")
        print(f"| {r['round']} | {r['client']} | {f('bits_per_parameter', '{:.2f}')} | {f('psnr', '{:.2f}')} | "
              f"{f('ssim', '{:.3f}')} | {f('label_accuracy', '{:.2f}')} | {r['status']} |")
    print(f"records: {os.path.join(args.out, 'audit.json')}")
    return 0 if records and all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
