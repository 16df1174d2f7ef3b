"""Audit a running Flower system: wrap its server strategy and attack the client updates it receives.

Both Flower server APIs are supported by one name, :class:`AuditStrategy`:

* the current ``ServerApp`` API (``flwr.serverapp.strategy``: ``FedAvg``, ``FedProx``, ... exchanging
  ``Message``/``ArrayRecord``; flwr >= 1.21), which returns a :class:`MessageAuditStrategy`::

    >>> from flwr.serverapp.strategy import FedAvg
    >>> from fedleak.integrations.flower import AuditStrategy
    >>> strategy = AuditStrategy(FedAvg(fraction_evaluate=0.0), {"name": "rog", "iterations": 100},
    ...                          model=MyNet, image_size=32, rounds=[1, 5], clients=2, out="audit/")
    >>> strategy.start(grid=grid, initial_arrays=ArrayRecord(MyNet().state_dict()), num_rounds=5,
    ...                train_config=ConfigRecord({"lr": 0.01}))

* the legacy ``flwr.server.strategy.Strategy`` API (``FitIns``/``FitRes``/``Parameters``), where flwr still
  ships it: ``AuditStrategy(flwr.server.strategy.FedAvg(...), ...)`` is a legacy ``Strategy``.

The wrapper forwards every strategy method to the wrapped strategy and returns its results unchanged; the
FL run behaves exactly as before. In addition, for the sampled rounds and clients, it turns what the server
received into a fedleak :class:`~fedleak.client.update.Update` and
:class:`~fedleak.server.view.ServerView` and runs the configured fedleak attack (in ``aggregate_train`` /
``aggregate_fit``, before delegating), then records the result per round and client in
:attr:`records` and, with ``out``, in ``out/audit.json`` plus images (``fedleak report out/`` renders it).

How the update is built (the server's knowledge only):

* the global arrays the server sent are remembered per client when the round is configured
  (``configure_train``: the ``ArrayRecord`` of each train ``Message``, by destination node;
  ``configure_fit``: each ``FitIns.parameters``); what came back is the reply's ``ArrayRecord`` (or
  ``FitRes.parameters``); ``delta = sent - received``;
* the arrays are matched to the model's parameters by name when the ``ArrayRecord`` keys are the model's
  ``state_dict`` keys (``ArrayRecord(model.state_dict())``, Flower's PyTorch convention), else by order:
  ``param_names``, else the model's ``state_dict()`` keys, or its ``named_parameters()`` keys when the count
  matches those instead;
* ``protocol``: ``fedavg`` -> a weight delta with the client's learning rate, local steps and local batch
  size; ``fedsgd`` -> the gradient ``delta / lr`` of one full-batch step;
* values the client reports, used when present: in the reply's ``MetricRecord``/``ConfigRecord`` (message
  API; ``-`` and ``_`` are the same in keys) or ``FitRes.metrics`` (legacy): ``lr``, ``local_steps`` (total
  optimiser steps this round), ``epochs``, ``local_batch_size``, ``protocol``, ``obfuscation`` (a fedleak
  pipeline string such as ``"qsgd(16)"``; a string, so a ``ConfigRecord`` in the message API),
  ``bits_per_parameter``, ``client_id`` (the id used for ``true_data`` and the records; default the node
  id / ``ClientProxy.cid``) and, message API, ``num-examples`` (Flower's weighting key). In the message API
  the train ``ConfigRecord`` the server sent (e.g. ``{"lr": 0.01}``) is known too and fills what the reply
  leaves out. Missing ``lr`` falls back to the ``lr`` argument;
* the number of images to reconstruct is the client's example count (clients with more than ``max_batch``
  examples are recorded as skipped; replies that carry an error are not audited).

When ``true_data(client_id) -> (images, labels)`` is given (a simulation that knows the client data), the
reconstruction is scored (PSNR, SSIM, ROG-SSIM, 1-HaarPSI, label accuracy) after the attack returned;
otherwise only the reconstructed images are stored. The true data never reaches the attack.

Needs Flower: ``pip install fedleak[flwr]`` (and ``flwr[simulation]`` for Ray-based simulations).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch

try:
    import flwr  # noqa: F401
except ImportError as _e:  # pragma: no cover - exercised only without flwr
    raise ImportError("fedleak.integrations.flower needs Flower, which is not installed: pip install fedleak[flwr]"
                      ) from _e
try:  # the current ServerApp strategy API (flwr >= 1.21)
    from flwr.serverapp.strategy import Strategy as MessageStrategy
except ImportError:  # pragma: no cover - older flwr: the legacy API only
    MessageStrategy = None
try:  # the legacy Strategy API, as long as flwr ships it
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import Strategy as LegacyStrategy
except ImportError:  # pragma: no cover - a flwr without the legacy API
    LegacyStrategy = None

from fedleak.errors import ConfigError

__all__ = ["AuditStrategy", "MessageAuditStrategy", "build_update"]

Selector = Union[None, int, Iterable[int], Callable[[int], bool]]

#: what AuditStrategy accepts, for the one-line error
ACCEPTED = ("a Flower strategy: flwr.serverapp.strategy.Strategy (FedAvg, FedProx, ... of the ServerApp API) "
            "or the legacy flwr.server.strategy.Strategy")
#: the reported values build_update reads (after '-' -> '_')
REPORTED = ("lr", "local_steps", "epochs", "local_batch_size", "protocol", "obfuscation", "bits_per_parameter",
            "client_id", "num_examples")


def _model_parts(model: Any, image_size: int, channels: int, num_classes: Optional[int]):
    """-> (model_name, model_kwargs, factory, num_classes) for the ServerView."""
    if callable(model) and not isinstance(model, (str, dict)):
        probe = model()
        if not isinstance(probe, torch.nn.Module):
            raise ConfigError("AuditStrategy: model must be a fedleak model config or a callable returning an nn.Module")
        if num_classes is None:
            with torch.no_grad():
                probe.eval()
                num_classes = int(probe(torch.zeros(1, channels, image_size, image_size)).shape[-1])
        return type(probe).__name__, {}, model, int(num_classes)
    from fedleak.client.models import model_kwargs
    from fedleak.config.schema import load_config

    section = {"name": model} if isinstance(model, str) else dict(model)
    if num_classes is not None:
        section.setdefault("num_classes", num_classes)
    cfg = load_config(base={"model": section, "data": {"size": image_size}})
    return cfg.model.name, model_kwargs(cfg.model, image_size, 0), None, cfg.model.num_classes


def _attack_section(attack_config: Union[str, dict], seed: int) -> dict:
    """The attack section as audited, validated once: the audit seed is filled in when the attack declares
    ``seeds`` and the section gives none."""
    from fedleak.attacks import ATTACKS, check_attack_config

    att = {"name": attack_config} if isinstance(attack_config, str) else dict(attack_config)
    if not isinstance(att.get("name"), str):
        raise ConfigError("AuditStrategy: attack_config must be a name or a mapping with a 'name'")
    if "seed" not in att and ATTACKS.caps(att["name"]).seeds:
        att["seed"] = seed
    check_attack_config(att)
    return att


def _check_clients(clients: Any) -> None:
    if isinstance(clients, bool) or (clients is not None and not isinstance(clients, (int, float))):
        raise ConfigError(f"clients must be None, an int or a fraction, got {clients!r}")
    if isinstance(clients, float) and not 0 < clients <= 1:
        raise ConfigError(f"clients as a fraction must be in (0, 1], got {clients}")
    if isinstance(clients, int) and clients < 1:
        raise ConfigError(f"clients must be at least 1, got {clients}")


def _to_scalar(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def reported(*records: Any) -> dict:
    """The values a client (or the server's train config) reported, merged left to right, keys with ``-``
    written ``_`` (Flower's ``num-examples`` is ``num_examples``); only the keys the audit reads."""
    out: dict = {}
    for rec in records:
        for k, v in dict(rec or {}).items():
            key = str(k).replace("-", "_")
            if key in REPORTED:
                out[key] = _to_scalar(v)
    return out


def build_update(sent: list, received: list, names: list[str], param_names: list[str], metrics: dict,
                 num_examples: int, protocol: str = "fedavg", lr: Optional[float] = None):
    """The fedleak :class:`~fedleak.update.Update` for one client: ``sent``/``received`` are lists of numpy
    arrays in the order of ``names``; only the entries in ``param_names`` (trainable parameters) go into the
    update. See the module docstring for the metrics used."""
    from fedleak.client.update import Update

    if len(sent) != len(names) or len(received) != len(names):
        raise ConfigError(f"{len(sent)} sent / {len(received)} received arrays for {len(names)} named tensors")
    by_name_s = dict(zip(names, sent))
    by_name_r = dict(zip(names, received))
    proto = str(_to_scalar(metrics.get("protocol", protocol))).lower()
    if proto not in ("fedavg", "fedsgd"):
        raise ConfigError(f"protocol {proto!r}: expected fedavg or fedsgd")
    lr_v = metrics.get("lr", lr)
    if lr_v is None or not _is_number(lr_v) or not lr_v > 0:
        raise ConfigError("the client's learning rate is unknown: report it as the metric 'lr' or pass lr=")
    lr_v = float(lr_v)
    delta = {}
    for k in param_names:
        if k not in by_name_s:
            raise ConfigError(f"no array for model parameter {k!r}")
        s = torch.as_tensor(by_name_s[k]).double()
        r = torch.as_tensor(by_name_r[k]).double()
        if s.shape != r.shape:
            raise ConfigError(f"{k!r}: sent shape {tuple(s.shape)} but received {tuple(r.shape)}")
        delta[k] = (s - r).float()
    obf: list[dict] = []
    text = metrics.get("obfuscation")
    if text:
        from fedleak.config.schema import parse_pipeline
        from fedleak.client.obfuscations import build_pipeline

        obf = build_pipeline(parse_pipeline(str(_to_scalar(text)))).describe()
    n = int(num_examples)
    stats: dict[str, Any] = {"num_parameters": sum(t.numel() for t in delta.values())}
    bpp = metrics.get("bits_per_parameter")
    if _is_number(bpp):
        stats["bits_per_parameter"] = float(bpp)
    if proto == "fedsgd":
        return Update(tensors={k: v / lr_v for k, v in delta.items()}, kind="gradient", protocol="fedsgd",
                      batch_size=n, num_examples=n, obfuscation=obf, stats=stats)
    steps = int(metrics.get("local_steps", 1) or 1)
    lbs = metrics.get("local_batch_size")
    return Update(tensors=delta, kind="delta", protocol="fedavg", lr=lr_v, local_steps=steps,
                  epochs=int(metrics.get("epochs", 1) or 1),
                  local_batch_size=int(lbs) if _is_number(lbs) and lbs else None,
                  batch_size=n, num_examples=n, obfuscation=obf, stats=stats)


@dataclass
class ClientReply:
    """One client's answer in a round, independent of the Flower API it came through.

    ``client``: the id for the records and ``true_data``; ``node``: Flower's id (node id or proxy cid);
    ``metrics``: the reported values (see :func:`reported`); ``arrays()`` -> ``(sent, received, names)``,
    called inside the audit so that a malformed upload is recorded as a failed audit."""

    client: str
    node: str
    num_examples: int
    metrics: dict
    arrays: Callable[[], tuple[list, list, list[str]]]


class _AuditCore:
    """The audit shared by both strategy wrappers: configuration, sampling, attack, scoring, records."""

    API = "?"

    def _init_audit(self, strategy: Any, attack_config: Union[str, dict], *, model: Any, image_size: int,
                    channels: int = 3, num_classes: Optional[int] = None, rounds: Selector = None,
                    clients: Union[None, int, float] = None, true_data: Optional[Callable] = None,
                    out: Optional[Union[str, Path]] = None, protocol: str = "fedavg", lr: Optional[float] = None,
                    param_names: Optional[list[str]] = None, seed: int = 0, max_batch: int = 64,
                    metrics: Optional[dict] = None, on_record: Optional[Callable[[dict], None]] = None,
                    threads: Optional[int] = None, arrayrecord_key: str = "arrays",
                    examples_key: str = "num-examples", device: str = "auto") -> None:
        from fedleak.device import resolve_device
        from fedleak.metrics.options import metric_options

        self.device = resolve_device(device)  # where the audit's attacks compute (auto: CUDA when present)

        self.strategy = strategy
        self.attack_config = _attack_section(attack_config, seed)
        self.image_size, self.channels = int(image_size), int(channels)
        self.model_name, self.model_kwargs, self.model_factory, self.num_classes = _model_parts(
            model, self.image_size, self.channels, num_classes)
        ref = self._fresh_model()
        self._state_names = list(ref.state_dict().keys())
        self._param_names = [k for k, _ in ref.named_parameters()]
        self._ref_state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
        self.param_names = list(param_names) if param_names is not None else None
        _check_clients(clients)
        self.rounds, self.clients = rounds, clients
        self.true_data, self.protocol, self.lr = true_data, protocol, lr
        self.seed, self.max_batch = int(seed), int(max_batch)
        self.metric_options = metric_options(metrics).evaluate_kwargs()
        self.out = Path(out) if out is not None else None
        self.on_record = on_record
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self.arrayrecord_key, self.examples_key = str(arrayrecord_key), str(examples_key)
        self.records: list[dict] = []
        self._sent: dict[int, dict] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r}, attack={self.attack_config.get('name')!r})"

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found on the wrapper: forward to the wrapped strategy
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    # ------------------------------------------------------------------ sampling
    def _round_selected(self, r: int) -> bool:
        return round_selected(self.rounds, r)

    def _fresh_model(self) -> torch.nn.Module:
        if self.model_factory is not None:
            return self.model_factory()
        from fedleak.client.models import build_model

        return build_model(self.model_name, **self.model_kwargs)

    def _names(self, count: int) -> list[str]:
        return array_names(count, self.param_names, self._state_names, self._param_names)

    # ------------------------------------------------------------------ the audit
    def _audit_round(self, server_round: int, replies: list[ClientReply]) -> None:
        keyed = sorted(replies, key=lambda r: r.client)
        for reply in pick_clients(keyed, self.clients, self.seed * 1_000_003 + server_round):
            before = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                rec = self._audit_one(server_round, reply)
            finally:
                torch.set_num_threads(before)
            self.records.append(rec)
            if self.on_record is not None:
                self.on_record(rec)
            self._write()

    def _audit_one(self, server_round: int, reply: ClientReply) -> dict:
        rec: dict[str, Any] = {"round": server_round, "client": reply.client, "cid": reply.node,
                               "num_examples": int(reply.num_examples), "attack": self.attack_config["name"],
                               "status": "ok", "error": None}
        t0 = time.perf_counter()
        skip = _skip_reason(int(reply.num_examples), self.max_batch)
        if skip is not None:
            rec.update(status="skipped", error=skip)
            return rec
        try:
            self._attack_and_score(server_round, reply, rec, t0)
        except Exception as e:  # noqa: BLE001 - an audit failure must never break the FL run
            rec["status"] = "failed"
            rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        return rec

    def _attack_and_score(self, server_round: int, reply: ClientReply, rec: dict, t0: float) -> None:
        """Rebuild what the server received, attack it, score it (when the truth is known), save it."""
        from fedleak.attacks import attack
        from fedleak.device import using_device

        sent, received, names = reply.arrays()
        update = build_update(sent, received, names, self._param_names, reply.metrics, reply.num_examples,
                              self.protocol, self.lr)
        rec.update(protocol=update.protocol, kind=update.kind, obfuscation=update.obfuscation,
                   bits_per_parameter=update.stats.get("bits_per_parameter"))
        view = self._server_view(names, sent, int(reply.num_examples))
        torch.manual_seed(self.seed * 1_000_003 + server_round)
        with using_device(self.device):
            result = attack(self.attack_config, view, update)
        rec["attack_seconds"] = round(time.perf_counter() - t0, 3)
        hist = [float(v) for v in result.loss_history]
        rec.update(iterations=len(hist), final_loss=hist[-1] if hist and math.isfinite(hist[-1]) else None,
                   interrupted=bool(result.info.get("interrupted", False)))
        truth = self.true_data(reply.client) if self.true_data is not None else None
        perm = list(range(result.images.shape[0]))
        if truth is not None:
            scores = _score(truth, result, self.metric_options)
            perm = scores.pop("permutation")
            rec.update(scores)
        if self.out is not None:
            rec.update(_save_images(self.out, server_round, reply.client, result, perm, truth,
                                    rec.get("per_image")))

    def _server_view(self, names: list[str], sent: list, batch_size: int):
        from fedleak.server.view import ServerView

        state = {k: v.clone() for k, v in self._ref_state.items()}
        for k, a in zip(names, sent):
            state[k] = torch.as_tensor(a).clone().to(state[k].dtype if k in state else torch.float32)
        return ServerView(model_name=self.model_name, model_kwargs=dict(self.model_kwargs), global_state=state,
                          image_size=self.image_size, channels=self.channels, num_classes=self.num_classes,
                          batch_size=batch_size, model_factory=self.model_factory)

    def _write(self) -> None:
        if self.out is None:
            return
        from fedleak.io import jsonable, write_json

        write_json(self.out / "audit.json", jsonable({
            "kind": "flower-audit", "api": self.API, "strategy": type(self.strategy).__name__,
            "attack": self.attack_config, "model": {"name": self.model_name, **self.model_kwargs},
            "image_size": self.image_size, "channels": self.channels, "records": self.records}))


