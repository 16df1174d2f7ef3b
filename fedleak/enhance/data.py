"""Training data for the learned ROG enhancer: offline photos, random crops, and real attack outputs.

Photo sources (``--data`` of ``fedleak train-enhancer``, comma-separated):

* ``builtin`` -- the natural photos bundled in scikit-image's wheel (:data:`SKIMAGE_PHOTOS`; grey ones are
  used as grey RGB and tinted by the colour jitter). Synthetic test patterns (chessboards, logo, phantom,
  colour chart) are left out.
* ``sklearn`` -- the two photos in scikit-learn's wheel (``china.jpg``, ``flower.jpg``), if installed.
* a folder -- every image file in it (recursively).

The evaluation images (the shared ImageNet validation sample, or anything a benchmark scores) must never be
given here; :func:`load_photos` refuses a folder named ``imagenet-val-sample``.

:func:`make_pairs` runs the real ``rog`` attack (``fedleak.attack``) on batches of random training crops
under a mix of obfuscations and stores (attack output, clean crop) pairs -- the degradation the enhancer
has to undo, measured rather than guessed.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from fedleak.errors import DataError

SKIMAGE_PHOTOS = [
    # colour photos
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
    # grey photos / textures
    "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png", "cell.png",
    "clock_motion.png", "page.png", "text.png",
]

#: obfuscations used for training pairs; the same settings as benchmarks/enhancer.py
OBFUSCATIONS: dict[str, dict] = {
    "none": {"obfuscation": []},
    "qsgd16": {"obfuscation": [{"name": "qsgd", "levels": 16}]},
    "qsgd4": {"obfuscation": [{"name": "qsgd", "levels": 4}]},
    "topk99": {"obfuscation": [{"name": "topk", "sparsity": 0.99}]},
    "sign": {"obfuscation": [{"name": "sign"}], "attack": {"iterations": 100}},
    "fedavg5": {"obfuscation": [], "protocol": {"name": "fedavg", "local_steps": 5, "lr": 0.003}},
}
#: default pair batches: (obfuscation, batch size); sign (300 iterations) and FedAvg (5 unrolled steps) are
#: several times slower per image, so they get batches of 8 (the benchmark has a batch of 8 too)
DEFAULT_PAIR_PLAN: list[tuple[str, int]] = [
    ("none", 16), ("qsgd4", 16), ("sign", 8), ("topk99", 16), ("fedavg5", 8), ("qsgd16", 16),
]

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


def photo_paths(data: str) -> list[Path]:
    """The training photo files for a ``--data`` spec (sorted, deterministic)."""
    from fedleak.client.data import IMAGE_EXTS, builtin_dir

    out: list[Path] = []
    for part in [p.strip() for p in str(data).split(",") if p.strip()]:
        if part == "builtin":
            root = builtin_dir()
            out += [root / f for f in SKIMAGE_PHOTOS if (root / f).is_file()]
        elif part == "sklearn":
            try:
                import sklearn.datasets as skd
            except ImportError:
                raise DataError("--data sklearn needs scikit-learn (pip install scikit-learn)") from None
            root = Path(skd.__file__).parent / "images"
            out += sorted(root.glob("*.jpg"))
        else:
            root = Path(part).expanduser()
            if not root.is_dir():
                raise DataError(f"training data folder {part!r} does not exist (use builtin, sklearn or a folder)")
            if root.resolve().name in FORBIDDEN_FOLDER_NAMES or any(
                    p.name in FORBIDDEN_FOLDER_NAMES for p in root.resolve().parents):
                raise DataError(f"{part!r} is an evaluation image folder; never train the enhancer on it")
            out += sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
    if not out:
        raise DataError(f"no training photos found for --data {data!r}")
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


def pair_case_config(obf: str, batch: int, seed: int, size: int = 128) -> dict:
    s = OBFUSCATIONS[obf]
    return {
        "seed": seed,
        "data": {"source": "builtin", "size": size, "resize": "stretch", "batch_size": batch},
        "model": {"name": "lenet", "num_classes": 1000},
        "protocol": s.get("protocol", {"name": "fedsgd", "lr": 0.003}),
        "obfuscation": s["obfuscation"],
        "attack": {"name": "rog", "seed": seed, **s.get("attack", {})},
    }


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


def make_pairs(data: str, path: str | Path, plan: Optional[list[tuple[str, int]]] = None, seed: int = 0,
               size: int = 128, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Run the ``rog`` attack on random training crops and append (attack output, crop) batches to ``path``.

    ``plan`` lists (obfuscation, batch size) per batch. Batch ``i`` uses crops drawn with seed
    ``(seed, i)``, random labels and a LeNet initialised with seed ``1000 + seed * 100 + i`` (never the
    evaluation's model seed 0). Already cached batches (same index, obfuscation and size) are kept, so an
    interrupted run resumes. Returns the cache dict ``{"batches": [{"obf", "inputs", "targets", ...}]}``.
    """
    import fedleak
    from fedleak.experiment.case import Case
    from fedleak.client.data import ImageSet

    plan = list(plan or DEFAULT_PAIR_PLAN)
    path = Path(path)
    blob = load_pairs(path) if path.is_file() else {"batches": [], "data": data, "seed": seed}
    photos, names = load_photos(data)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan), desc="attack pairs", unit="batch")
    for i, (obf, n) in enumerate(plan):
        have = blob["batches"][i] if i < len(blob["batches"]) else None
        if have is not None and have["obf"] == obf and have["inputs"].shape[0] == n and have["inputs"].shape[-1] == size:
            if bar is not None:
                bar.update(1)
            continue
        rng = np.random.default_rng([seed, i])
        x = crops_tensor(photos, n, size, rng)
        labels = torch.from_numpy(rng.choice(1000, size=n, replace=False)).long()
        cfg = pair_case_config(obf, n, 1000 + seed * 100 + i, size)
        case = Case(cfg, images=ImageSet(x, labels, [f"crop{j}" for j in range(n)]))
        update = case.client_update()
        t0 = time.perf_counter()
        rec = fedleak.attack(cfg["attack"], case.server_view(), update)
        dt = time.perf_counter() - t0
        m = fedleak.evaluate(x, rec)
        perm = m["permutation"]
        entry = {"obf": obf, "inputs": rec.images.detach()[perm].to(torch.float16).contiguous(),
                 "targets": x.to(torch.float16).contiguous(), "seconds": dt}
        if i < len(blob["batches"]):
            blob["batches"][i] = entry
        else:
            blob["batches"].append(entry)
        tmp = path.with_suffix(path.suffix + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        tmp.replace(path)
        log(f"pair batch {i} ({obf}, {n} crops): attack {dt:.0f}s, raw PSNR {m['mean']['psnr']:.2f} dB")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    blob["photos"] = names
    return blob
