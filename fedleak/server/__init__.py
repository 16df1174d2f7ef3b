"""The server side: what a (possibly malicious) server sends and knows.

Importing this package registers the scenarios (``honest`` in :mod:`fedleak.server.scenarios`,
``malicious-imprint`` in :mod:`fedleak.server.imprint`).
"""
from fedleak.server import imprint, scenarios  # noqa: F401  (registration)
from fedleak.server.scenarios import SCENARIOS, SentModel, ServerContext, build_scenario, check_server_config
from fedleak.server.view import ServerView

__all__ = ["SCENARIOS", "SentModel", "ServerContext", "ServerView", "build_scenario", "check_server_config"]
