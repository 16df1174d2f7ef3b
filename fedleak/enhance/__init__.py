"""The enhancement stage: server-side post-processing of a reconstruction (see :mod:`.stage`)."""
from fedleak.enhance.stage import check_config, enhance  # noqa: F401
