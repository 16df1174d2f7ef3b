"""Audit a running Flower system: wrap its server ``Strategy`` and attack the client updates it receives.

>>> from flwr.server.strategy import FedAvg
>>> from fedleak.flower import AuditStrategy
>>> strategy = AuditStrategy(FedAvg(...), {"name": "rog", "iterations": 100},
...                          model={"name": "lenet", "num_classes": 1000}, image_size=32,
...                          rounds=[1, 5], clients=2, true_data=my_lookup, out="audit/")

:class:`AuditStrategy` forwards every ``Strategy`` method to the wrapped strategy and returns its results
unchanged; the FL run behaves exactly as before. In addition, for the sampled rounds and clients, it turns
what the server received into a fedleak :class:`~fedleak.update.Update` and :class:`~fedleak.update.ServerView`
and runs the configured fedleak attack (inside ``aggregate_fit``, before delegating), then records the result
per round and client in :attr:`AuditStrategy.records` and, with ``out``, in ``out/audit.json`` plus images.

How the update is built (the server's knowledge only):

* the global parameters the server sent are remembered in ``configure_fit`` (per client, from its
  ``FitIns``); the client's ``FitRes.parameters`` are what came back; ``delta = sent - received``;
* ``protocol`` (``FitRes.metrics["protocol"]`` if the client reports it, else the ``protocol`` argument):
  ``fedavg`` -> a weight delta with the client's learning rate, local steps and local batch size;
  ``fedsgd`` -> the gradient ``delta / lr`` of one full-batch step;
* client-reported ``FitRes.metrics`` that are used when present (all Flower scalars): ``lr``, ``local_steps``
  (total optimiser steps this round), ``epochs``, ``local_batch_size``, ``protocol``, ``obfuscation`` (a
  fedleak pipeline string such as ``"qsgd(16)"``, so the attack can match obfuscation-aware),
  ``bits_per_parameter`` and ``client_id`` (the id used for ``true_data`` and the records; default the
  ``ClientProxy.cid``). Missing ``lr`` falls back to the ``lr`` argument;
* the number of images to reconstruct is ``FitRes.num_examples`` (clients with more than ``max_batch``
  examples are recorded as skipped);
* the ndarrays are mapped to parameter names by ``param_names`` (default: the model's ``state_dict()`` keys,
  Flower's PyTorch convention, or its ``named_parameters()`` keys when the count matches those instead).

When ``true_data(client_id) -> (images, labels)`` is given (a simulation that knows the client data), the
reconstruction is scored (PSNR, SSIM, ROG-SSIM, 1-HaarPSI, label accuracy) after the attack returned;
otherwise only the reconstructed images are stored. The true data never reaches the attack.

Needs Flower: ``pip install fedleak[flwr]`` (and ``flwr[simulation]`` for Ray-based simulations).
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch

try:
    from flwr.common import (EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar,
                             parameters_to_ndarrays)
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import Strategy
except ImportError as _e:  # pragma: no cover - exercised only without flwr
    raise ImportError("fedleak.flower needs Flower, which is not installed: pip install fedleak[flwr]") from _e

from fedleak.errors import ConfigError

__all__ = ["AuditStrategy", "build_update"]

Selector = Union[None, int, Iterable[int], Callable[[int], bool]]


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
    if lr_v is None or not isinstance(lr_v, (int, float)) or isinstance(lr_v, bool) or not lr_v > 0:
        raise ConfigError("the client's learning rate is unknown: report FitRes.metrics['lr'] or pass lr=")
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
    if isinstance(bpp, (int, float)) and not isinstance(bpp, bool):
        stats["bits_per_parameter"] = float(bpp)
    if proto == "fedsgd":
        return Update(tensors={k: v / lr_v for k, v in delta.items()}, kind="gradient", protocol="fedsgd",
                      batch_size=n, num_examples=n, obfuscation=obf, stats=stats)
    steps = int(metrics.get("local_steps", 1) or 1)
    lbs = metrics.get("local_batch_size")
    return Update(tensors=delta, kind="delta", protocol="fedavg", lr=lr_v, local_steps=steps,
                  epochs=int(metrics.get("epochs", 1) or 1),
                  local_batch_size=int(lbs) if isinstance(lbs, (int, float)) and not isinstance(lbs, bool) and lbs
                  else None, batch_size=n, num_examples=n, obfuscation=obf, stats=stats)


class AuditStrategy(Strategy):
    """A Flower ``Strategy`` that delegates everything to ``strategy`` and audits sampled client updates.

    ``attack_config``: a fedleak attack name or ``{"name": ..., **options}``. ``model``: a fedleak ``model:``
    section (name or dict, e.g. ``{"name": "lenet", "num_classes": 1000}``) or a callable returning the
    ``nn.Module`` the clients train (its ``state_dict`` order must be the order of the Flower ndarrays unless
    ``param_names`` says otherwise). ``image_size``/``channels``: the input shape the server knows.
    ``rounds``: None (every round), a round number, an iterable of round numbers or ``fn(round) -> bool``.
    ``clients``: None (every client that returned a result), an int (that many per round) or a float in
    (0, 1] (that fraction, at least one); the choice is random with ``seed`` (reproducible).
    ``true_data``: ``fn(client_id) -> (images, labels)`` for scoring (None: images only). ``out``: folder for
    ``audit.json`` and images. ``protocol``/``lr``: defaults when the client does not report them.
    ``max_batch``: skip clients with more examples. ``on_record``: called with each record. ``threads``: torch
    threads while attacking (restored afterwards; 1 is fastest on a busy machine).
    """

    def __init__(self, strategy: Strategy, attack_config: Union[str, dict], *, model: Any, image_size: int,
                 channels: int = 3, num_classes: Optional[int] = None, rounds: Selector = None,
                 clients: Union[None, int, float] = None, true_data: Optional[Callable] = None,
                 out: Optional[Union[str, Path]] = None, protocol: str = "fedavg", lr: Optional[float] = None,
                 param_names: Optional[list[str]] = None, seed: int = 0, max_batch: int = 64,
                 metrics: Optional[dict] = None, on_record: Optional[Callable[[dict], None]] = None,
                 threads: Optional[int] = None):
        from fedleak.metrics.options import metric_options

        if not isinstance(strategy, Strategy):
            raise ConfigError(f"AuditStrategy wraps a flwr Strategy, got {type(strategy).__name__}")
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
        self.records: list[dict] = []
        self._sent: dict[int, dict[str, Parameters]] = {}
        self._global: dict[int, Parameters] = {}

    # ------------------------------------------------------------------ delegation (results unchanged)
    def __repr__(self) -> str:
        return f"AuditStrategy({self.strategy!r}, attack={self.attack_config.get('name')!r})"

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found on the wrapper: forward to the wrapped strategy
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def initialize_parameters(self, client_manager: ClientManager) -> Optional[Parameters]:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        if self._round_selected(server_round):
            self._global[server_round] = parameters
            self._sent[server_round] = {proxy.cid: ins.parameters for proxy, ins in instructions}
        return instructions

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Union[tuple[ClientProxy, FitRes], BaseException]]
                      ) -> tuple[Optional[Parameters], dict[str, Scalar]]:
        if server_round in self._global:
            try:
                self._audit_round(server_round, results)
            finally:
                self._global.pop(server_round, None)
                self._sent.pop(server_round, None)
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Union[tuple[ClientProxy, EvaluateRes], BaseException]]
                           ) -> tuple[Optional[float], dict[str, Scalar]]:
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> Optional[tuple[float, dict[str, Scalar]]]:
        return self.strategy.evaluate(server_round, parameters)

    # ------------------------------------------------------------------ sampling
    def _round_selected(self, r: int) -> bool:
        return round_selected(self.rounds, r)

    def _pick(self, server_round: int, results: list) -> list:
        keyed = sorted(results, key=lambda pr: self._client_id(pr[0], pr[1]))
        return pick_clients(keyed, self.clients, self.seed * 1_000_003 + server_round)

    @staticmethod
    def _client_id(proxy: ClientProxy, res: FitRes) -> str:
        v = (res.metrics or {}).get("client_id")
        return str(_to_scalar(v)) if v is not None else str(proxy.cid)

    # ------------------------------------------------------------------ the audit
    def _fresh_model(self) -> torch.nn.Module:
        if self.model_factory is not None:
            return self.model_factory()
        from fedleak.client.models import build_model

        return build_model(self.model_name, **self.model_kwargs)

    def _names(self, count: int) -> list[str]:
        return array_names(count, self.param_names, self._state_names, self._param_names)

    def _audit_round(self, server_round: int, results: list) -> None:
        for proxy, res in self._pick(server_round, results):
            before = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                rec = self._audit_one(server_round, proxy, res)
            finally:
                torch.set_num_threads(before)
            self.records.append(rec)
            if self.on_record is not None:
                self.on_record(rec)
            self._write()

    def _audit_one(self, server_round: int, proxy: ClientProxy, res: FitRes) -> dict:
        cid = self._client_id(proxy, res)
        rec: dict[str, Any] = {"round": server_round, "client": cid, "cid": str(proxy.cid),
                               "num_examples": int(res.num_examples), "attack": self.attack_config["name"],
                               "status": "ok", "error": None}
        t0 = time.perf_counter()
        skip = _skip_reason(int(res.num_examples), self.max_batch)
        if skip is not None:
            rec.update(status="skipped", error=skip)
            return rec
        try:
            self._attack_and_score(server_round, proxy, res, cid, rec, t0)
        except Exception as e:  # noqa: BLE001 - an audit failure must never break the FL run
            rec["status"] = "failed"
            rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        return rec

    def _attack_and_score(self, server_round: int, proxy: ClientProxy, res: FitRes, cid: str, rec: dict,
                          t0: float) -> None:
        """Rebuild what the server received, attack it, score it (when the truth is known), save it."""
        from fedleak.attacks import attack

        sent_p = self._sent.get(server_round, {}).get(proxy.cid) or self._global[server_round]
        sent = parameters_to_ndarrays(sent_p)
        names = self._names(len(sent))
        update = build_update(sent, parameters_to_ndarrays(res.parameters), names, self._param_names,
                              dict(res.metrics or {}), res.num_examples, self.protocol, self.lr)
        rec.update(protocol=update.protocol, kind=update.kind, obfuscation=update.obfuscation,
                   bits_per_parameter=update.stats.get("bits_per_parameter"))
        view = self._server_view(names, sent, int(res.num_examples))
        torch.manual_seed(self.seed * 1_000_003 + server_round)
        result = attack(self.attack_config, view, update)
        rec["attack_seconds"] = round(time.perf_counter() - t0, 3)
        hist = [float(v) for v in result.loss_history]
        rec.update(iterations=len(hist), final_loss=hist[-1] if hist and math.isfinite(hist[-1]) else None,
                   interrupted=bool(result.info.get("interrupted", False)))
        truth = self.true_data(cid) if self.true_data is not None else None
        perm = list(range(result.images.shape[0]))
        if truth is not None:
            scores = _score(truth, result, self.metric_options)
            perm = scores.pop("permutation")
            rec.update(scores)
        if self.out is not None:
            rec.update(_save_images(self.out, server_round, cid, result, perm, truth, rec.get("per_image")))

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

        write_json(self.out / "audit.json", jsonable({"attack": self.attack_config,
                                                      "model": {"name": self.model_name, **self.model_kwargs},
                                                      "image_size": self.image_size, "records": self.records}))


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
