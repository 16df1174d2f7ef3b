"""Image loading: folders, labels, odd image modes and every way a folder can be broken."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fedleak.client.data import BUILTIN_PHOTOS, load_builtin, load_folder, load_images
from fedleak.errors import DataError


def _save(path, arr, mode=None):
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    img.save(path)
    return path


def _check(images: torch.Tensor, n: int, size: int):
    assert images.shape == (n, 3, size, size)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


# ---------------------------------------------------------------------------------------------------------
# broken folders and files


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_images(str(tmp_path / "nope"), 16)


def test_path_is_a_file_not_a_folder(tmp_path):
    f = _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="is not a folder"):
        load_folder(f, 16)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="has no images"):
        load_folder(tmp_path, 16)


def test_corrupt_image_file(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match=r"b\.png.*not a readable image"):
        load_folder(tmp_path, 16, labels="none")


def test_truncated_image_file(tmp_path):
    good = _save(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = good.read_bytes()
    good.unlink()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png"):
        load_folder(tmp_path, 16, labels="none")


def test_start_beyond_the_folder(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="only 1 images"):
        load_folder(tmp_path, 16, labels="none", start=3)


def test_labels_csv_problems(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels.csv").write_text("file,label\na.png,cat\n")
    with pytest.raises(DataError, match="labels.csv:2: label 'cat' is not an integer"):
        load_folder(tmp_path, 16)
    (tmp_path / "labels.csv").write_text("name,class\na.png,1\n")
    with pytest.raises(DataError, match="needs a header 'file,label'"):
        load_folder(tmp_path, 16)
    (tmp_path / "labels.csv").write_text("file,label\na.png,1\nmissing.png,2\n")
    with pytest.raises(DataError, match="missing.png.*does not exist"):
        load_folder(tmp_path, 16)


def test_case_with_missing_folder_raises_data_error(base_config, tmp_path):
    from fedleak.experiment.case import Case

    cfg = dict(base_config, data={**base_config["data"], "source": str(tmp_path / "absent")})
    with pytest.raises(DataError, match="does not exist"):
        Case(cfg)


# ---------------------------------------------------------------------------------------------------------
# image modes: everything becomes RGB in [0, 1]


def test_grayscale_image_becomes_three_equal_channels(tmp_path):
    _save(tmp_path / "g.png", np.full((20, 30), 128, np.uint8), "L")
    s = load_folder(tmp_path, 16, labels="none")
    _check(s.images, 1, 16)
    assert torch.allclose(s.images, torch.full_like(s.images, 128 / 255), atol=1 / 255)


def test_rgba_image_is_composited_on_white(tmp_path):
    arr = np.zeros((16, 16, 4), np.uint8)
    arr[..., 0] = 255  # red ...
    arr[..., 3] = 255  # ... opaque on the left half
    arr[:, 8:, 3] = 0  # fully transparent right half -> white
    _save(tmp_path / "rgba.png", arr, "RGBA")
    s = load_folder(tmp_path, 16, labels="none")
    _check(s.images, 1, 16)
    img = s.images[0]
    assert torch.allclose(img[:, 4, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1 / 255)
    assert torch.allclose(img[:, 4, 13], torch.ones(3), atol=1 / 255)


def test_sixteen_bit_png_is_scaled_by_65535(tmp_path):
    arr = np.full((24, 24), 16384, np.uint16)  # a quarter of full scale
    Image.fromarray(arr).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit image on disk
    s = load_folder(tmp_path, 8, labels="none")
    _check(s.images, 1, 8)
    assert torch.allclose(s.images, torch.full_like(s.images, 0.25), atol=1 / 255)


def test_palette_image(tmp_path):
    rgb = Image.fromarray(np.tile(np.array([0, 128, 255], np.uint8), (12, 12, 1)))
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
    s = load_folder(tmp_path, 12, labels="none", mode="stretch")
    _check(s.images, 1, 12)
    assert torch.allclose(s.images[0, :, 5, 5], torch.tensor([0.0, 128 / 255, 1.0]), atol=1 / 255)


def test_mixed_folder_sorted_unlabelled(tmp_path):
    _save(tmp_path / "b.png", np.full((10, 10), 200, np.uint8), "L")
    _save(tmp_path / "a.jpg", np.zeros((10, 12, 3), np.uint8))
    Image.fromarray(np.full((9, 9), 1000, np.uint16)).save(tmp_path / "c.png")
    s = load_folder(tmp_path, 8, labels="none")
    _check(s.images, 3, 8)
    assert s.names == ["a.jpg", "b.png", "c.png"]
    assert s.labels.tolist() == [0, 0, 0] and not s.labels_known  # placeholders, declared unknown


def test_class_subfolders_give_labels(tmp_path):
    for label, cls in enumerate(["ant", "bee"]):
        (tmp_path / cls).mkdir()
        for i in range(2):
            _save(tmp_path / cls / f"{i}.png", np.full((8, 8, 3), 60 * (label + 1), np.uint8))
    s = load_folder(tmp_path, 8, shuffle=False)  # sorted by class (the sampling order: tests/test_data_sources.py)
    assert s.labels.tolist() == [0, 0, 1, 1]
    s = load_folder(tmp_path, 8, start=1, count=2, shuffle=False)
    assert s.labels.tolist() == [0, 1]


def test_labels_csv_order_and_labels(tmp_path):
    for name in ("x.png", "y.png"):
        _save(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels.csv").write_text("file,label\ny.png,7\nx.png,3\n")
    s = load_folder(tmp_path, 8)
    assert s.names == ["y.png", "x.png"] and s.labels.tolist() == [7, 3]


def test_builtin_photos():
    s = load_builtin(16, count=3)
    _check(s.images, 3, 16)
    assert s.labels.tolist() == [lab for _, lab in BUILTIN_PHOTOS[:3]]
    with pytest.raises(DataError, match="builtin set has only"):
        load_builtin(16, start=len(BUILTIN_PHOTOS))


def test_shared_imagenet_sample(imagenet_sample):
    s = load_images(str(imagenet_sample), 32, start=0, count=4)
    _check(s.images, 4, 32)
    rows = (imagenet_sample / "labels.csv").read_text().splitlines()[1:5]
    assert s.labels.tolist() == [int(r.split(",")[1]) for r in rows]
    assert float(s.images.std()) > 0.05  # real photos, not blank
