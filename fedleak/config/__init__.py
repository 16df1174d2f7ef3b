"""Typed run configuration (see :mod:`fedleak.config.schema`)."""
from fedleak.config.schema import *  # noqa: F401,F403
from fedleak.config.schema import RunConfig, load_config, parse_pipeline, parse_value  # noqa: F401
