"""Subject extraction: boolean masks of the image subject, and images with the background removed.

Segmenters (``data.segmenter`` in a config):

* ``grabcut`` -- the offline default: OpenCV GrabCut (Rother et al. 2004) seeded with a centre box (a
  margin of ``GRABCUT_MARGIN`` of the side on every edge is "probable background", the box "probable
  foreground"), ``GRABCUT_ITERS`` iterations, on the image upsampled to at least ``GRABCUT_MIN_SIDE``
  pixels (GrabCut's colour models need a few hundred pixels per region) and the mask resized back. If
  GrabCut fails, or returns an empty or full-frame mask, the centre ellipse inscribed in the seed box is
  used instead (recorded in :data:`LAST_FALLBACKS`).
* ``sam`` -- Segment Anything (Kirillov et al. 2023), only when the optional package ``segment-anything``
  is installed *and* a checkpoint path is given; it is imported lazily, prompted with the same centre
  box, and the highest-scoring of its three proposals is kept. Without the package or the checkpoint a
  :class:`~fedleak.errors.ConfigError` says what to install / set.
* ``none`` -- no segmentation: the mask is the whole image (``subject_only`` is then a no-op).

:func:`subject_only` removes the background: pixels outside the mask are set to 0 (black, ``fill="zero"``,
the default used by :class:`~fedleak.case.Case`) or to the image's own mean colour (``fill="mean"``).
The masks also serve the subject-region metrics (``fedleak.metrics.evaluate(..., masks=...)``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fedleak.errors import ConfigError

SEGMENTERS = ("grabcut", "sam", "none")
GRABCUT_MARGIN = 0.125
GRABCUT_ITERS = 5
GRABCUT_MIN_SIDE = 128
#: indices (in the last call to :func:`masks` with grabcut) of images where the ellipse fallback was used
LAST_FALLBACKS: list[int] = []


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    return images.detach().float().cpu()


def _resolve(segmenter: Optional[str]) -> str:
    key = "none" if segmenter is None else str(segmenter).lower().strip()
    if key not in SEGMENTERS:
        raise ConfigError(f"unknown segmenter {segmenter!r}; valid: {', '.join(SEGMENTERS)}")
    return key


def centre_box(h: int, w: int, margin: float = GRABCUT_MARGIN) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the centre seed box leaving ``margin`` of each side free."""
    mx, my = max(1, int(round(margin * w))), max(1, int(round(margin * h)))
    return mx, my, max(1, w - 2 * mx), max(1, h - 2 * my)


