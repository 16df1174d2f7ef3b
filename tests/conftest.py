"""Shared fixtures.

``SHARED`` is the machine-wide data folder next to the checkout (``<repo>/../shared``); tests that need the
ImageNet validation sample skip when it is absent.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The test machine has 2 CPU cores shared with other jobs: intra-op thread pools only add spin-waiting
# under contention, and every test uses small tensors, so run single-threaded.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGENET_SAMPLE = SHARED / "data" / "imagenet-val-sample"


@pytest.fixture
def imagenet_sample() -> Path:
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"shared ImageNet sample not found at {IMAGENET_SAMPLE}")
    return IMAGENET_SAMPLE


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def attack_cfg(monkeypatch) -> dict:
    """An ``attack:`` section that passes config validation.

    Config validation resolves ``attack.name`` (default ``rog``). When the attack engine has registered
    ``rog`` this is just ``{"name": "rog"}``; otherwise a no-op attack is registered for the duration of
    the test only, so config/Case tests do not depend on the engine being present.
    """
    from fedleak.attacks import ATTACKS

    if "rog" in ATTACKS:
        return {"name": "rog"}
    name = "test-noop"

    def noop(view, update, *, callback=None):  # pragma: no cover - never run
        raise AssertionError("test stub attack must not run")

    monkeypatch.setitem(ATTACKS._items, name, noop)
    monkeypatch.setitem(ATTACKS._docs, name, "test stub")
    return {"name": name}


@pytest.fixture
def base_config(attack_cfg) -> dict:
    """A small, fast run config: builtin photos at 16x16, LeNet with 1000 classes (the builtin labels are ImageNet indices)."""
    return {
        "data": {"source": "builtin", "size": 16, "batch_size": 2},
        "model": {"name": "lenet", "num_classes": 1000},
        "attack": dict(attack_cfg),
    }


#: a registered test attack that returns grey images at once (for tests of the run machinery, not of attacks)
GREY_ATTACK = "test-grey"


def _register_grey():
    from fedleak.attacks import ATTACKS, Reconstruction

    if GREY_ATTACK not in ATTACKS:

        from fedleak.options import NoOptions

        @ATTACKS.register(GREY_ATTACK, doc="test attack: grey images (fast)", options=NoOptions)
        def _grey(view, update, options, callback=None):
            return Reconstruction(images=torch.full((view.batch_size, *view.image_shape), 0.5), loss_history=[1.0])


_register_grey()


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after a test that runs the CLI (which may set ``threads``)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