def _check_wrapped(wrapper: str, strategy: Any, base: Any) -> None:
    if base is None or not isinstance(strategy, base):
        raise ConfigError(f"{wrapper} wraps {ACCEPTED}; got {type(strategy).__name__} "
                          f"({type(strategy).__module__})")


# ====================================================================== the current (ServerApp) API
class MessageAuditStrategy(_AuditCore, MessageStrategy if MessageStrategy is not None else object):
    """A ``flwr.serverapp.strategy.Strategy`` that delegates everything to ``strategy`` and audits the
    sampled clients' train replies. Built by ``AuditStrategy(strategy, ...)`` when ``strategy`` is one of the
    ServerApp API (see :class:`AuditStrategy` for the options; ``arrayrecord_key``: the key of the
    ``ArrayRecord`` in the messages when there are several, Flower's default ``"arrays"``; ``examples_key``:
    the reply metric holding the client's example count, Flower's default ``"num-examples"``).

    ``start(grid=..., initial_arrays=..., ...)`` is Flower's own loop, calling the methods below."""

    API = "serverapp"

    def __init__(self, strategy: Any, attack_config: Union[str, dict], **options: Any):
        _check_wrapped(type(self).__name__, strategy, MessageStrategy)
        self._init_audit(strategy, attack_config, **options)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self._round_selected(server_round):
            self._sent[server_round] = {int(m.metadata.dst_node_id): (m.content, dict(self._configs(m.content)))
                                        for m in messages}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
        replies = list(replies)  # may be an iterator: read once here, handed on as a list
        if server_round in self._sent:
            try:
                self._audit_round(server_round, [self._reply(server_round, m) for m in replies
                                                 if not m.has_error()])
            finally:
                self._sent.pop(server_round, None)
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Any]) -> Any:
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ messages -> ClientReply
    @staticmethod
    def _configs(content: Any) -> dict:
        out: dict = {}
        for rec in content.config_records.values():
            out.update(rec)
        return out

    def _reply(self, server_round: int, msg: Any) -> ClientReply:
        node = int(msg.metadata.src_node_id)
        sent_content, sent_config = self._sent[server_round].get(node, (None, {}))
        content = msg.content
        own = reported(*content.metric_records.values(), self._configs(content))
        sent_known = {k: v for k, v in reported(sent_config).items() if k not in ("client_id", "num_examples")}
        metrics = {**sent_known, **own}
        n = next((rec[self.examples_key] for rec in content.metric_records.values() if self.examples_key in rec),
                 metrics.get("num_examples"))
        cid = metrics.get("client_id")
        return ClientReply(client=str(cid) if cid is not None else str(node), node=str(node),
                           num_examples=int(n) if _is_number(n) else 0, metrics=metrics,
                           arrays=lambda: self._record_arrays(sent_content, content, node))

    def _array_record(self, content: Any, what: str) -> Any:
        recs = content.array_records
        if self.arrayrecord_key in recs:
            return recs[self.arrayrecord_key]
        if len(recs) == 1:
            return next(iter(recs.values()))
        raise ConfigError(f"the {what} carries no ArrayRecord {self.arrayrecord_key!r} (it has {sorted(recs)}); "
                          "pass arrayrecord_key=")

    def _record_arrays(self, sent_content: Any, content: Any, node: int) -> tuple[list, list, list[str]]:
        """(sent, received, names): by the record keys when they are the model's state_dict keys, else by order."""
        if sent_content is None:
            raise ConfigError(f"no train message was sent to node {node} in this round")
        sent_rec = self._array_record(sent_content, "train message")
        recv_rec = self._array_record(content, "reply")
        keys = list(recv_rec.keys())
        state = set(self._state_names)
        if self.param_names is None and all(k in state and k in sent_rec for k in keys):
            return [sent_rec[k].numpy() for k in keys], [recv_rec[k].numpy() for k in keys], keys
        names = self._names(len(keys))
        return [a.numpy() for a in sent_rec.values()], [recv_rec[k].numpy() for k in keys], names


