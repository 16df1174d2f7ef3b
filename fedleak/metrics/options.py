"""The ``metrics:`` config section as a typed model, validated once at the edge (``config.validate``, the
Flower audit) and handed to :func:`fedleak.metrics.evaluate` as keyword arguments."""
from __future__ import annotations

from typing import Optional, Union

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from fedleak.metrics.scores import PSNR_CAP
from fedleak.options import Options, validate_options


class MetricOptions(Options):
    """``psnr_cap``: PSNR reported for identical images (dB, default 100; null = inf); ``match``: pair
    reconstructions with true images by optimal assignment (default true)."""

    psnr_cap: Optional[Union[StrictInt, StrictFloat]] = Field(PSNR_CAP, gt=0)
    match: StrictBool = True

    def evaluate_kwargs(self) -> dict:
        """The keyword arguments of :func:`fedleak.metrics.evaluate` these options select."""
        return {"psnr_cap": None if self.psnr_cap is None else float(self.psnr_cap), "match_order": self.match}


def metric_options(raw: Optional[dict]) -> MetricOptions:
    """Validate a ``metrics:`` section (None: all defaults); one-line ConfigError on any problem."""
    return validate_options(MetricOptions, raw, "metrics")
