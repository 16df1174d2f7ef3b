"""Which arithmetic the simulated client update runs in (the engine option ``precision``)."""
from __future__ import annotations

from typing import Optional

import torch

#: smallest batch for which ``precision: auto`` picks bfloat16 (below it bfloat16 measured no faster)
AUTO_BF16_MIN_BATCH = 4


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (oneDNN: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older torch without the query: treat as not native
        return False


def cuda_autocast_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of a GPU: bfloat16 where it computes it (Ampere and later), else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_precision(cfg, batch_size: int, device: Optional[torch.device] = None) -> Optional[torch.dtype]:
    """The autocast dtype of the simulated update, or None for full precision.

    On the CPU, ``auto`` picks bfloat16 only where benchmarks/speed.py and benchmarks/quality.py showed it pays and
    quality holds (docs/results.md): Adam, float32 latent, a batch of at least ``AUTO_BF16_MIN_BATCH`` images, and
    a CPU with native bfloat16; otherwise float32. On a CUDA ``device``, ``auto`` picks the GPU's autocast dtype
    (:func:`cuda_autocast_dtype`) for Adam with a float32 latent. L-BFGS (DLG) and float64 runs always stay in
    full precision.
    """
    if cfg.precision == "float32" or cfg.dtype != "float32":
        return None
    if cfg.precision == "bfloat16":
        return torch.bfloat16
    if cfg.optimizer != "adam":
        return None
    if device is not None and device.type == "cuda":
        return cuda_autocast_dtype(device)
    if batch_size >= AUTO_BF16_MIN_BATCH and native_bfloat16():
        return torch.bfloat16
    return None
