"""Weights for any model: a ``state_dict`` from a safetensors file or a ``torch.save`` file.

``torch.save`` files are read with ``weights_only=True`` (:func:`fedleak.io.torch_load_safely`): a file that
carries pickled Python objects is refused, never executed. Every mismatch with the model (missing keys,
unexpected keys, shapes) is one line that names the tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedleak.errors import DataError
from fedleak.io import path_problem, sha256_file, torch_load_safely

#: suffixes read as safetensors; anything else is read as a ``torch.save`` file
SAFETENSORS_SUFFIXES = (".safetensors", ".st")


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (safetensors, or a ``torch.save`` of a ``state_dict``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"weights file {str(p)!r} {path_problem(p, 'not found')}")
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors(p)
    state = torch_load_safely(p, f"weights file {str(p)!r}", DataError)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps its state_dict
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise DataError(f"weights file {str(p)!r} is not a state_dict (a mapping of parameter names to tensors)")
    return state


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"weights file {str(p)!r} is not a readable safetensors file ({e})") from None


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading into ``model``: missing keys, unexpected keys, shape mismatches."""
    want = model.state_dict()
    problems = []
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})"
              for k, v in want.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    for what, items in (("missing", missing), ("unexpected", extra), ("shape mismatch", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{what}: {', '.join(items[:3])}{more}")
    return problems


def load_weights(model: nn.Module, path: str | Path, model_name: str = "the model") -> str:
    """Load the weights file into ``model`` (in place) and return the file's SHA-256."""
    state = read_state(path)
    problems = state_mismatch(model, state)
    if problems:
        raise DataError(f"weights file {str(path)!r} does not fit {model_name}: {'; '.join(problems)}")
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DataError(f"weights file {str(path)!r} has NaN or Inf in {bad[0]!r}")
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()})
    return sha256_file(Path(path).expanduser())


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``model``'s state_dict as safetensors (atomically) and return the file's SHA-256."""
    from safetensors.torch import save_file

    from fedleak.io import atomic_path

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return sha256_file(Path(path))
