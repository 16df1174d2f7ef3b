"""Server scenarios: what the (possibly malicious) server does to the model before sending it.

A scenario is registered in :data:`SCENARIOS`; ``SCENARIOS.build(name, **options).apply(case)`` may
replace ``case.model`` (e.g. plant an inference structure), set ``case.model_factory`` (how the server
rebuilds the model it sent) and add entries to ``case.server_extra`` (server-side knowledge handed to
attacks through ``ServerView.extra``).
"""
from __future__ import annotations

from fedleak.errors import ConfigError
from fedleak.registry import Registry, check_kwargs

SCENARIOS: Registry = Registry("server scenario")


@SCENARIOS.register("honest", doc="the server sends the model unchanged (honest-but-curious)")
class Honest:
    def apply(self, case) -> None:
        return None


def check_server_config(cfg: dict) -> None:
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ConfigError("server must be a mapping with a 'name'")
    check_kwargs(SCENARIOS.get(cfg["name"]), {k: v for k, v in cfg.items() if k != "name"},
                 f"server scenario {SCENARIOS.resolve(cfg['name'])!r}")


def apply_scenario(case, cfg: dict) -> None:
    scenario = SCENARIOS.build(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"})
    scenario.apply(case)


from fedleak.server import imprint  # noqa: E402,F401  (registers malicious-imprint)
