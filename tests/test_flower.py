"""fedleak.flower.AuditStrategy: through Flower's Strategy API with real FitRes/Parameters objects, and in a
real Flower simulation (2 clients x 1 round on Flower's Ray-based simulation engine)."""
import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower's usage telemetry: off in tests

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

flwr = pytest.importorskip("flwr")

from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server.client_manager import SimpleClientManager  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402

from fedleak.experiment.case import Case  # noqa: E402
from fedleak.errors import ConfigError  # noqa: E402
from fedleak.integrations.flower import AuditStrategy  # noqa: E402

SIZE = 16
MODEL = {"name": "lenet", "num_classes": 1000}
ATTACK = {"name": "rog", "iterations": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


class Proxy(ClientProxy):
    """A client as the server's Strategy sees it; these tests never call the client itself."""

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def _case(start):
    return Case({"seed": 0, "data": {"size": SIZE, "batch_size": 1, "start": start}, "model": MODEL,
                 "attack": ATTACK})


def _fedsgd_round(lr=0.5):
    """Global parameters (state_dict order, as Flower PyTorch apps send them) and, per client, what it sends
    back after one full-batch SGD step: w - lr * grad (computed by fedleak's own client simulation)."""
    cases = [_case(0), _case(1)]
    state = cases[0].model.state_dict()
    glob = [v.detach().numpy().copy() for v in state.values()]
    replies, grads = [], []
    for c in cases:
        g = c.client_update().tensors
        grads.append(g)
        replies.append([(v - lr * g[k]).numpy() if k in g else v.numpy() for k, v in state.items()])
    return cases, glob, replies, grads


def _fitres(arrays, cid_metric, **metrics):
    return FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(arrays), num_examples=1,
                  metrics={"client_id": cid_metric, **metrics})


def _manager(n=2):
    cm = SimpleClientManager()
    proxies = [Proxy(f"node-{i}") for i in range(n)]
    for p in proxies:
        cm.register(p)
    return cm, proxies


def _fedavg(glob):
    return FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=2,
                  initial_parameters=ndarrays_to_parameters(glob))


def test_strategy_api_audits_sampled_updates_and_changes_nothing(tmp_path):
    lr = 0.5
    cases, glob, replies, grads = _fedsgd_round(lr)
    seen = []
    audit = AuditStrategy(_fedavg(glob), ATTACK, model=MODEL, image_size=SIZE, protocol="fedsgd",
                          true_data=lambda cid: (cases[int(cid)].images, cases[int(cid)].labels),
                          out=tmp_path / "audit", on_record=seen.append, rounds=[1, 2], threads=1)
    plain = _fedavg(glob)
    cm, proxies = _manager()
    assert audit.fraction_fit == 1.0  # unknown attributes are the wrapped strategy's
    init = audit.initialize_parameters(cm)
    assert parameters_to_ndarrays(init)[0].tolist() == glob[0].tolist()
    ins = audit.configure_fit(1, init, cm)
    assert sorted(p.cid for p, _ in ins) == ["node-0", "node-1"]
    assert all(i.parameters is init for _, i in ins)
    results = [(proxies[k], _fitres(replies[k], k, lr=lr, protocol="fedsgd")) for k in range(2)]
    params, agg_metrics = audit.aggregate_fit(1, results, [])
    want, _ = plain.aggregate_fit(1, results, [])
    for a, b in zip(parameters_to_ndarrays(params), parameters_to_ndarrays(want)):
        np.testing.assert_array_equal(a, b)  # aggregation untouched by the audit
    assert audit.configure_evaluate(1, params, cm) == []  # fraction_evaluate=0, as FedAvg says
    assert audit.evaluate(1, params) is None

    assert [r["client"] for r in audit.records] == ["0", "1"] and seen == audit.records
    for k, r in enumerate(audit.records):
        assert r["status"] == "ok", r["error"]
        assert r["round"] == 1 and r["cid"] == f"node-{k}" and r["kind"] == "gradient" and r["iterations"] == 3
        assert r["psnr"] > 0 and -1 <= r["ssim"] <= 1 and r["label_accuracy"] == 1.0
        assert (tmp_path / "audit" / r["images"]).is_file() and (tmp_path / "audit" / r["reconstruction"]).is_file()
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [r["client"] for r in saved["records"]] == ["0", "1"] and saved["attack"]["name"] == "rog"


def test_update_is_the_clients_gradient():
    """The Update rebuilt from Flower's parameters is what the fedleak client computed (FedSGD: delta / lr)."""
    from fedleak.integrations.flower import build_update

    lr = 0.5
    cases, glob, replies, grads = _fedsgd_round(lr)
    names = list(cases[0].model.state_dict().keys())
    params = [k for k, _ in cases[0].model.named_parameters()]
    upd = build_update(glob, replies[1], names, params, {"lr": lr, "obfuscation": "qsgd(16)"}, 1, "fedsgd")
    assert list(upd.tensors) == params and upd.kind == "gradient" and upd.protocol == "fedsgd"
    assert upd.obfuscation[0]["name"] == "qsgd" and upd.obfuscation[0]["levels"] == 16
    for k in params:
        torch.testing.assert_close(upd.tensors[k], grads[1][k], rtol=1e-3, atol=1e-6)
    avg = build_update(glob, replies[1], names, params, {"lr": 0.1, "local_steps": 3, "local_batch_size": 1}, 1)
    assert avg.kind == "delta" and avg.lr == 0.1 and avg.local_steps == 3 and avg.local_batch_size == 1
    torch.testing.assert_close(avg.tensors[params[0]], lr * grads[1][params[0]], rtol=1e-3, atol=1e-6)
    with pytest.raises(ConfigError, match="learning rate"):
        build_update(glob, replies[1], names, params, {}, 1)


