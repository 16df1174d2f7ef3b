"""Labelled public data that installs with pip, for training victims offline.

``digits``: scikit-learn's 1797 handwritten digits (8x8, 10 classes; an FEMNIST-like task, one of the LDP
paper's datasets), scaled to [0, 1], replicated to RGB and resized bilinearly to ``size`` x ``size``. A fixed,
seeded split keeps 20 % of the images for testing. Nothing here is one of the evaluation photos in
``../shared`` (those are never trained on).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.client.data import ImageSet
from fedleak.errors import ConfigError, DataError

DATASETS = ("digits",)
#: the split's seed and test fraction (fixed, so every card names the same split)
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def split_indices(n: int, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into (train, test)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def load_public(name: str, split: str = "train", size: int = 32) -> ImageSet:
    """The ``split`` (``train``, ``test`` or ``all``) of public data set ``name`` as an :class:`ImageSet`."""
    if name not in DATASETS:
        raise ConfigError(f"unknown public data set {name!r}; valid: {', '.join(DATASETS)}")
    if split not in ("train", "test", "all"):
        raise ConfigError(f"split must be train, test or all, got {split!r}")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 256:
        raise ConfigError(f"size must be an integer between 8 and 256, got {size!r}")
    images, labels = _digits_arrays()
    train, test = split_indices(len(labels))
    idx = {"train": train, "test": test, "all": np.arange(len(labels))}[split]
    x = torch.from_numpy(images[idx]).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return ImageSet(x.repeat(1, 3, 1, 1).contiguous(), torch.from_numpy(labels[idx]),
                    [f"digits-{split}-{int(i)}" for i in idx])
