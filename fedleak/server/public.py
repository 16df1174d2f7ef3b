"""Public data a server may legitimately hold: random crops of photos that are not the client's.

The bundled scikit-image photos (``auto``) minus the ``builtin`` evaluation photos, or every image in a folder.
Nothing here sees the client's data.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from fedleak.errors import ConfigError

#: photos bundled with scikit-image that are *not* in the ``builtin`` evaluation set (data.BUILTIN_PHOTOS)
PUBLIC_EXTRA = [
    "camera.png", "coins.png", "moon.png", "page.png", "text.png", "brick.png", "grass.png", "gravel.png",
    "cell.png", "clock_motion.png", "motorcycle_right.png", "horse.png", "logo.png", "color.png",
    "microaneurysms.png", "phantom.png",
]


def _load_public_photo(path: Path) -> np.ndarray:
    from PIL import Image

    from fedleak.client.data import to_rgb_array

    with Image.open(path) as img:
        img.load()
        return to_rgb_array(img, str(path))


def public_files(public: str = "auto", exclude_builtin: bool = True) -> list[Path]:
    """Public photos: bundled scikit-image photos (``auto``), minus the ``builtin`` evaluation photos when
    ``exclude_builtin``; or every image file in a folder."""
    from fedleak.client.data import BUILTIN_PHOTOS, IMAGE_EXTS, builtin_dir

    if public == "auto":
        root = builtin_dir()
        names = list(PUBLIC_EXTRA)
        if not exclude_builtin:
            names += [f for f, _ in BUILTIN_PHOTOS]
        files = [root / n for n in names if (root / n).is_file()]
    else:
        root = Path(public).expanduser()
        if not root.is_dir():
            raise ConfigError(f"public data folder {str(root)!r} does not exist")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ConfigError(f"no public images found for public={public!r}")
    return files


def public_crops(size: int, count: int, seed: int = 0, public: str = "auto",
                 exclude_builtin: bool = True, min_frac: float = 0.3) -> torch.Tensor:
    """``count`` random square crops (side 30..100 % of the shorter side, random flips) of the public
    photos, resized to ``size`` -> (count, 3, size, size) in [0, 1]. Deterministic in its arguments (cached)."""
    return _public_crops(int(size), int(count), int(seed), str(public), bool(exclude_builtin), float(min_frac)).clone()


@functools.lru_cache(maxsize=8)
def _public_crops(size: int, count: int, seed: int, public: str, exclude_builtin: bool, min_frac: float
                  ) -> torch.Tensor:
    from PIL import Image

    files = public_files(public, exclude_builtin)
    photos = [_load_public_photo(f) for f in files]
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        side = int(rng.uniform(min_frac, 1.0) * min(h, w))
        side = max(1, side)
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = arr[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.clip(crop * 255 + 0.5, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        out[i] = np.asarray(img, np.float32) / 255.0
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
