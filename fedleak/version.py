"""fedleak's version: the installed distribution's, or the source tree's when it is not installed."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("fedleak")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"
