"""Subject extraction: GrabCut masks, the SAM path's errors, background removal, Case integration."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fedleak.client import segmentation as S
from fedleak.errors import ConfigError


def disc_image(size=32, radius=8.0, centre=(15.5, 17.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2
    img = 0.1 + 0.03 * torch.rand(3, size, size, generator=g)
    img[:, torch.from_numpy(disc)] = torch.tensor([0.9, 0.8, 0.6])[:, None]
    return img, disc


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("size,centre", [(32, (15.5, 17.0)), (48, (20.0, 26.0))])
def test_grabcut_finds_bright_disc(size, centre):
    img, disc = disc_image(size, radius=size / 4, centre=centre)
    m = S.masks(img[None], "grabcut")
    assert m.shape == (1, 1, size, size) and m.dtype == torch.bool
    assert S.LAST_FALLBACKS == []  # GrabCut itself found it, not the ellipse fallback
    assert iou(m[0, 0].numpy(), disc) > 0.9


def test_none_segmenter_is_whole_image_and_unknown_name_errors():
    img, _ = disc_image()
    assert S.masks(img[None].expand(2, -1, -1, -1), "none").all()
    with pytest.raises(ConfigError, match="valid: grabcut, sam, none"):
        S.masks(img[None], "snake")


@pytest.mark.skipif(importlib.util.find_spec("segment_anything") is not None,
                    reason="segment-anything is installed here")
def test_sam_without_package_gives_clear_error(tmp_path):
    img, _ = disc_image()
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="segment-anything") as e:
        S.masks(img[None], "sam", str(ckpt))
    assert "pip install" in str(e.value) and "grabcut" in str(e.value)


def test_sam_without_checkpoint_gives_clear_error():
    img, _ = disc_image()
    with pytest.raises(ConfigError, match="sam_checkpoint"):
        S.masks(img[None], "sam", None)


def test_subject_only_zero_and_mean_fill():
    from fedleak.client.data import ImageSet

    img, disc = disc_image()
    ims = ImageSet(img[None].clone(), torch.tensor([0]), ["disc"])
    out = S.subject_only(ims, "grabcut", None)
    m = out.masks[0, 0]
    assert torch.equal(out.images[0][:, m], img[:, m])  # subject untouched
    assert (out.images[0][:, ~m] == 0).all()  # background zeroed
    assert torch.equal(ims.images[0], img)  # input not modified
    mean = S.remove_background(img[None], out.masks, "mean")
    assert torch.allclose(mean[0][:, ~m], img.mean(dim=(1, 2))[:, None].expand(3, int((~m).sum())).float())
    assert S.subject_only(ims, "none", None) is ims


def test_case_subject_only_uses_segmenter(base_config):
    from fedleak.experiment.case import Case

    cfg = dict(base_config)
    cfg["data"] = {**cfg["data"], "subject_only": True, "segmenter": "grabcut"}
    case = Case(cfg)
    plain = Case(base_config)
    m = case.data.masks
    assert m.shape == (2, 1, 16, 16) and 0 < m.float().mean() < 1
    assert (case.images * ~m == 0).all()
    assert torch.equal(case.images * m, plain.images * m)


def test_subject_metrics_with_masks():
    from fedleak import metrics as M

    img, disc = disc_image()
    m = S.masks(img[None], "grabcut")
    rec = img.clone()
    rec[:, ~m[0, 0]] = 0.5  # wrong background, perfect subject
    ev = M.evaluate(img[None], rec[None], masks=m)
    assert ev["mean"]["psnr_subject"] >= 99.0
    assert ev["mean"]["psnr"] < 30