def test_sampling_rounds_clients_and_failures_never_break_training():
    cases, glob, replies, _ = _fedsgd_round()
    cm, proxies = _manager()
    ok = [(proxies[k], _fitres(replies[k], k)) for k in range(2)]
    audit = AuditStrategy(_fedavg(glob), ATTACK, model=MODEL, image_size=SIZE, rounds=lambda r: r == 2, clients=1,
                          protocol="fedsgd", lr=0.5)
    init = audit.initialize_parameters(cm)
    audit.configure_fit(1, init, cm)
    assert audit.aggregate_fit(1, ok, [])[0] is not None and audit.records == []  # round 1 is not audited
    audit.configure_fit(2, init, cm)
    assert audit.aggregate_fit(2, ok, [])[0] is not None
    assert len(audit.records) == 1 and audit.records[0]["status"] == "ok"  # one client sampled
    # malformed uploads are recorded as failed audits; the wrapped strategy still gets them, as before
    broken = [(proxies[k], _fitres(replies[k][:-1], k)) for k in range(2)]
    audit2 = AuditStrategy(_fedavg(glob), ATTACK, model=MODEL, image_size=SIZE, protocol="fedsgd", lr=0.5)
    audit2.configure_fit(1, init, cm)
    try:
        audit2.aggregate_fit(1, broken, [])
    except Exception:  # noqa: BLE001 - what FedAvg does with short uploads is FedAvg's business
        pass
    assert [r["status"] for r in audit2.records] == ["failed", "failed"]
    assert "arrays" in audit2.records[0]["error"]
    with pytest.raises(ConfigError):
        AuditStrategy(FedAvg(), ATTACK, model=MODEL, image_size=SIZE, clients=1.5)
    with pytest.raises(ConfigError):
        AuditStrategy(FedAvg(), {"name": "rog", "bogus": 1}, model=MODEL, image_size=SIZE)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Ray's note about accelerator env vars
def test_flower_simulation_two_clients_one_round(tmp_path):
    """Flower's own simulation engine (Ray, 1 CPU): 2 clients train FedAvg locally and send QSGD-compressed
    updates; the audit strategy attacks both updates in round 1 and scores them."""
    pytest.importorskip("ray")
    from flwr.client import ClientApp, NumPyClient
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.simulation import run_simulation

    lr, steps, size = 0.05, 2, SIZE

    def data(pid):
        from fedleak.client.data import load_builtin

        d = load_builtin(size, start=pid, count=1)
        return d.images, d.labels

    def model():
        from fedleak.client.models import build_model

        return build_model("lenet", num_classes=1000, image_size=size, seed=0)

    class Client(NumPyClient):  # defined here so that Ray ships it to the client actors by value
        def __init__(self, pid):
            self.pid = pid

        def fit(self, parameters, config):
            import torch as T

            from fedleak.client.obfuscations import ObfContext, build_pipeline
            from fedleak.client.protocols import buffer_dict, fedavg, param_dict

            T.set_num_threads(1)
            m = model()
            names = list(m.state_dict().keys())
            m.load_state_dict({k: T.from_numpy(np.array(a, copy=True)) for k, a in zip(names, parameters)})
            x, y = data(self.pid)
            p, b = param_dict(m), buffer_dict(m)
            ctx = ObfContext(generator=T.Generator().manual_seed(self.pid), batch_size=1, num_examples=1,
                             local_steps=steps)
            delta, _ = fedavg(m, p, b, x, y, build_pipeline([]), ctx, lr, steps)
            sent = build_pipeline([{"name": "qsgd", "levels": 16}]).apply({k: v / lr for k, v in delta.items()}, ctx)
            new = {k: p[k] - lr * sent[k] for k in p}
            return ([new[k].numpy() for k in names], 1,
                    {"client_id": self.pid, "lr": lr, "local_steps": steps, "obfuscation": "qsgd(16)"})

    holder = {}

    def server_fn(context):
        init = ndarrays_to_parameters([v.numpy() for v in model().state_dict().values()])
        audit = AuditStrategy(FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2,
                                     min_available_clients=2, initial_parameters=init),
                              ATTACK, model=MODEL, image_size=size, true_data=data_by_id, out=tmp_path / "a",
                              threads=1)
        holder["audit"] = audit
        return ServerAppComponents(strategy=audit, config=ServerConfig(num_rounds=1))

    def data_by_id(cid):
        return data(int(cid))

    run_simulation(server_app=ServerApp(server_fn=server_fn),
                   client_app=ClientApp(client_fn=lambda ctx: Client(int(ctx.node_config["partition-id"])).to_client()),
                   num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 1, "include_dashboard": False}})
    recs = holder["audit"].records
    assert sorted(r["client"] for r in recs) == ["0", "1"]
    for r in recs:
        assert r["status"] == "ok", r["error"]
        assert r["round"] == 1 and r["kind"] == "delta" and r["protocol"] == "fedavg"
        assert r["obfuscation"][0]["name"] == "qsgd" and r["iterations"] == 3
        assert r["psnr"] > 0 and r["label_accuracy"] == 1.0
        assert (tmp_path / "a" / r["images"]).is_file()
    assert len(json.loads((tmp_path / "a" / "audit.json").read_text())["records"]) == 2
