"""fedleak.integrations.flower.AuditStrategy against the installed flwr (1.42 when written).

The legacy Strategy API with real FitRes/Parameters objects and in a Ray simulation (run_simulation); the
current ServerApp API (flwr.serverapp.strategy, Message/ArrayRecord) run by Flower's own Strategy.start loop
over an in-process Grid and plain PyTorch ClientApps; the one-line refusal of anything else; fedleak report
of an audit folder; the example's apps in-process and, slow, through `flwr run`."""
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


# ====================================================================== the current ServerApp / Message API
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg as MessageFedAvg  # noqa: E402
from flwr.serverapp.strategy import Strategy as MessageStrategy  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedleak.integrations.flower import MessageAuditStrategy  # noqa: E402

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


class TinyNet(torch.nn.Module):
    """A plain PyTorch model, as a Flower user writes one (no fedleak in it)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 5, padding=2, stride=2)
        self.fc = torch.nn.Linear(4 * (SIZE // 2) ** 2, 1000)

    def forward(self, x):
        return self.fc(torch.sigmoid(self.conv(x)).flatten(1))


def _photo(pid):
    from fedleak.client.data import load_builtin

    d = load_builtin(SIZE, start=pid, count=1)
    return d.images, d.labels


class LocalGrid(Grid):
    """Flower's Grid, delivering each message to a ClientApp in this process (the simulation engine without
    Ray): node ``100 + k`` is partition ``k``. Replies come back as an iterator, as a Grid may return them."""

    def __init__(self, client_app, n, run_config=None):
        self.app, self.nodes = client_app, [100 + k for k in range(n)]
        self.contexts = {node: Context(run_id=1, node_id=node, node_config={"partition-id": k, "num-partitions": n},
                                       state=RecordDict(), run_config=dict(run_config or {}))
                         for k, node in enumerate(self.nodes)}

    def set_run(self, run):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        return iter([self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages])


@pytest.fixture
def task_identity():
    """The process identity a ServerApp runs under (Flower sets it in a real run; Message() needs it)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id = TaskIdentity._run_id = TaskIdentity._node_id = None


def _plain_client(steps=2, numpy_keys=False, examples_name="num-examples"):
    """A Flower ClientApp that trains TinyNet with an ordinary torch SGD loop on its one photo."""
    app = ClientApp()

    @app.train()
    def train(msg, context):
        pid = int(context.node_config["partition-id"])
        net = TinyNet()
        rec = msg.content["arrays"]
        if numpy_keys:
            net.load_state_dict(dict(zip(net.state_dict(), (torch.from_numpy(a) for a in rec.to_numpy_ndarrays()))))
        else:
            net.load_state_dict(rec.to_torch_state_dict())
        x, y = _photo(pid)
        opt = torch.optim.SGD(net.parameters(), lr=float(msg.content["config"]["lr"]))
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        arrays = (ArrayRecord([v.detach().numpy() for v in net.state_dict().values()]) if numpy_keys
                  else ArrayRecord(net.state_dict()))
        metrics = MetricRecord({examples_name: 1, "local-steps": steps})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics,
                                   "client": ConfigRecord({"client-id": pid})}), reply_to=msg)

    return app


def _message_audit(tmp_path, rounds=2, **kw):
    torch.manual_seed(0)
    init = ArrayRecord(TinyNet().state_dict())
    fedavg = MessageFedAvg(fraction_evaluate=0.0)
    audit = AuditStrategy(fedavg, ATTACK, model=TinyNet, image_size=SIZE, true_data=lambda cid: _photo(int(cid)),
                          out=tmp_path / "audit", threads=1, **kw)
    result = audit.start(grid=LocalGrid(_plain_client(), 2), initial_arrays=init, num_rounds=rounds,
                         train_config=ConfigRecord({"lr": 0.05}))
    plain = MessageFedAvg(fraction_evaluate=0.0).start(grid=LocalGrid(_plain_client(), 2), initial_arrays=init,
                                                       num_rounds=rounds, train_config=ConfigRecord({"lr": 0.05}))
    return audit, result, plain