# ====================================================================== the legacy Strategy API
class AuditStrategy(_AuditCore, LegacyStrategy if LegacyStrategy is not None else object):
    """Wrap a Flower strategy and audit sampled client updates; the wrapped strategy's results are unchanged.

    ``AuditStrategy(strategy, attack_config, ...)`` with a strategy of the current ServerApp API
    (``flwr.serverapp.strategy``) returns a :class:`MessageAuditStrategy`; with a legacy
    ``flwr.server.strategy.Strategy`` it is this class, itself a legacy ``Strategy``. Anything else is
    refused with one line.

    ``attack_config``: a fedleak attack name or ``{"name": ..., **options}``. ``model``: a fedleak ``model:``
    section (name or dict, e.g. ``{"name": "lenet", "num_classes": 1000}``) or a callable returning the
    ``nn.Module`` the clients train (its ``state_dict`` order must be the order of the Flower arrays unless
    they are named by its keys or ``param_names`` says otherwise). ``image_size``/``channels``: the input
    shape the server knows. ``rounds``: None (every round), a round number, an iterable of round numbers or
    ``fn(round) -> bool``. ``clients``: None (every client that returned a result), an int (that many per
    round) or a float in (0, 1] (that fraction, at least one); the choice is random with ``seed``
    (reproducible). ``true_data``: ``fn(client_id) -> (images, labels)`` for scoring (None: images only).
    ``out``: folder for ``audit.json`` and images. ``protocol``/``lr``: defaults when the client does not
    report them. ``max_batch``: skip clients with more examples. ``on_record``: called with each record.
    ``threads``: torch threads while attacking (restored afterwards; 1 is fastest on a busy machine).
    """

    API = "legacy"

    def __new__(cls, strategy: Any = None, *args: Any, **kwargs: Any):
        if cls is AuditStrategy and MessageStrategy is not None and isinstance(strategy, MessageStrategy):
            return MessageAuditStrategy(strategy, *args, **kwargs)  # not an AuditStrategy: no second __init__
        return super().__new__(cls)

    def __init__(self, strategy: Any, attack_config: Union[str, dict], **options: Any):
        _check_wrapped("AuditStrategy", strategy, LegacyStrategy)
        self._init_audit(strategy, attack_config, **options)

    def initialize_parameters(self, client_manager: Any) -> Any:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        if self._round_selected(server_round):
            self._sent[server_round] = {"global": parameters,
                                        **{proxy.cid: ins.parameters for proxy, ins in instructions}}
        return instructions

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        if server_round in self._sent:
            try:
                self._audit_round(server_round, [self._reply(server_round, p, r) for p, r in results])
            finally:
                self._sent.pop(server_round, None)
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Any) -> Any:
        return self.strategy.evaluate(server_round, parameters)

    def _reply(self, server_round: int, proxy: Any, res: Any) -> ClientReply:
        metrics = reported(res.metrics)
        cid = metrics.get("client_id")
        sent_p = self._sent[server_round].get(proxy.cid) or self._sent[server_round]["global"]

        def arrays() -> tuple[list, list, list[str]]:
            sent = parameters_to_ndarrays(sent_p)
            return sent, parameters_to_ndarrays(res.parameters), self._names(len(sent))

        return ClientReply(client=str(cid) if cid is not None else str(proxy.cid), node=str(proxy.cid),
                           num_examples=int(res.num_examples), metrics=metrics, arrays=arrays)


