"""A :class:`Case` is one simulated FL client round: images, labels, model, protocol and obfuscation.

>>> case = Case({"data": {"size": 32}, "model": {"name": "lenet"}})
>>> update = case.client_update()        # what the server receives
>>> view = case.server_view()            # what the server knows (no images)
>>> case.scenario_metrics()              # evaluation only: the scenario's model vs the true batch

The server scenario (``server:``) is applied at construction and sees only a
:class:`~fedleak.server.scenarios.ServerContext`, never the images or labels.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import nn

from fedleak.config.schema import as_config
from fedleak.device import resolve_device
from fedleak.client.data import ImageSet
from fedleak.client.weights import load_weights
from fedleak.experiment.data import load_data
from fedleak.errors import ConfigError
from fedleak.client.models import build_model, model_kwargs
from fedleak.client.obfuscations import ObfContext, build_pipeline
from fedleak.client.protocols import buffer_dict, fedavg, fedsgd, param_dict
from fedleak.client.rounds import recorded_tensors, rounds_privacy, run_rounds, wrap as wrap_rounds
from fedleak.client.update import Update
from fedleak.server.scenarios import SCENARIOS, ServerContext, build_scenario
from fedleak.server.view import ServerView


class Case:
    def __init__(self, config: Any = None, overrides: Optional[list[str]] = None, images: Optional[ImageSet] = None):
        self.config = as_config(config, overrides)
        cfg = self.config
        d = cfg.data
        self.data = images if images is not None else load_data(d, cfg.model.num_classes)
        n_cls = cfg.model.num_classes
        if int(self.data.labels.max()) >= n_cls:
            raise ConfigError(
                f"label {int(self.data.labels.max())} does not fit model.num_classes={n_cls}; raise num_classes"
            )
        self.pipeline = build_pipeline(cfg.obfuscation)
        self.model_kwargs = model_kwargs(cfg.model, d.size, cfg.seed)
        base: nn.Module = build_model(cfg.model.name, **self.model_kwargs)
        #: SHA-256 of ``model.weights`` (the round-k model the server sends), None for a fresh initialisation
        self.weights_sha256 = load_weights(base, cfg.model.weights, cfg.model.name) if cfg.model.weights else None
        # ---- the server's side: the scenario sees the context only (no images, no labels) ----------
        self.server_context = ServerContext(
            model=base, model_name=cfg.model.name, model_kwargs=dict(self.model_kwargs),
            channels=int(self.data.images.shape[1]), image_size=d.size, num_classes=n_cls,
            exclude_builtin=d.source == "builtin",  # never use the evaluation photos as public data
        )
        self.scenario = build_scenario(cfg.server)
        self.sent = self.scenario.send(self.server_context)
        self.model: nn.Module = self.sent.model
        self._update: Optional[Update] = None

    @property
    def model_factory(self):
        return self.sent.model_factory

    @property
    def server_extra(self) -> dict[str, Any]:
        """Server-side knowledge the scenario hands to the attacks (``ServerView.extra``)."""
        return self.sent.extra

    def scenario_metrics(self) -> dict[str, Any]:
        """Evaluation of the server scenario against the true batch (e.g. the imprint report: loss / accuracy /
        prediction agreement of the original vs the planted model). For metrics.json only, never for attacks."""
        return {"scenario": SCENARIOS.resolve(self.config.server["name"]), **self.scenario.evaluate(
            self.server_context, self.sent, self.images, self.labels)}

    @property
    def images(self) -> torch.Tensor:
        return self.data.images

    @property
    def labels(self) -> torch.Tensor:
        return self.data.labels

    def client_update(self) -> Update:
        """Run the client's round (protocol + obfuscation) and return what it uploads. Deterministic in the seed."""
        cfg = self.config
        p = cfg.protocol
        model = self.model
        model.train()
        dev = resolve_device(cfg.device)  # functional_call swaps in every tensor: the module itself stays put
        params = {k: v.to(dev) for k, v in param_dict(model).items()}
        buffers = {k: v.to(dev) for k, v in buffer_dict(model).items()}
        x, y = self.images.to(dev), self.labels.to(dev)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        n = x.shape[0]
        steps = 1 if p.name == "fedsgd" else p.local_steps * p.epochs
        ctx = ObfContext(
            generator=gen,
            batch_size=n if p.name == "fedsgd" else (p.local_batch_size or n),
            num_examples=n,
            local_steps=steps,
        )
        t0 = time.perf_counter()
        multi = None
        uploaded_buffers: dict = {}
        if p.rounds > 1 or p.participation < 1:  # many rounds: fedleak/client/rounds.py
            multi = run_rounds(model, params, buffers, x, y, self.pipeline, ctx, p, cfg.seed,
                               keep=recorded_tensors(self.sent.extra))
            raw, kind = multi.raw, multi.kind
        elif p.name == "fedsgd":
            raw = fedsgd(model, params, buffers, x, y, self.pipeline, ctx)
            kind = "gradient"
        else:
            delta, _ = fedavg(model, params, buffers, x, y, self.pipeline, ctx, p.lr, p.local_steps,
                              p.local_batch_size, p.epochs)
            if p.send == "pseudo-gradient":
                raw = {k: v / p.lr for k, v in delta.items()}
            else:
                raw = delta
            kind = p.send
            uploaded_buffers = {k: v.cpu() for k, v in buffers.items()}  # running statistics after the steps
        raw = {k: v.cpu() for k, v in raw.items()}  # obfuscations draw from the CPU generator
        sent = self.pipeline.apply(raw, ctx) if multi is None else multi.sent
        numels = [t.numel() for t in sent.values()]
        stats = update_stats(raw, sent, self.pipeline.bits(numels))
        priv = self.pipeline.privacy(ctx) if multi is None else rounds_privacy(
            self.pipeline, ctx, multi.total, len(multi.participated), p.participation)
        if priv is not None:
            stats["privacy"] = priv
        stats["client_seconds"] = round(time.perf_counter() - t0, 4)
        self._update = Update(
            tensors=sent,
            kind=kind,
            protocol=p.name,
            lr=p.lr if p.name == "fedavg" else None,
            local_steps=steps if p.name == "fedavg" else 1,
            epochs=p.epochs if p.name == "fedavg" else 1,
            local_batch_size=p.local_batch_size if p.name == "fedavg" else None,
            batch_size=n,
            num_examples=n,
            labels=self.labels.clone() if p.share_labels and self.data.labels_known else None,  # unlabelled: none to share
            obfuscation=self.pipeline.describe(),
            stats=stats,
            buffers=uploaded_buffers,
        )
        if multi is not None:
            self._update = wrap_rounds(self._update, multi)
        return self._update

    def server_view(self) -> ServerView:
        """The attacker's knowledge: the model it sent (state before the round), data shape, batch size."""
        d = self.config.data
        return ServerView(
            model_name=self.config.model.name,
            model_kwargs=dict(self.model_kwargs),
            global_state={k: v.detach().clone() for k, v in self.model.state_dict().items()},
            image_size=d.size,
            channels=int(self.images.shape[1]),
            num_classes=self.config.model.num_classes,
            batch_size=int(self.images.shape[0]),
            model_factory=self.sent.model_factory,
            extra=dict(self.sent.extra),
        )


def update_stats(raw: dict, sent: dict, bits: float) -> dict:
    numel = sum(t.numel() for t in sent.values())
    raw_norm = torch.sqrt(sum((t.double() ** 2).sum() for t in raw.values())).item()
    sent_norm = torch.sqrt(sum((t.double() ** 2).sum() for t in sent.values())).item()
    nnz = sum(int((t != 0).sum()) for t in sent.values())
    err = torch.sqrt(sum(((sent[k].double() - raw[k].double()) ** 2).sum() for k in raw)).item()
    return {
        "num_parameters": numel,
        "raw_norm": raw_norm,
        "sent_norm": sent_norm,
        "relative_error": err / (raw_norm + 1e-30),
        "nonzero_fraction": nnz / max(1, numel),
        "bits": bits,
        "bits_per_parameter": bits / max(1, numel),
        "per_tensor_norm": {k: float(t.double().norm()) for k, t in sent.items()},
    }
