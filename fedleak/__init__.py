"""fedleak: audit the privacy of federated learning by attacking it.

>>> import fedleak
>>> case = fedleak.Case({"data": {"size": 32, "batch_size": 2}, "model": {"name": "lenet"}})
>>> update = case.client_update()                          # what the client uploads
>>> rec = fedleak.attack("rog", case.server_view(), update)  # the server's reconstruction
>>> fedleak.evaluate(case.images, rec)["mean"]              # judged against the truth, afterwards

``fedleak.run(config)`` does all of it and writes a run folder (see :mod:`fedleak.experiment.runner`).
Heavy modules (torch models, attacks, metrics, plotting) are imported on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedleak.version import __version__

# public name -> (module, attribute)
_LAZY = {
    "Case": (".experiment.case", "Case"),
    "attack": (".attacks", "attack"),
    "Reconstruction": (".attacks", "Reconstruction"),
    "evaluate": (".metrics", "evaluate"),
    "load_config": (".config", "load_config"),
    "RunConfig": (".config", "RunConfig"),
    "run": (".experiment.runner", "run"),
    "Update": (".client.update", "Update"),
    "ServerView": (".server.view", "ServerView"),
    "FedleakError": (".errors", "FedleakError"),
    "ConfigError": (".errors", "ConfigError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        mod, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'fedleak' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(mod, __name__), attr)
    globals()[name] = value  # cache: later lookups bypass __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from fedleak.attacks import Reconstruction, attack
    from fedleak.experiment.case import Case
    from fedleak.config import RunConfig, load_config
    from fedleak.errors import ConfigError, FedleakError
    from fedleak.metrics import evaluate
    from fedleak.experiment.runner import run
    from fedleak.client.update import Update
    from fedleak.server.view import ServerView
