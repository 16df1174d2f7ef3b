"""Parser of obfuscation strings such as ``"clip(1.0) -> gaussian(sigma=0.01) -> qsgd(16)"``.

Grammar: ``step ('->' step)*``, ``step = name ['(' [arg (',' arg)*] ')']``, ``arg = [key '='] value``. A
positional argument (only the first) binds to the step's first parameter. Unbalanced brackets, an argument
given twice (by name, or positionally and by name), empty arguments and trailing text are refused with a
one-line :class:`~fedleak.errors.ConfigError` that names the column.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

import yaml

from fedleak.errors import ConfigError

_NAME = re.compile(r"\s*([A-Za-z_][\w\-]*)\s*")
_KEY = re.compile(r"\s*([A-Za-z_]\w*)\s*=(?!=)")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _err(text: str, pos: int, msg: str) -> ConfigError:
    return ConfigError(f"obfuscation {text!r}: {msg} at column {pos + 1}")


def parse_scalar(s: str) -> Any:
    """A YAML value, with scientific notation (``1e-3``, which YAML 1.1 reads as a string) as a number."""
    s = s.strip()
    if _NUMBER.fullmatch(s):
        return float(s) if any(c in s for c in ".eE") else int(s)
    return yaml.safe_load(s)


def _value(text: str, i: int) -> int:
    """End index of the value starting at ``i`` (stops at a top-level ',' or ')')."""
    stack: list[str] = []
    quote: Optional[str] = None
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in _PAIRS:
            stack.append(_PAIRS[c])
        elif c in ")]}":
            if not stack:
                if c == ")":
                    return i
                raise _err(text, i, f"unbalanced {c!r}")
            if stack.pop() != c:
                raise _err(text, i, f"mismatched {c!r}")
        elif c == "," and not stack:
            return i
        i += 1
    raise _err(text, i, "unclosed quote" if quote else "unbalanced parentheses: '(' has no ')'")


def _args(text: str, i: int, name: str, first: Callable[[str], str], step: dict) -> int:
    """Parse ``arg, arg)`` from ``i`` into ``step``; return the index after ')'."""
    n = 0
    while True:
        if n == 0 and text[i:].lstrip().startswith(")"):
            return text.index(")", i) + 1
        m = _KEY.match(text, i)
        start = m.end() if m else i
        end = _value(text, start)
        raw = text[start:end]
        if not raw.strip():
            raise _err(text, start, "empty argument")
        try:
            val = parse_scalar(raw)
        except yaml.YAMLError:
            raise _err(text, start, f"bad value {raw.strip()!r}") from None
        if m:
            key = m.group(1)
        elif n == 0:
            key = first(name)
        else:
            raise _err(text, i, "only the first argument may be positional")
        if key in step:
            raise _err(text, i, f"argument {key!r} given twice")
        step[key] = val
        n += 1
        if text[end] == ")":
            return end + 1
        i = end + 1


def parse_pipeline(text: str, first_param: Callable[[str], str]) -> list[dict]:
    """Steps of ``text``; ``first_param(name)`` names the parameter a positional argument binds to."""
    if not isinstance(text, str):
        raise ConfigError(f"obfuscation must be a string, got {type(text).__name__}")
    text = text.replace("→", "->")
    steps: list[dict] = []
    i = 0
    while True:
        m = _NAME.match(text, i)
        if not m:
            if not text.strip() and not steps:
                return []
            raise _err(text, i, "expected a step name")
        name = m.group(1)
        step: dict[str, Any] = {"name": name}
        i = m.end()
        if i < len(text) and text[i] == "(":
            i = _args(text, i + 1, name, first_param, step)
            while i < len(text) and text[i].isspace():
                i += 1
        steps.append(step)
        if i >= len(text):
            return steps
        if not text.startswith("->", i):
            raise _err(text, i, f"unexpected {text[i:i + 10]!r}")
        i += 2