def centre_ellipse(h: int, w: int, margin: float = GRABCUT_MARGIN) -> np.ndarray:
    """Boolean (h, w) ellipse inscribed in :func:`centre_box`: the fallback subject prior."""
    x, y, bw, bh = centre_box(h, w, margin)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = y + (bh - 1) / 2, x + (bw - 1) / 2
    return ((yy - cy) / max(bh / 2, 0.5)) ** 2 + ((xx - cx) / max(bw / 2, 0.5)) ** 2 <= 1.0


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8 RGB."""
    arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray((arr * 255 + 0.5).astype(np.uint8))


def _grabcut(bgr: np.ndarray, mask: np.ndarray, rect, iters: int, mode: int) -> Optional[np.ndarray]:
    import cv2

    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(bgr, mask, rect, bgd, fgd, iters, mode)
    except cv2.error:
        return None
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)


def grabcut_mask(img: torch.Tensor, iters: int = GRABCUT_ITERS, margin: float = GRABCUT_MARGIN,
                 seed: int = 0) -> tuple[np.ndarray, bool]:
    """GrabCut mask of one (C, H, W) image seeded from the centre box; returns (mask, used_fallback).

    First GrabCut is initialised with the centre box alone. If that gives an empty/full mask, it is re-run
    with the central quarter of the box marked as sure foreground. If that fails too, the centre ellipse
    is returned with ``used_fallback = True``.
    """
    import cv2

    h, w = img.shape[-2:]
    rgb = _to_uint8(img)
    up = max(1, int(np.ceil(GRABCUT_MIN_SIDE / min(h, w))))
    if up > 1:  # nearest-neighbour upsampling keeps the pixel colours (no blurred edge colours)
        rgb = np.repeat(np.repeat(rgb, up, axis=0), up, axis=1)
    H, W = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    rect = centre_box(H, W, margin)
    cv2.setRNGSeed(seed)
    tries = []
    m0 = np.zeros((H, W), np.uint8)
    tries.append(lambda: _grabcut(bgr, m0, rect, iters, cv2.GC_INIT_WITH_RECT))

    def with_core():
        m1 = np.full((H, W), cv2.GC_BGD, np.uint8)
        x, y, bw, bh = rect
        m1[y:y + bh, x:x + bw] = cv2.GC_PR_FGD
        cx, cy, cw, ch = centre_box(H, W, 0.375)
        m1[cy:cy + ch, cx:cx + cw] = cv2.GC_FGD
        return _grabcut(bgr, m1, None, iters, cv2.GC_INIT_WITH_MASK)

    tries.append(with_core)
    for attempt in tries:
        fg = attempt()
        if fg is None:
            continue
        if up > 1:
            fg = fg.reshape(h, up, w, up).mean(axis=(1, 3))
        mask = fg >= 0.5
        if 0.01 <= mask.mean() <= 0.99:
            return mask, False
    return centre_ellipse(h, w, margin), True


def _sam_predictor(checkpoint: Optional[str]):
    if not checkpoint:
        raise ConfigError("segmenter 'sam' needs a checkpoint: set data.sam_checkpoint to the path of a "
                          "Segment Anything checkpoint (e.g. sam_vit_b_01ec64.pth)")
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        raise ConfigError("segmenter 'sam' needs the optional package 'segment-anything' "
                          "(pip install segment-anything, or pip install 'fedleak[sam]') and a checkpoint "
                          "path; use segmenter 'grabcut' for the offline default") from None
    from segment_anything import SamPredictor, sam_model_registry

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"SAM checkpoint {str(path)!r} not found")
    name = path.name.lower()
    kind = next((k for k in ("vit_h", "vit_l", "vit_b") if k in name), None)
    if kind is None:
        raise ConfigError(f"cannot tell the SAM model type from {path.name!r}; the file name must contain "
                          "vit_h, vit_l or vit_b")
    try:
        sam = sam_model_registry[kind](checkpoint=str(path))
    except Exception as e:  # torch.load / state-dict errors
        raise ConfigError(f"cannot load SAM checkpoint {str(path)!r}: {e}") from None
    sam.eval()
    return SamPredictor(sam)


def sam_masks(images: torch.Tensor, checkpoint: Optional[str]) -> torch.Tensor:
    predictor = _sam_predictor(checkpoint)
    out = []
    for img in images:
        rgb = _to_uint8(img)
        h, w = rgb.shape[:2]
        x, y, bw, bh = centre_box(h, w)
        predictor.set_image(rgb)
        with torch.no_grad():
            ms, scores, _ = predictor.predict(box=np.array([x, y, x + bw - 1, y + bh - 1]), multimask_output=True)
        out.append(torch.from_numpy(np.asarray(ms[int(np.argmax(scores))], dtype=bool)))
    return torch.stack(out).unsqueeze(1)


def masks(images, segmenter: Optional[str] = "grabcut", checkpoint: Optional[str] = None) -> torch.Tensor:
    """Subject masks ``(B, 1, H, W)`` (bool) of images ``(B, C, H, W)`` in [0, 1]."""
    key = _resolve(segmenter)
    x = _check_images(images)
    b, _, h, w = x.shape
    if key == "none":
        return torch.ones(b, 1, h, w, dtype=torch.bool)
    if key == "sam":
        return sam_masks(x, checkpoint)
    LAST_FALLBACKS.clear()
    out = []
    for i, img in enumerate(x):
        m, fb = grabcut_mask(img, seed=i)
        if fb:
            LAST_FALLBACKS.append(i)
        out.append(torch.from_numpy(m))
    return torch.stack(out).unsqueeze(1)


def remove_background(images: torch.Tensor, mask: torch.Tensor, fill: str = "zero") -> torch.Tensor:
    """Images with the pixels outside ``mask`` set to 0 (``fill="zero"``) or the image's mean colour."""
    if fill not in ("zero", "mean"):
        raise ConfigError(f"unknown background fill {fill!r}; valid: zero, mean")
    m = mask.to(images.dtype)
    if fill == "zero":
        return images * m
    mean = images.mean(dim=(2, 3), keepdim=True)
    return images * m + mean * (1 - m)


def subject_only(imageset, segmenter: Optional[str] = "grabcut", checkpoint: Optional[str] = None,
                 fill: str = "zero"):
    """A copy of ``imageset`` (:class:`~fedleak.data.ImageSet`) with the background removed (see module doc).

    With ``segmenter="none"`` the images are returned unchanged (the whole image is the subject). The
    returned set carries the masks as an extra attribute ``masks`` (B, 1, H, W).
    """
    key = _resolve(segmenter)
    if key == "none":
        return imageset
    m = masks(imageset.images, key, checkpoint)
    out = replace(imageset, images=remove_background(imageset.images, m, fill).contiguous())
    out.masks = m  # the runner scores the subject region with these (metrics.evaluate(masks=...))
    return out