@pytest.mark.usefixtures("task_identity")
def test_serverapp_strategy_audits_a_simulated_round_and_changes_nothing(tmp_path):
    """flwr.serverapp.strategy.FedAvg, wrapped, run by Flower's own Strategy.start loop over 2 plain PyTorch
    clients for 2 rounds: every reply is attacked and scored; the aggregated model is FedAvg's."""
    audit, result, plain = _message_audit(tmp_path)
    assert isinstance(audit, MessageAuditStrategy) and isinstance(audit, MessageStrategy)
    assert audit.fraction_train == 1.0  # unknown attributes are the wrapped strategy's
    got, want = result.arrays.to_torch_state_dict(), plain.arrays.to_torch_state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)  # aggregation untouched by the audit
    assert [(r["round"], r["client"]) for r in audit.records] == [(1, "0"), (1, "1"), (2, "0"), (2, "1")]
    for r in audit.records:
        assert r["status"] == "ok", r["error"]
        assert r["kind"] == "delta" and r["protocol"] == "fedavg" and r["iterations"] == 3
        assert r["cid"] in ("100", "101") and r["num_examples"] == 1
        assert r["psnr"] > 0 and -1 <= r["ssim"] <= 1 and r["label_accuracy"] == 1.0
        assert (tmp_path / "audit" / r["images"]).is_file()
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["api"] == "serverapp" and saved["strategy"] == "FedAvg" and len(saved["records"]) == 4


@pytest.mark.usefixtures("task_identity")
def test_serverapp_update_is_the_clients_delta_by_name_and_by_order(tmp_path, monkeypatch):
    """The Update rebuilt from the ArrayRecords is sent - received, with the lr from the server's train config
    and the client's reported local steps; keys that are not the model's names are matched by order."""
    import fedleak.attacks

    seen = []

    def capture(cfg, view, update, **kw):
        seen.append((view, update))
        raise RuntimeError("captured")

    monkeypatch.setattr(fedleak.attacks, "attack", capture)
    for numpy_keys in (False, True):
        seen.clear()
        torch.manual_seed(0)
        net = TinyNet()
        state = net.state_dict()
        init = ArrayRecord([v.numpy() for v in state.values()]) if numpy_keys else ArrayRecord(state)
        audit = AuditStrategy(MessageFedAvg(fraction_evaluate=0.0), ATTACK, model=TinyNet, image_size=SIZE,
                              clients=1)
        audit.start(grid=LocalGrid(_plain_client(steps=3, numpy_keys=numpy_keys), 2), initial_arrays=init,
                    num_rounds=1, train_config=ConfigRecord({"lr": 0.05}))
        assert [r["status"] for r in audit.records] == ["failed"]  # clients=1: one of the two sampled
        assert audit.records[0]["error"] == "RuntimeError: captured"
        view, update = seen[0]
        assert update.lr == 0.05 and update.local_steps == 3 and update.kind == "delta" and update.batch_size == 1
        assert list(update.tensors) == [k for k, _ in net.named_parameters()]
        # the client's own delta, recomputed: the same training from the same start
        pid = int(audit.records[0]["client"])
        ref = TinyNet()
        ref.load_state_dict(net.state_dict())
        opt = torch.optim.SGD(ref.parameters(), lr=0.05)
        x, y = _photo(pid)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x), y).backward()
            opt.step()
        for k, p in ref.named_parameters():
            torch.testing.assert_close(update.tensors[k], net.state_dict()[k] - p.detach(), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(view.global_state["conv.weight"], net.state_dict()["conv.weight"])


@pytest.mark.usefixtures("task_identity")
def test_serverapp_example_count_key(monkeypatch):
    """A strategy weighting by another metric: the audit reads the example count under examples_key, and
    skips (recorded, not attacked) a reply whose count it cannot find."""
    import fedleak.attacks

    monkeypatch.setattr(fedleak.attacks, "attack", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("attacked")))
    statuses = {}
    for key in ("n", "num-examples"):
        torch.manual_seed(0)
        audit = AuditStrategy(MessageFedAvg(fraction_evaluate=0.0, weighted_by_key="n"), ATTACK, model=TinyNet,
                              image_size=SIZE, examples_key=key)
        audit.start(grid=LocalGrid(_plain_client(steps=1, examples_name="n"), 2),
                    initial_arrays=ArrayRecord(TinyNet().state_dict()), num_rounds=1,
                    train_config=ConfigRecord({"lr": 0.05}))
        statuses[key] = [(r["status"], r["error"]) for r in audit.records]
    assert statuses["n"] == [("failed", "RuntimeError: attacked")] * 2
    assert statuses["num-examples"] == [("skipped", "the client reported no examples")] * 2


