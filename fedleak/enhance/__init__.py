"""The enhancement stage: server-side post-processing of a reconstruction (see :mod:`.stage`).

Enhancers are chosen by name from :data:`ENHANCERS` (each an :class:`Enhancer` with a typed options model);
:func:`enhance` and :func:`check_config` take the ``enhancer:`` config section and dispatch through it.
"""
from fedleak.enhance.stage import ENHANCERS, Enhancer, check_config, enhance  # noqa: F401

__all__ = ["ENHANCERS", "Enhancer", "check_config", "enhance"]
