"""The enhancement stage: server-side post-processing of a reconstruction (see :mod:`.stage`).

Enhancers are chosen by name from :data:`ENHANCERS`; :func:`enhance` and :func:`check_config` take the
``enhancer:`` config section.
"""
from fedleak.enhance.stage import check_config, enhance  # noqa: F401
from fedleak.registry import Registry

ENHANCERS: Registry = Registry("enhancer")
for _name, _doc in (("none", "no post-processing (default)"),
                    ("classical", "weight-free: recover ROG's x4 latent, denoise (TV or NLM), upsample again"),
                    ("learned", "ROG's learned post-processing network (denoise + x4 upsampling); weights: FILE")):
    ENHANCERS.register(_name, doc=_doc)(enhance)
