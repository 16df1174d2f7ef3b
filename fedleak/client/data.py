"""Image loading: folders with ``labels.csv`` (``file,label``) or one sub-folder per class, and a built-in
offline image set (the RGB photos that ship inside scikit-image).

Every loader returns ``(images, labels, names)`` with ``images`` a float tensor ``(N, 3, S, S)`` in [0, 1].
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fedleak.errors import DataError
from fedleak.io import path_problem

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# scikit-image bundles these RGB photos in its wheel (no download needed). Labels are the ImageNet-1k
# class indices of the nearest class, so that 1000-way models see plausible targets.
BUILTIN_PHOTOS: list[tuple[str, int]] = [
    ("astronaut.png", 834),  # suit
    ("chelsea.png", 285),  # Egyptian cat
    ("coffee.png", 967),  # espresso
    ("rocket.jpg", 812),  # space shuttle
    ("motorcycle_left.png", 670),  # motor scooter
    ("hubble_deep_field.jpg", 917),  # (no galaxy class) -> comic book, arbitrary but fixed
    ("retina.jpg", 971),  # bubble, arbitrary but fixed
    ("ihc.png", 992),  # agaric, arbitrary but fixed
]

MAX_PIXELS = 100_000_000  # refuse decompression bombs larger than this


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, S, S) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    names: list[str]


def to_rgb_array(img: Image.Image, where: str = "image") -> np.ndarray:
    """Any PIL image (grayscale, palette, RGBA, 16-bit, float) -> float32 RGB array in [0, 1], shape (H, W, 3)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi, 0, 1)
        return np.repeat(arr[..., None], 3, axis=-1).astype(np.float32)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # composite transparency onto white
        img = Image.alpha_composite(bg, rgba)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{where}: could not convert to RGB (mode {img.mode})")
    return arr


def resize_array(arr: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """Resize an (H, W, 3) float array to (size, size, 3).

    ``crop``: resize the shorter side to ``size`` then centre-crop; ``stretch``: resize both sides to ``size``
    (aspect ratio not kept, as the ROG code does).
    """
    h, w = arr.shape[:2]
    img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if mode == "stretch":
        img = img.resize((size, size), Image.BICUBIC)
    elif mode == "crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        top, left = (nh - size) // 2, (nw - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        raise DataError(f"unknown resize mode {mode!r}; valid: crop, stretch")
    return np.asarray(img, dtype=np.float32) / 255.0


def load_image(path: Path, size: int, mode: str = "crop") -> torch.Tensor:
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(path) as img:
                img.load()
                arr = to_rgb_array(img, str(path))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: image too large ({e})") from e
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not a readable image (corrupt or unknown format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{path}: empty image")
    return torch.from_numpy(resize_array(arr, size, mode)).permute(2, 0, 1).contiguous()


def _list_folder(root: Path) -> list[tuple[Path, int]]:
    csv_path = root / "labels.csv"
    if csv_path.is_file():
        items = []
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "file" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise DataError(f"{csv_path}: needs a header 'file,label', got {reader.fieldnames}")
            for i, row in enumerate(reader, start=2):
                try:
                    label = int(row["label"])
                except (TypeError, ValueError):
                    raise DataError(f"{csv_path}:{i}: label {row['label']!r} is not an integer") from None
                if label < 0:
                    raise DataError(f"{csv_path}:{i}: label {label} is negative (labels are class indices >= 0)")
                items.append((root / row["file"], label))
        return items
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        items = []
        for label, d in enumerate(subdirs):
            items += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
        return items
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    return [(f, 0) for f in files]


def load_folder(path: str | Path, size: int, mode: str = "crop", start: int = 0, count: int | None = None) -> ImageSet:
    """Load images ``start .. start+count`` (sorted order / CSV order) from a folder."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"image folder {str(root)!r} {path_problem(root)}")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a folder")
    items = _list_folder(root)
    if not items:
        raise DataError(f"image folder {str(root)!r} has no images (expected labels.csv, class sub-folders or image files)")
    if start >= len(items):
        raise DataError(f"data.start={start} but {str(root)!r} has only {len(items)} images")
    sel = items[start : start + count if count else None]
    for f, _ in sel:
        if not f.is_file():
            raise DataError(f"listed image {str(f)!r} {path_problem(f)}")
    imgs = torch.stack([load_image(f, size, mode) for f, _ in sel])
    labels = torch.tensor([lab for _, lab in sel], dtype=torch.long)
    return ImageSet(imgs, labels, [f.name for f, _ in sel])


def builtin_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_builtin(size: int, mode: str = "crop", start: int = 0, count: int | None = None) -> ImageSet:
    """The offline default image set: RGB photos bundled with scikit-image."""
    root = builtin_dir()
    sel = BUILTIN_PHOTOS[start : start + count if count else None]
    if not sel:
        raise DataError(f"data.start={start}: the builtin set has only {len(BUILTIN_PHOTOS)} images")
    imgs = torch.stack([load_image(root / f, size, mode) for f, _ in sel])
    return ImageSet(imgs, torch.tensor([lab for _, lab in sel]), [f for f, _ in sel])


def load_images(source: str, size: int, mode: str = "crop", start: int = 0, count: int | None = None) -> ImageSet:
    """``source`` is ``builtin`` or a folder path."""
    if source == "builtin":
        return load_builtin(size, mode, start, count)
    return load_folder(source, size, mode, start, count)


def save_image(t: torch.Tensor, path: str | Path) -> None:
    arr = (t.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path)