def test_audit_strategy_accepts_both_apis_and_refuses_anything_else():
    legacy = AuditStrategy(FedAvg(), ATTACK, model=MODEL, image_size=SIZE)
    assert type(legacy) is AuditStrategy and isinstance(legacy, flwr.server.strategy.Strategy)
    current = AuditStrategy(MessageFedAvg(), ATTACK, model=MODEL, image_size=SIZE)
    assert type(current) is MessageAuditStrategy and not isinstance(current, flwr.server.strategy.Strategy)
    for wrong in ([1, 2], "FedAvg", MessageFedAvg):  # a list, a name, the class instead of an instance
        with pytest.raises(ConfigError) as e:
            AuditStrategy(wrong, ATTACK, model=MODEL, image_size=SIZE)
        msg = str(e.value)
        assert "\n" not in msg and "flwr.serverapp.strategy.Strategy" in msg and "flwr.server.strategy.Strategy" in msg
        assert f"got {type(wrong).__name__}" in msg
    with pytest.raises(ConfigError, match="got FedAvg"):
        MessageAuditStrategy(FedAvg(), ATTACK, model=MODEL, image_size=SIZE)  # the legacy FedAvg


@pytest.mark.usefixtures("task_identity")
def test_report_renders_an_audit_folder(tmp_path):
    from fedleak.cli import main as cli

    audit, _, _ = _message_audit(tmp_path, rounds=1)
    folder = tmp_path / "audit"
    records = json.loads((folder / "audit.json").read_text())["records"]
    records.append({"round": 1, "client": "9", "cid": "109", "status": "failed", "num_examples": 1,
                    "attack": "rog", "error": "ConfigError: no array for model parameter 'fc.bias'"})
    data = json.loads((folder / "audit.json").read_text())
    data["records"] = records
    (folder / "audit.json").write_text(json.dumps(data))
    assert cli(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    assert page.count('<tr class="ok"') == 2 and page.count('<tr class="failed"') == 1
    assert 'data-status="failed"' in page and "no array for model parameter" in page
    assert page.count('data-kind="audit-grid"') == 2 and "data:image/png;base64," in page
    assert f"{audit.records[0]['psnr']:.2f}" in page and "Flower serverapp API, strategy FedAvg" in page
    (folder / "audit.json").write_text("[1, 2]")
    assert cli(["report", str(folder)]) == 2
    assert cli(["report", str(tmp_path)]) == 2  # neither run, sweep nor audit


@pytest.mark.usefixtures("task_identity")
def test_example_apps_run_in_process_and_capture(tmp_path, monkeypatch):
    """examples/flower_audit.py's ServerApp and ClientApp, as `flwr run` builds them (options from the run
    config), run over the in-process grid (no Ray): the plain PyTorch clients are audited, and --capture
    writes what each client sent."""
    ex = _example()
    opts = ex.parse_args(["--rounds", "1", "--clients", "2", "--iterations", "2", "--size", str(SIZE),
                          "--out", str(tmp_path / "out"), "--capture", str(tmp_path / "cap")])
    run_config = {ex.OPTS_KEY: json.dumps(vars(opts))}
    holder = {}
    grid = LocalGrid(ex.client_app(), 2, run_config)
    ex.server_app(None, holder)(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                              run_config=run_config))
    recs = holder["strategy"].records
    assert sorted(r["client"] for r in recs) == ["0", "1"] and all(r["status"] == "ok" for r in recs)
    assert all(r["iterations"] == 2 and r["label_accuracy"] is not None for r in recs)
    cap = tmp_path / "cap" / "round001-client1"
    meta = json.loads((cap / "meta.json").read_text())
    assert meta["lr"] == opts.lr and meta["local_steps"] == 2 and meta["batch_size"] == 1
    assert meta["labels"] == _photo(1)[1].tolist() and meta["model"] == "import:flower_audit:Net"
    before = torch.load(cap / "server_weights.pt", weights_only=True)
    after = torch.load(cap / "update.pt", weights_only=True)
    assert list(before) == list(after) == list(ex.Net(image_size=SIZE).state_dict())
    assert not torch.equal(before["fc.weight"], after["fc.weight"])  # it trained


def _example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("flower_audit", REPO / "examples" / "flower_audit.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    return ex


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # Ray's note about accelerator env vars
def test_example_runs_with_flwr_run(tmp_path):
    """The example's default engine, Flower's non-deprecated way: `flwr run` of the packaged Flower App on a
    local simulation SuperLink that the script starts and stops (2 clients, 1 round, 2 attack iterations)."""
    pytest.importorskip("ray")
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "flower_audit.py"), "--rounds", "1",
                           "--clients", "2", "--iterations", "2", "--size", str(SIZE), "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "run_simulation` function is deprecated" not in proc.stdout + proc.stderr
    recs = json.loads((tmp_path / "out" / "audit.json").read_text())["records"]
    assert sorted(r["client"] for r in recs) == ["0", "1"] and all(r["status"] == "ok" for r in recs)
    assert "engine flwr-run" in proc.stdout
