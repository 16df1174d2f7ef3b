"""Name -> factory registries (models, obfuscations, attacks, enhancers, scenarios, losses, priors, ...).

Unknown names raise :class:`ConfigError` listing the valid choices. An entry may declare a typed options model
(:class:`~fedleak.options.Options`) and its :class:`~fedleak.options.Capabilities`; :meth:`Registry.options`
validates a raw mapping against it. Entries without a model have their keyword arguments checked against the
factory's signature, so that a typo in a config key is reported, not silently ignored.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

from fedleak.errors import ConfigError
from fedleak.options import Capabilities, Options, validate_options

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}
        self._options: dict[str, type[Options]] = {}
        self._caps: dict[str, Capabilities] = {}

    def register(self, name: str, doc: str | None = None, *, options: type[Options] | None = None,
                 caps: Capabilities | None = None):
        """Decorator registering ``obj`` under ``name``, with its options model and capabilities if given."""
        def deco(obj):
            key = name.lower()
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[key] = obj
            if options is not None:
                self._options[key] = options
            self._caps[key] = caps or Capabilities()
            text = doc or (inspect.getdoc(obj) or "").strip().splitlines()
            self._docs[key] = text if isinstance(text, str) else (text[0] if text else "")
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def doc(self, name: str) -> str:
        return self._docs[self.resolve(name)]

    def resolve(self, name: str) -> str:
        if not isinstance(name, str):
            raise ConfigError(f"{self.kind} name must be a string, got {type(name).__name__}: {name!r}")
        key = name.lower().replace("_", "-")
        if key not in self._items:
            key2 = name.lower()
            if key2 in self._items:
                return key2
            near = difflib.get_close_matches(key, self._items, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}"
            )
        return key

    def options_model(self, name: str) -> type[Options] | None:
        """The typed options model declared for ``name`` (None if the entry declared none)."""
        return self._options.get(self.resolve(name))

    def caps(self, name: str) -> Capabilities:
        return self._caps[self.resolve(name)]

    def options(self, name: str, raw: dict | None = None) -> Options:
        """Validate ``raw`` against the options model of ``name`` (one-line ConfigError on any problem)."""
        key = self.resolve(name)
        model = self._options.get(key)
        if model is None:
            raise ConfigError(f"{self.kind} {key!r} declares no options model")
        return validate_options(model, raw or {}, f"{self.kind} {key!r}")

    def get(self, name: str) -> Callable[..., T]:
        return self._items[self.resolve(name)]

    def build(self, name: str, **kwargs: Any) -> T:
        key = self.resolve(name)
        factory = self._items[key]
        check_kwargs(factory, kwargs, f"{self.kind} {key!r}")
        try:
            return factory(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.kind} {key!r}: {e}") from e

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
            return True
        except ConfigError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def check_kwargs(factory: Callable, kwargs: dict, what: str) -> None:
    """Raise ConfigError if ``kwargs`` has keys that ``factory`` does not accept."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = [p for p in sig.parameters.values() if p.name != "self"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    bad = [k for k in kwargs if k not in valid]
    if bad:
        raise ConfigError(
            f"{what}: unknown option(s) {', '.join(map(repr, bad))}; valid: {', '.join(valid) or '(none)'}"
        )
