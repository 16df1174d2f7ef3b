"""The client's images: folders (``labels.csv`` or one sub-folder per class), ``.npz`` arrays, any
PyTorch-style dataset object (``import:module:attr``) and a built-in offline image set (the RGB photos that ship
inside scikit-image). ``docs/data.md`` describes every source.

Each source is first *listed* (labels and names, nothing decoded), then put in its sampling order
(:func:`sample_order`), and only the selected images ``start .. start+count`` of that order are decoded.
Every loader returns an :class:`ImageSet` with ``images`` a float tensor ``(N, 3, S, S)`` in [0, 1].

Orders: a class-folder tree is interleaved across classes by a seeded shuffle (so that a batch is not one
class); ``labels.csv`` folders, ``.npz`` arrays, dataset objects and the builtin set keep their own order
unless ``shuffle=True``. Labels: ``labels="none"`` declares the images unlabelled (the set's labels are then
placeholders and ``labels_known`` is False); a flat folder without ``labels.csv`` is refused otherwise.
"""
from __future__ import annotations

import csv
import importlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

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


#: ``data.labels``: ``auto`` takes the source's labels (a flat folder without labels.csv is refused);
#: ``none`` declares the images unlabelled
LABEL_MODES = ("auto", "none")
#: the prefix of a ``data.source`` naming a Python dataset object
IMPORT_PREFIX = "import:"


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, S, S) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    names: list[str]
    #: False when the source is unlabelled (``data.labels: none``): ``labels`` are then placeholders (zeros
    #: here; the case draws the labels the client trains with) and no label metric can be computed
    labels_known: bool = True


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


# ------------------------------------------------------------------------------------------ listings
#: a listed item: (image (3, S, S), label or None when the source gives none, name)
Item = tuple[torch.Tensor, Optional[int], str]


@dataclass
class Listing:
    """A source's items before anything is decoded: their count and a reader of item ``i``."""

    where: str  # the source, as messages name it
    n: int
    read: Callable[[int], Item]
    #: class-folder trees: each item's class index (the sampling interleaves the classes); None otherwise
    groups: Optional[list[int]] = field(default=None)
    #: file-backed sources: each item's image file (the memory guard reads their sizes without decoding)
    files: Optional[list[Path]] = field(default=None)