def round_selected(sel: Selector, r: int) -> bool:
    """Whether round ``r`` is audited under the ``rounds`` selector (see :class:`AuditStrategy`)."""
    if sel is None:
        return True
    if callable(sel):
        return bool(sel(r))
    if isinstance(sel, int) and not isinstance(sel, bool):
        return r == sel
    return r in set(sel)


def pick_clients(keyed: list, k: Union[None, int, float], rng_seed: int) -> list:
    """The audited results of a round: all (``k`` None), ``k`` of them or the fraction ``k`` (at least one),
    drawn reproducibly with ``rng_seed`` from ``keyed`` (sorted by client id)."""
    if k is None:
        return keyed
    n = max(1, math.ceil(k * len(keyed))) if isinstance(k, float) else min(int(k), len(keyed))
    chosen = set(random.Random(rng_seed).sample(range(len(keyed)), n))
    return [pr for i, pr in enumerate(keyed) if i in chosen]


def array_names(count: int, given: Optional[list[str]], state_names: list[str], param_names: list[str]) -> list[str]:
    """The parameter names of ``count`` Flower ndarrays: ``given``, else the model's state_dict or
    named_parameters keys, whichever count matches."""
    if given is not None:
        if len(given) != count:
            raise ConfigError(f"param_names has {len(given)} names for {count} arrays")
        return given
    if count == len(state_names):
        return state_names
    if count == len(param_names):
        return param_names
    raise ConfigError(f"{count} arrays, but the model has {len(state_names)} state_dict entries and "
                      f"{len(param_names)} parameters; pass param_names=")


