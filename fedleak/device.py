"""Where tensors are computed: the ``device: auto | cpu | cuda`` setting, resolved once.

:func:`resolve_device` turns the setting into a :class:`torch.device` (``auto``: CUDA when
``torch.cuda.is_available()``, else the CPU; ``cuda`` where there is no CUDA is a one-line
:class:`~fedleak.errors.ConfigError`). The runner resolves it once and runs the client and the attack stages
inside :func:`using_device`; code below reads it with :func:`current_device`, which is the CPU when nothing set
it, so library calls (``fedleak.attack``, the tests) stay on the CPU unless asked otherwise.

Random numbers are always drawn from CPU generators and moved, so a seed fixes the same draws on every device.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Union

import torch

from fedleak.errors import ConfigError

#: the values the ``device`` setting accepts (``cuda:N`` picks one GPU)
DEVICE_CHOICES = ("auto", "cpu", "cuda")

_CURRENT: contextvars.ContextVar[torch.device] = contextvars.ContextVar("fedleak_device",
                                                                        default=torch.device("cpu"))


def resolve_device(spec: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (or a :class:`torch.device`) -> the device to compute on."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = str(spec if spec is not None else "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {s!r} requested but CUDA is not available here "
                              f"(torch {torch.__version__}); use device: auto or cpu")
        dev = torch.device(s)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {s!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    raise ConfigError(f"unknown device {spec!r}; valid: {', '.join(DEVICE_CHOICES)} (or cuda:N)")


def current_device() -> torch.device:
    """The device the running stage computes on (the CPU unless :func:`using_device` set another)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using_device(device: Union[str, torch.device, None]) -> Iterator[torch.device]:
    """Run the enclosed code on ``device`` (resolved with :func:`resolve_device`)."""
    dev = resolve_device(device)
    token = _CURRENT.set(dev)
    try:
        yield dev
    finally:
        _CURRENT.reset(token)


def is_cuda(device: Union[str, torch.device, None]) -> bool:
    """Whether ``device`` (a setting or a resolved device) means a GPU."""
    return resolve_device(device).type == "cuda"