def _to_tensor(arr: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """(H, W, 3) float RGB in [0, 1] -> resized (3, size, size) float32 tensor."""
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError("empty image")
    return torch.from_numpy(resize_array(arr, size, mode)).permute(2, 0, 1).contiguous()


def _label(value: Any, where: str) -> int:
    """A class index from an int, a numpy integer or a one-element integer tensor / array."""
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        arr = value.detach().cpu().numpy() if torch.is_tensor(value) else value
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{where}: label must be one integer, got an array of shape {arr.shape} ({arr.dtype})")
        value = arr.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{where}: label must be an integer class index, got {type(value).__name__} {value!r:.40}")
    if int(value) < 0:
        raise DataError(f"{where}: label {int(value)} is negative (labels are class indices >= 0)")
    return int(value)


# -------------------------------------------------------------------------------------------- folders
def _csv_items(csv_path: Path, root: Path) -> list[tuple[Path, int]]:
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


def _folder_items(root: Path, labels: str) -> tuple[list[tuple[Path, int]], bool]:
    """``(items, is_tree)``. Class index = position of the sub-folder's name in the sorted (code-point order)
    list of non-hidden sub-folder names, as torchvision's ImageFolder assigns them."""
    csv_path = root / "labels.csv"
    if csv_path.is_file():
        return _csv_items(csv_path, root), False
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        items = []
        for label, d in enumerate(subdirs):
            items += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
        return items, True
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if files and labels != "none":
        raise DataError(f"image folder {str(root)!r} has {len(files)} images but no labels.csv and no class "
                        "sub-folders: add labels.csv (header file,label) or set data.labels: none (unlabelled)")
    return [(f, 0) for f in files], False


def folder_listing(path: str | Path, size: int, mode: str = "crop", labels: str = "auto") -> Listing:
    """The images of a folder: ``labels.csv`` (its order), class sub-folders (a tree) or, with
    ``labels="none"`` only, a flat folder of image files (sorted by name)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"image folder {str(root)!r} {path_problem(root)}")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a folder")
    items, tree = _folder_items(root, labels)
    if not items:
        raise DataError(f"image folder {str(root)!r} has no images (expected labels.csv, class sub-folders or image files)")

    def read(i: int) -> Item:
        f, label = items[i]
        if not f.is_file():
            raise DataError(f"listed image {str(f)!r} {path_problem(f)}")
        return load_image(f, size, mode), label, f.name

    return Listing(repr(str(root)), len(items), read, [lab for _, lab in items] if tree else None,
                   [f for f, _ in items])


# ------------------------------------------------------------------------------------------ .npz arrays
#: accepted array names in a ``.npz`` source (one of each at most)
NPZ_IMAGE_KEYS = ("images", "x")
NPZ_LABEL_KEYS = ("labels", "y")
NPZ_LAYOUTS = "(N, H, W, C) or (N, H, W) uint8 with C = 1, 3 or 4, or (N, C, H, W) float in [0, 1] with C = 1 or 3"


def _npz_pick(arrays: dict, keys: tuple[str, ...], where: str) -> Optional[str]:
    found = [k for k in keys if k in arrays]
    if len(found) > 1:
        raise DataError(f"{where}: has both {found[0]!r} and {found[1]!r}; keep one of {', '.join(keys)}")
    return found[0] if found else None


def _float_chw(x: np.ndarray, where: str) -> None:
    """Refuse non-finite or out-of-[0, 1] float images (one line naming the array)."""
    if not np.isfinite(x).all():
        raise DataError(f"{where}: float images contain NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{where}: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                        "(scale them, or store uint8 (N, H, W, C))")


def _npz_images(x: np.ndarray, where: str, key: str) -> np.ndarray:
    """Check the layout of the images array; returns it as (N, H, W, C) uint8 or (N, C, H, W) float."""
    bad = f"{where}: array {key!r} has shape {x.shape} and dtype {x.dtype}; expected {NPZ_LAYOUTS}"
    if x.dtype == np.uint8:
        x = x[..., None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or 0 in x.shape:
            raise DataError(bad)
        return x
    if np.issubdtype(x.dtype, np.floating):
        if x.ndim != 4 or x.shape[1] not in (1, 3) or 0 in x.shape:
            raise DataError(bad)
        _float_chw(x, f"{where}: array {key!r}")
        return x
    raise DataError(bad)


def _hwc_uint8_to_rgb(arr: np.ndarray, where: str) -> np.ndarray:
    return to_rgb_array(Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr), where)


def _chw_float_to_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr
    return np.ascontiguousarray(arr.transpose(1, 2, 0), dtype=np.float32)


def npz_listing(path: str | Path, size: int, mode: str = "crop", labels: str = "auto") -> Listing:
    """The images of a ``.npz`` file: an ``images`` (or ``x``) array in one of :data:`NPZ_LAYOUTS` and, unless
    ``labels="none"``, a ``labels`` (or ``y``) array of N non-negative integers. Array order is kept."""
    p = Path(path).expanduser()
    where = str(p)
    if not p.is_file():
        raise DataError(f"npz file {where!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zip, format and pickle refusals of numpy: any of them is one line
        raise DataError(f"{where}: cannot read as .npz ({type(e).__name__}: {str(e)[:120]})") from None
    ik = _npz_pick(arrays, NPZ_IMAGE_KEYS, where)
    if ik is None:
        raise DataError(f"{where}: no images array (found {sorted(arrays) or 'none'}); name it 'images', "
                        f"shape {NPZ_LAYOUTS}")
    x = _npz_images(arrays[ik], where, ik)
    n, hwc = x.shape[0], x.dtype == np.uint8
    lk = _npz_pick(arrays, NPZ_LABEL_KEYS, where)
    y = None
    if labels != "none":
        if lk is None:
            raise DataError(f"{where}: no labels array (found {sorted(arrays)}): add 'labels' (N integers) "
                            "or set data.labels: none (unlabelled)")
        y = arrays[lk]
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: array {lk!r} has shape {y.shape} and dtype {y.dtype}; expected ({n},) "
                            f"integers (one class index per image of {ik!r})")
        if n and int(y.min()) < 0:
            raise DataError(f"{where}: array {lk!r} has a negative label {int(y.min())} (labels are class indices >= 0)")

    def read(i: int) -> Item:
        arr = _hwc_uint8_to_rgb(x[i], where) if hwc else _chw_float_to_rgb(x[i])
        return _to_tensor(arr, size, mode), None if y is None else int(y[i]), f"{p.name}[{i}]"

    return Listing(repr(where), n, read)


# ------------------------------------------------------------------------------- Python dataset objects
ITEM_IMAGES = "a PIL image, an H x W x C uint8 ndarray (C = 1, 3 or 4) or a C x H x W float tensor in [0, 1] (C = 1 or 3)"


def _is_dataset(obj: Any) -> bool:
    return not isinstance(obj, type) and hasattr(type(obj), "__len__") and hasattr(type(obj), "__getitem__")


def resolve_dataset(source: str) -> Any:
    """The object named by ``import:module:attr`` (``attr`` may be dotted): a dataset (``__len__`` and
    ``__getitem__``) or a zero-argument factory (a function or class) returning one. Importing the module runs
    its code."""
    mod_name, _, attr = source[len(IMPORT_PREFIX):].partition(":")
    if not mod_name or not attr:
        raise DataError(f"data.source {source!r} must look like 'import:package.module:attr'")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # the user's module: a missing module or any failure at import is one line
        raise DataError(f"{source}: cannot import module {mod_name!r} ({type(e).__name__}: {e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DataError(f"{source}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if _is_dataset(obj):
        return obj
    if not callable(obj):
        raise DataError(f"{source}: names a {type(obj).__name__}, neither a dataset (with __len__ and __getitem__) "
                        "nor a zero-argument factory returning one")
    try:
        ds = obj()
    except Exception as e:  # the user's factory: any failure is one line, not a traceback
        raise DataError(f"{source}: calling {attr}() failed ({type(e).__name__}: {e})") from None
    if not _is_dataset(ds):
        raise DataError(f"{source}: {attr}() returned a {type(ds).__name__}, which has no __len__ and __getitem__")
    return ds


def item_image(img: Any, where: str) -> np.ndarray:
    """One dataset image (see :data:`ITEM_IMAGES`) -> (H, W, 3) float32 RGB in [0, 1]."""
    if isinstance(img, Image.Image):
        return to_rgb_array(img, where)
    if torch.is_tensor(img):
        if not (img.is_floating_point() and img.dim() == 3 and img.shape[0] in (1, 3)):
            raise DataError(f"{where}: tensor image of shape {tuple(img.shape)} and dtype {img.dtype}; expected {ITEM_IMAGES}")
        arr = img.detach().cpu().float().numpy()
        _float_chw(arr, where)
        return _chw_float_to_rgb(arr)
    if isinstance(img, np.ndarray):
        if img.dtype == np.uint8 and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3, 4))):
            return _hwc_uint8_to_rgb(img[..., None] if img.ndim == 2 else img, where)
        raise DataError(f"{where}: ndarray image of shape {img.shape} and dtype {img.dtype}; expected {ITEM_IMAGES}")
    raise DataError(f"{where}: image is a {type(img).__name__}; expected {ITEM_IMAGES}")


def dataset_listing(dataset: Any, size: int, mode: str = "crop", labels: str = "auto",
                    where: str = "dataset") -> Listing:
    """Any object with ``__len__`` and ``__getitem__`` whose items are ``(image, label)`` pairs (with
    ``labels="none"`` a bare image is accepted too). Only the selected items are read, in index order."""
    if not _is_dataset(dataset):
        raise DataError(f"{where}: a {type(dataset).__name__} has no __len__ and __getitem__")
    try:
        n = int(len(dataset))
    except Exception as e:  # the user's __len__
        raise DataError(f"{where}: len() failed ({type(e).__name__}: {e})") from None

    def read(i: int) -> Item:
        at = f"{where}: item {i}"
        try:
            item = dataset[i]
        except Exception as e:  # the user's __getitem__
            raise DataError(f"{at}: reading it failed ({type(e).__name__}: {e})") from None
        pair = isinstance(item, (tuple, list))
        if pair and len(item) != 2:
            raise DataError(f"{at}: a {type(item).__name__} of {len(item)} values; expected (image, label)")
        if not pair and labels != "none":
            raise DataError(f"{at}: a {type(item).__name__}, not an (image, label) pair "
                            "(unlabelled data: set data.labels: none)")
        img = item[0] if pair else item
        label = _label(item[1], at) if pair and labels != "none" else None
        return _to_tensor(item_image(img, at), size, mode), label, f"item{i}"

    return Listing(where, n, read)


# ------------------------------------------------------------------------------------------- builtin
def builtin_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def builtin_listing(size: int, mode: str = "crop") -> Listing:
    """The offline default image set: RGB photos bundled with scikit-image, in :data:`BUILTIN_PHOTOS` order."""
    root = builtin_dir()

    def read(i: int) -> Item:
        name, label = BUILTIN_PHOTOS[i]
        return load_image(root / name, size, mode), label, name

    return Listing("the builtin set", len(BUILTIN_PHOTOS), read, files=[root / name for name, _ in BUILTIN_PHOTOS])


def set_listing(images: ImageSet, where: str) -> Listing:
    """A listing of an already loaded set (the public data sets)."""
    return Listing(where, int(images.images.shape[0]),
                   lambda i: (images.images[i], int(images.labels[i]), images.names[i]))


# ------------------------------------------------------------------------------------------- sampling
def interleave(groups: list[int], seed: int) -> list[int]:
    """A seeded order of the items that cycles through the classes: each class's items are shuffled, then
    round ``r`` takes the ``r``-th item of every class that has one, the classes in a fresh seeded order each
    round. A run of at most as many items as there are classes, starting at a round, has distinct classes."""
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    queues = [[int(i) for i in rng.permutation(members[g])] for g in sorted(members)]
    order: list[int] = []
    for r in range(max((len(q) for q in queues), default=0)):
        live = [q for q in queues if r < len(q)]
        order += [live[k][r] for k in rng.permutation(len(live))]
    return order


def sample_order(listing: Listing, shuffle: Optional[bool] = None, seed: int = 0) -> list[int]:
    """The order in which ``start`` indexes a source: class-folder trees :func:`interleave`-d (unless
    ``shuffle=False``: sorted by class, then by file name); other sources in their own order, or a seeded
    permutation with ``shuffle=True``."""
    if listing.groups is not None and shuffle is not False:
        return interleave(listing.groups, seed)
    if shuffle:
        return [int(i) for i in np.random.default_rng(seed).permutation(listing.n)]
    return list(range(listing.n))


def sample(listing: Listing, start: int = 0, count: Optional[int] = None, shuffle: Optional[bool] = None,
           seed: int = 0, labels: str = "auto") -> ImageSet:
    """Decode items ``start .. start+count`` of the listing's :func:`sample_order`."""
    if labels not in LABEL_MODES:
        raise DataError(f"data.labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    if listing.n == 0:
        raise DataError(f"{listing.where} has no images")
    if start >= listing.n:
        raise DataError(f"data.start={start}: {listing.where} has only {listing.n} images")
    sel = sample_order(listing, shuffle, seed)[start: start + count if count else None]
    items = [listing.read(i) for i in sel]
    known = labels != "none"
    if known and any(lab is None for _, lab, _ in items):
        raise DataError(f"{listing.where} gives no labels: add them or set data.labels: none (unlabelled)")
    return ImageSet(torch.stack([img for img, _, _ in items]),
                    torch.tensor([lab if known else 0 for _, lab, _ in items], dtype=torch.long),
                    [name for _, _, name in items], labels_known=known)


def placeholder_labels(n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """The labels an unlabelled client trains with (``data.labels: none``): a seeded draw of distinct classes
    (with repeats only when ``n > num_classes``). Never shown to the server; never scored."""
    g = torch.Generator().manual_seed(int(seed))
    if n <= num_classes:
        return torch.randperm(num_classes, generator=g)[:n].sort().values
    return torch.randint(num_classes, (n,), generator=g).sort().values


# ------------------------------------------------------------------------------------- the loaders
def source_listing(source: str, size: int, mode: str = "crop", labels: str = "auto") -> Listing:
    """The listing of ``source``: ``builtin``, ``import:module:attr``, a ``.npz`` file or a folder."""
    if source == "builtin":
        return builtin_listing(size, mode)
    if source.startswith(IMPORT_PREFIX):
        return dataset_listing(resolve_dataset(source), size, mode, labels, where=source)
    if source.lower().endswith(".npz"):
        return npz_listing(source, size, mode, labels)
    return folder_listing(source, size, mode, labels)


def load_folder(path: str | Path, size: int, mode: str = "crop", start: int = 0, count: int | None = None,
                labels: str = "auto", shuffle: Optional[bool] = None, seed: int = 0) -> ImageSet:
    """Load images ``start .. start+count`` of a folder's sampling order (see :func:`sample_order`)."""
    return sample(folder_listing(path, size, mode, labels), start, count, shuffle, seed, labels)


def load_builtin(size: int, mode: str = "crop", start: int = 0, count: int | None = None,
                 shuffle: Optional[bool] = None, seed: int = 0) -> ImageSet:
    """The offline default image set: RGB photos bundled with scikit-image."""
    return sample(builtin_listing(size, mode), start, count, shuffle, seed)


def load_images(source: str, size: int, mode: str = "crop", start: int = 0, count: int | None = None,
                labels: str = "auto", shuffle: Optional[bool] = None, seed: int = 0) -> ImageSet:
    """``source`` is ``builtin``, ``import:module:attr``, a ``.npz`` file or a folder path."""
    return sample(source_listing(source, size, mode, labels), start, count, shuffle, seed, labels)

def save_image(t: torch.Tensor, path: str | Path) -> None:
    arr = (t.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path)
