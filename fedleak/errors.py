"""Exceptions that fedleak raises for bad input. The CLI prints them as one line, never a traceback."""


class FedleakError(Exception):
    """Base class: a problem the user can fix (config, data, files)."""


class ConfigError(FedleakError, ValueError):
    """A configuration value or name is invalid."""


class DataError(FedleakError):
    """Images or labels could not be loaded."""


class NumericalError(FedleakError, FloatingPointError):
    """NaN or Inf appeared in an update or during optimisation."""
