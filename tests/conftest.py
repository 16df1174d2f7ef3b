"""Shared fixtures.

``SHARED`` is the machine-wide data folder next to the checkout (``<repo>/../shared``); tests that need the
ImageNet validation sample skip when it is absent.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedleak.options import Options

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
def attack_cfg() -> dict:
    """An ``attack:`` section that passes config validation (the engine's ``rog`` preset)."""
    return {"name": "rog"}


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


class SeededFakeOptions(Options):
    """Options of the tests' fast fake attacks: how many iterations to report and the image seed."""

    iterations: int = 3
    seed: int = 0


def _register_grey():
    from fedleak.attacks import ATTACKS, Reconstruction

    if GREY_ATTACK not in ATTACKS:

        from fedleak.options import NoOptions

        @ATTACKS.register(GREY_ATTACK, doc="test attack: grey images (fast)", options=NoOptions)
        def _grey(view, update, options, callback=None):
            return Reconstruction(images=torch.full((view.batch_size, *view.image_shape), 0.5), loss_history=[1.0])


_register_grey()


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (the machine is shared: tiny tensors on oversubscribed cores are slow),
    restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after a test that runs the CLI (which may set ``threads``)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
