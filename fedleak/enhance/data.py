"""Training data for the learned ROG enhancer: offline photos, random crops, and the cache of real attack outputs.

Photo sources (``--data`` of ``fedleak train-enhancer``, comma-separated; default ``skimage,sklearn``):

* ``skimage`` -- the natural photos bundled in scikit-image's wheel that are **not** evaluation photos
  (:data:`SKIMAGE_PHOTOS`: the ``builtin`` set that ``data.source: builtin`` and the README demo evaluate on is
  left out, and so is ``motorcycle_right.png``, the other view of the stereo pair whose left view is a builtin
  photo). Grey ones are used as grey RGB and tinted by the colour jitter. Synthetic test patterns
  (chessboards, logo, phantom, colour chart) and the binary horse silhouette are left out.
* ``sklearn`` -- the two photos in scikit-learn's wheel (``china.jpg``, ``flower.jpg``), if installed.
* a folder -- every image file in it (recursively).

``builtin`` is refused: it names the evaluation photos. The evaluation images (the builtin set, the shared
ImageNet validation sample, or anything a benchmark scores) are never training photos: :func:`photo_paths`
refuses a folder named ``imagenet-val-sample`` and drops (with a :class:`DataError`) any file whose content
hash is that of a builtin evaluation photo (:func:`eval_hashes`), whatever its name.

:func:`load_pairs` reads the cache of (attack output, clean crop) pairs that
:func:`fedleak.experiment.enhancer_pairs.make_pairs` writes (it simulates clients and runs the real ``rog``
attack, so it lives in the experiment layer, above this one).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fedleak.errors import DataError

#: scikit-image photos used for training: none of them is a ``builtin`` evaluation photo
#: (:data:`fedleak.client.data.BUILTIN_PHOTOS`) or a view of one (``motorcycle_right.png``)
SKIMAGE_PHOTOS = [
    "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png", "cell.png",
    "clock_motion.png", "page.png", "text.png", "microaneurysms.png",
]

#: scikit-image files that are evaluation photos or views of them: never training photos
EVAL_RELATED = ("motorcycle_right.png",)

DEFAULT_DATA = "skimage,sklearn"

FORBIDDEN_FOLDER_NAMES = {"imagenet-val-sample"}


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    from fedleak.client.data import to_rgb_array

    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_array(img, str(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read training image ({e})") from None


def eval_hashes() -> dict[str, str]:
    """SHA-256 of each builtin evaluation photo (and of :data:`EVAL_RELATED`) -> its file name."""
    from fedleak.client.data import BUILTIN_PHOTOS, builtin_dir
    from fedleak.io import sha256_file

    root = builtin_dir()
    names = [f for f, _ in BUILTIN_PHOTOS] + list(EVAL_RELATED)
    return {sha256_file(root / f): f for f in names if (root / f).is_file()}


def _source(part: str) -> list[Path]:
    from fedleak.client.data import IMAGE_EXTS, builtin_dir

    if part == "builtin":
        raise DataError("--data builtin: those are the demo's evaluation photos; use skimage (scikit-image "
                        "photos that are not in the evaluation set), sklearn or a folder")
    if part == "skimage":
        root = builtin_dir()
        return [root / f for f in SKIMAGE_PHOTOS if (root / f).is_file()]
    if part == "sklearn":
        try:
            import sklearn.datasets as skd
        except ImportError:
            raise DataError("--data sklearn needs scikit-learn (pip install scikit-learn)") from None
        return sorted((Path(skd.__file__).parent / "images").glob("*.jpg"))
    root = Path(part).expanduser()
    if not root.is_dir():
        raise DataError(f"training data folder {part!r} does not exist (use skimage, sklearn or a folder)")
    if root.resolve().name in FORBIDDEN_FOLDER_NAMES or any(
            p.name in FORBIDDEN_FOLDER_NAMES for p in root.resolve().parents):
        raise DataError(f"{part!r} is an evaluation image folder; never train the enhancer on it")
    return sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTS)


def photo_paths(data: str) -> list[Path]:
    """The training photo files for a ``--data`` spec (sorted, deterministic); never an evaluation photo."""
    from fedleak.io import sha256_file

    out: list[Path] = []
    for part in [p.strip() for p in str(data).split(",") if p.strip()]:
        out += _source(part)
    if not out:
        raise DataError(f"no training photos found for --data {data!r}")
    bad = eval_hashes()
    for f in out:
        if sha256_file(f) in bad:
            raise DataError(f"{f}: this is the evaluation photo {bad[sha256_file(f)]}; never train the enhancer on it")
    return out


def load_photos(data: str, min_side: int = 96) -> tuple[list[np.ndarray], list[str]]:
    paths = photo_paths(data)
    photos, names = [], []
    for p in paths:
        a = _read(p)
        if min(a.shape[:2]) >= min_side:
            photos.append(a)
            names.append(p.name)
    if not photos:
        raise DataError(f"no training photo of at least {min_side}x{min_side} pixels in {data!r}")
    return photos, names


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


def random_crop(photos: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """One augmented training image (size, size, 3) in [0, 1]: a random crop covering 25-100 % of the shorter
    side with an aspect ratio in [3/4, 4/3] (the evaluation stretches whole photos to a square), resized
    bicubically, randomly flipped / rotated by 90 degrees, with colour jitter (brightness, contrast,
    saturation, a random tint for grey photos, channel permutation)."""
    a = photos[int(rng.integers(len(photos)))]
    h, w = a.shape[:2]
    side = min(h, w) * math.sqrt(rng.uniform(0.0625, 1.0))
    ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch, cw = int(min(h, max(16, side * math.sqrt(ar)))), int(min(w, max(16, side / math.sqrt(ar))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    c = _resize(a[y:y + ch, x:x + cw], size)
    if rng.random() < 0.5:
        c = c[:, ::-1]
    if rng.random() < 0.25:
        c = np.rot90(c, int(rng.integers(1, 4)))
    grey = np.allclose(c[..., 0], c[..., 1]) and np.allclose(c[..., 1], c[..., 2])
    if grey:
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        c = c * tint / tint.max()
    else:
        c = c[..., rng.permutation(3)] if rng.random() < 0.3 else c
        lum = c.mean(axis=2, keepdims=True)
        c = lum + (c - lum) * rng.uniform(0.6, 1.4)
    mean = c.mean()
    c = (c - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(np.clip(c, 0, 1), dtype=np.float32)


def crops_tensor(photos, n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(np.stack([random_crop(photos, size, rng) for _ in range(n)])).permute(0, 3, 1, 2).contiguous()


def load_pairs(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"pair cache {str(p)!r} not found")
    try:
        blob = torch.load(p, weights_only=True)
        assert isinstance(blob, dict) and "batches" in blob
    except Exception as e:
        raise DataError(f"{str(p)!r} is not a fedleak enhancer pair cache ({type(e).__name__})") from None
    return blob