def _skip_reason(num_examples: int, max_batch: int) -> Optional[str]:
    if num_examples > max_batch:
        return f"{num_examples} examples > max_batch={max_batch}"
    if num_examples < 1:
        return "the client reported no examples"
    return None


def _score(truth, result, metric_options: dict) -> dict:
    """The record's scores of ``result`` against the client's true ``(images, labels)`` (after the attack)."""
    from fedleak import metrics as M

    images, labels = truth
    ev = M.evaluate(images, result, true_labels=labels, **metric_options)
    mean = ev["mean"]
    return dict(psnr=mean.get("psnr"), ssim=mean.get("ssim"), ssim_rog=mean.get("ssim_rog"),
                perceptual=mean.get("perceptual"), label_accuracy=ev.get("label_accuracy"),
                per_image=ev["per_image"], permutation=ev["permutation"])


def _save_row(images: torch.Tensor, path: Path) -> None:
    """One row of images, enlarged 4x (no originals to show them over)."""
    from PIL import Image

    from fedleak.io import atomic_path

    tiles = [(t.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8") for t in images.float()]
    h, w = tiles[0].shape[:2]
    canvas = Image.new("RGB", (len(tiles) * (4 * w + 4) - 4, 4 * h), (255, 255, 255))
    for i, a in enumerate(tiles):
        im = Image.fromarray(a if a.shape[2] == 3 else a[..., 0]).convert("RGB")
        canvas.paste(im.resize((4 * w, 4 * h), Image.NEAREST), (i * (4 * w + 4), 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def _save_images(out: Path, server_round: int, cid: str, result, perm, truth, per_image) -> dict:
    """``round<r>-client<id>.pt`` (the run folders' reconstruction format) and ``.png``; returns their names."""
    from fedleak.experiment.rundir import save_reconstruction
    from fedleak.metrics import plots

    out.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cid)
    stem = f"round{server_round:03d}-client{safe}"
    save_reconstruction(out / f"{stem}.pt", result, perm)
    matched = result.images.detach().cpu()[perm]
    if truth is not None:
        plots.save_grid(torch.as_tensor(truth[0]), matched, out / f"{stem}.png", psnrs=(per_image or {}).get("psnr"),
                        title=f"round {server_round}, client {cid}: originals over reconstructions")
    else:
        _save_row(matched, out / f"{stem}.png")
    return {"images": f"{stem}.png", "reconstruction": f"{stem}.pt"}
