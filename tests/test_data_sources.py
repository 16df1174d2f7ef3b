"""Data sources (docs/data.md): class-folder trees sampled across classes, the flat-folder refusal, unlabelled
data (``data.labels: none``) end to end, ``.npz`` arrays and Python dataset objects (``import:``)."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from fedleak import cli
from fedleak.client.data import interleave, load_folder, load_images
from fedleak.config.schema import DataConfig, load_config
from fedleak.errors import ConfigError, DataError
from fedleak.experiment.data import load_data


def _tree(root, classes: int, per_class: int):
    """``root/c<k>/<i>.png``, every image a flat colour that encodes (class, index)."""
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (6, 6), (20 * c, 10 * i, 0)).save(root / f"c{c}" / f"{i}.png")
    return root


def _flat(root, n: int):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("fedleak: error: ") and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------------------- class trees
def test_class_tree_batch_spans_classes(tmp_path):
    tree = _tree(tmp_path / "tree", classes=5, per_class=4)
    s = load_folder(tree, 8, count=5)
    assert sorted(s.labels.tolist()) == [0, 1, 2, 3, 4]  # one round of the interleaving: every class once
    old = load_folder(tree, 8, count=5, shuffle=False)  # the sorted order: the first class only (the old surprise)
    assert old.labels.tolist() == [0, 0, 0, 0, 1]


def test_class_index_is_the_sorted_folder_name(tmp_path):
    for name, colour in (("zebra", 200), ("ant", 10), ("Moth", 100)):  # code-point order: Moth < ant < zebra
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4), (colour, 0, 0)).save(tmp_path / name / "x.png")
    s = load_folder(tmp_path, 4, shuffle=False)
    assert s.labels.tolist() == [0, 1, 2]
    assert [round(float(v) * 255) for v in s.images[:, 0, 0, 0]] == [100, 10, 200]


def test_class_tree_order_is_reproducible_and_start_indexes_it(tmp_path):
    tree = _tree(tmp_path / "tree", classes=3, per_class=4)
    full = load_folder(tree, 8, seed=3)
    again = load_folder(tree, 8, seed=3)
    assert torch.equal(full.images, again.images) and full.labels.tolist() == again.labels.tolist()
    part = load_folder(tree, 8, start=5, count=4, seed=3)
    assert torch.equal(part.images, full.images[5:9]) and part.labels.tolist() == full.labels.tolist()[5:9]
    other = load_folder(tree, 8, seed=4)
    assert not torch.equal(other.images, full.images)  # another seed, another order
    # the same images either way: a permutation of the sorted listing
    srt = load_folder(tree, 8, shuffle=False)
    key = lambda x: sorted(map(tuple, x.flatten(1).tolist()))  # noqa: E731
    assert key(full.images) == key(srt.images)


def test_interleave_rounds_and_uneven_classes():
    groups = [0] * 5 + [1] * 2 + [2] * 1
    order = interleave(groups, seed=0)
    assert sorted(order) == list(range(8))
    assert sorted(groups[i] for i in order[:3]) == [0, 1, 2]  # round 0: every class
    assert sorted(groups[i] for i in order[3:5]) == [0, 1]  # round 1: the classes left
    assert [groups[i] for i in order[5:]] == [0, 0, 0]
    assert interleave(groups, seed=0) == order


def test_config_data_seed_and_start(tmp_path):
    tree = _tree(tmp_path / "tree", classes=4, per_class=3)
    a = load_data(DataConfig(source=str(tree), size=8, batch_size=4))
    assert len(set(a.labels.tolist())) == 4
    b = load_data(DataConfig(source=str(tree), size=8, batch_size=4, seed=1))
    c = load_data(DataConfig(source=str(tree), size=8, batch_size=4, start=4))
    assert not torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.equal(a.images, load_data(DataConfig(source=str(tree), size=8, batch_size=4)).images)


def test_shuffle_true_permutes_a_labels_csv_folder(tmp_path):
    root = _flat(tmp_path / "f", 6)
    (root / "labels.csv").write_text("file,label\n" + "".join(f"img{i}.png,{i}\n" for i in range(6)))
    assert load_folder(root, 8).labels.tolist() == [0, 1, 2, 3, 4, 5]  # labels.csv order kept by default
    shuffled = load_folder(root, 8, shuffle=True, seed=0).labels.tolist()
    assert sorted(shuffled) == [0, 1, 2, 3, 4, 5] and shuffled != [0, 1, 2, 3, 4, 5]


def test_shared_sample_keeps_its_labels_csv_order(imagenet_sample):
    rows = (imagenet_sample / "labels.csv").read_text().splitlines()[1:]
    s = load_data(DataConfig(source=str(imagenet_sample), size=16, batch_size=4, start=2))
    assert s.names == [r.split(",")[0] for r in rows[2:6]] and s.labels_known


# --------------------------------------------------------------------------------------- flat folders
def test_flat_folder_without_labels_is_refused(tmp_path, capsys):
    root = _flat(tmp_path / "flat", 3)
    with pytest.raises(DataError, match=r"no labels.csv.*add labels.csv.*data.labels: none"):
        load_folder(root, 8)
    rc = cli.main(["run", "--out", str(tmp_path / "run"), "-q", "--set", f"data.source={root}",
                   "--set", "data.size=8", "--set", "data.batch_size=2", "--set", "threads=1"])
    assert rc == 2 and "add labels.csv" in _one_line_error(capsys)
    s = load_folder(root, 8, labels="none")
    assert s.names == ["img0.png", "img1.png", "img2.png"] and not s.labels_known


def test_placeholder_labels_are_distinct_and_in_range(tmp_path):
    root = _flat(tmp_path / "flat", 4)
    s = load_data(DataConfig(source=str(root), size=8, batch_size=4, labels="none"), num_classes=10)
    assert not s.labels_known and len(set(s.labels.tolist())) == 4 and int(s.labels.max()) < 10


# --------------------------------------------------------------------------------- labels: none, end to end
def _unlabelled_cfg(root, **attack) -> dict:
    return {"seed": 0, "threads": 1, "data": {"source": str(root), "size": 8, "batch_size": 2, "labels": "none"},
            "model": {"name": "lenet", "num_classes": 10}, "attack": {"name": "rog", "iterations": 2, **attack}}


def test_labels_none_run_recovers_labels_and_skips_label_metrics(tmp_path):
    import fedleak

    root = _flat(tmp_path / "flat", 2)
    run_dir, m = fedleak.run(_unlabelled_cfg(root), out=tmp_path / "run", progress=False)
    assert (run_dir / "COMPLETE").is_file()
    assert m["update"]["labels_shared"] is False  # the client has no labels to share
    assert m["attack"]["info"]["label_method"] == "llg"  # labels: auto recovered them from the update
    assert "not computable" in m["raw"]["label_metrics"]
    assert "label_accuracy" not in m["summary"] and "label_accuracy" not in m["raw"]
    assert np.isfinite(m["summary"]["psnr"]) and np.isfinite(m["summary"]["ssim"])
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["raw"]["label_metrics"] == m["raw"]["label_metrics"]


def test_labels_none_refuses_known_labels(tmp_path, capsys):
    root = _flat(tmp_path / "flat", 2)
    with pytest.raises(ConfigError, match=r"labels: known.*data.labels is none.*llg"):
        load_config(base=_unlabelled_cfg(root, labels="known"))
    rc = cli.main(["run", "--out", str(tmp_path / "run"), "-q", "--set", f"data.source={root}",
                   "--set", "data.labels=none", "--set", "attack.labels=known"])
    err = _one_line_error(capsys)
    assert rc == 2 and "idlg" in err and "optimize" in err
    assert not (tmp_path / "run").exists()  # refused before any folder or work


def test_labels_none_with_a_labelled_source_hides_the_labels(tmp_path):
    from fedleak.experiment.case import Case

    tree = _tree(tmp_path / "tree", classes=3, per_class=1)
    cfg = _unlabelled_cfg(tree)
    cfg["data"]["batch_size"] = 3
    case = Case(cfg)
    assert not case.data.labels_known and case.client_update().labels is None


# ---------------------------------------------------------------------------------------------- .npz
def test_npz_uint8_nhwc_and_float_nchw(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 10, 10, 3), dtype=np.uint8)
    y = np.array([3, 1, 4, 1, 5])
    np.savez(tmp_path / "u8.npz", images=x, labels=y)
    s = load_data(DataConfig(source=str(tmp_path / "u8.npz"), size=10, batch_size=3, start=1))
    assert s.labels.tolist() == [1, 4, 1] and s.images.shape == (3, 3, 10, 10)
    assert torch.allclose(s.images[0], torch.from_numpy(x[1]).permute(2, 0, 1).float() / 255, atol=1 / 255)
    np.savez(tmp_path / "f.npz", x=(x.transpose(0, 3, 1, 2) / 255.0).astype(np.float32), y=y)  # aliases x, y
    f = load_images(str(tmp_path / "f.npz"), 10, start=1, count=3)
    assert torch.allclose(f.images, s.images, atol=1 / 255) and f.labels.tolist() == [1, 4, 1]
    np.savez(tmp_path / "grey.npz", images=x[..., 0], labels=y)  # (N, H, W) uint8
    g = load_images(str(tmp_path / "grey.npz"), 10, count=1)
    assert torch.equal(g.images[0, 0], g.images[0, 2])


@pytest.mark.parametrize("arrays, needle", [
    ({"images": np.zeros((4, 8, 8, 2), np.uint8), "labels": np.zeros(4, int)}, r"array 'images' has shape \(4, 8, 8, 2\)"),
    ({"images": np.zeros((4, 8, 8, 3), np.float32), "labels": np.zeros(4, int)}, r"array 'images' has shape \(4, 8, 8, 3\)"),
    ({"images": np.zeros((4, 8, 8), np.int32), "labels": np.zeros(4, int)}, r"array 'images'.*dtype int32"),
    ({"images": np.full((4, 3, 8, 8), 2.0), "labels": np.zeros(4, int)}, r"array 'images'.*\[0, 1\]"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(3, int)}, r"array 'labels' has shape \(3,\).*\(4,\)"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(4)}, r"array 'labels'.*float64.*integers"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": -np.ones(4, int)}, r"negative label -1"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, r"no labels array.*data.labels: none"),
    ({"pixels": np.zeros((4, 8, 8, 3), np.uint8)}, r"no images array \(found \['pixels'\]\)"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "x": np.zeros((4, 8, 8, 3), np.uint8)}, r"both 'images' and 'x'"),
])
def test_npz_bad_arrays_say_which(tmp_path, arrays, needle):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=needle) as e:
        load_images(str(tmp_path / "d.npz"), 8)
    assert "\n" not in str(e.value)


def test_npz_unlabelled_missing_and_pickled(tmp_path):
    np.savez(tmp_path / "u.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    s = load_images(str(tmp_path / "u.npz"), 8, labels="none")
    assert not s.labels_known and s.images.shape[0] == 2
    with pytest.raises(DataError, match="does not exist"):
        load_images(str(tmp_path / "absent.npz"), 8)
    np.savez(tmp_path / "obj.npz", images=np.array([object()], dtype=object), labels=np.zeros(1, int))
    with pytest.raises(DataError, match="cannot read as .npz"):
        load_images(str(tmp_path / "obj.npz"), 8)


# ------------------------------------------------------------------------------------ import: datasets
DATASETS_PY = '''
import numpy as np
import torch
from PIL import Image


class Pil:
    """Six PIL images, labels 0..5 (a class: also a zero-argument factory)."""
    def __len__(self):
        return 6

    def __getitem__(self, i):
        if not 0 <= i < 6:
            raise IndexError(i)
        return Image.new("RGB", (9, 7), (40 * i, 0, 0)), i


def tensors():
    return [(torch.full((3, 8, 8), i / 4), torch.tensor(i)) for i in range(4)]


ARRAYS = [(np.full((8, 8, 3), 50 * i, np.uint8), np.int64(i)) for i in range(3)]
BAD_SHAPE = [(torch.zeros(8, 8, 3), 0)]
BAD_RANGE = [(torch.full((3, 8, 8), 3.0), 0)]
TRIPLE = [(Image.new("RGB", (8, 8)), 0, "extra")]
BARE = [Image.new("RGB", (8, 8), (9, 9, 9))] * 2
FLOAT_LABEL = [(Image.new("RGB", (8, 8)), 1.5)]
NUMBER = 3


def broken():
    raise RuntimeError("no data here")


class Failing:
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise KeyError(i)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of datasets on sys.path, under a name unique to the test."""
    name = f"fedleak_user_data_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(DATASETS_PY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    import sys

    sys.modules.pop(name, None)


def test_import_dataset_class_factory_and_objects(user_module):
    s = load_data(DataConfig(source=f"import:{user_module}:Pil", size=8, batch_size=3, start=2))
    assert s.labels.tolist() == [2, 3, 4] and s.images.shape == (3, 3, 8, 8)
    assert round(float(s.images[0, 0, 4, 4]) * 255) == 80
    t = load_images(f"import:{user_module}:tensors", 8, count=4)  # a zero-argument function
    assert t.labels.tolist() == [0, 1, 2, 3]
    assert torch.allclose(t.images[:, 1, 0, 0], torch.tensor([0, 0.25, 0.5, 0.75]), atol=1 / 255)
    a = load_images(f"import:{user_module}:ARRAYS", 8)  # an object (a list of pairs)
    assert a.labels.tolist() == [0, 1, 2]
    sh = load_images(f"import:{user_module}:Pil", 8, shuffle=True, seed=1)
    assert sorted(sh.labels.tolist()) == list(range(6)) and sh.labels.tolist() != list(range(6))
    b = load_images(f"import:{user_module}:BARE", 8, labels="none")  # unlabelled: bare images allowed
    assert not b.labels_known and b.images.shape[0] == 2


@pytest.mark.parametrize("attr, needle", [
    ("BAD_SHAPE", r"item 0: tensor image of shape \(8, 8, 3\)"),
    ("BAD_RANGE", r"item 0: float images must lie in \[0, 1\]"),
    ("TRIPLE", r"item 0: a tuple of 3 values; expected \(image, label\)"),
    ("BARE", r"item 0: a Image, not an \(image, label\) pair.*data.labels: none"),
    ("FLOAT_LABEL", r"item 0: label must be an integer class index, got float"),
    ("NUMBER", r"names a int, neither a dataset"),
    ("broken", r"calling broken\(\) failed \(RuntimeError: no data here\)"),
    ("Failing", r"item 0: reading it failed \(KeyError"),
    ("absent", r"has no attribute 'absent'"),
])
def test_import_dataset_problems_are_one_line(user_module, attr, needle):
    with pytest.raises(DataError, match=needle) as e:
        load_images(f"import:{user_module}:{attr}", 8)
    assert "\n" not in str(e.value)


def test_import_source_form_and_missing_module(tmp_path):
    with pytest.raises(ConfigError, match="must look like 'import:package.module:attr'"):
        load_config(base={"data": {"source": "import:just_a_module"}})
    with pytest.raises(DataError, match="cannot import module 'no_such_module_fedleak'"):
        load_images("import:no_such_module_fedleak:ds", 8)


def test_import_dataset_end_to_end_cli(user_module, tmp_path, capsys):
    rc = cli.main(["run", "--out", str(tmp_path / "run"), "-q", "--set", f"data.source=import:{user_module}:Pil",
                   "--set", "data.size=8", "--set", "data.batch_size=2", "--set", "model.num_classes=10",
                   "--set", "attack.iterations=1", "--set", "threads=1"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "label_accuracy" in m["raw"] and m["update"]["labels_shared"] is True


def test_tuning_set_writes_a_16_image_folder_of_distinct_public_crops(tmp_path):
    """``benchmarks/tuning_set.py`` (the batch-16 tuning folder): 16 images, two crops of each builtin photo that
    differ, 16 distinct labels (the centre crops keep the builtin labels), loadable as a ``data.source`` in one
    batch of 16."""
    import importlib.util
    from pathlib import Path

    from fedleak.client.data import BUILTIN_PHOTOS

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tuning_set.py"
    spec = importlib.util.spec_from_file_location("tuning_set", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.write(tmp_path / "tune16")
    labels = [lab for _, lab in rows]
    assert len(rows) == 16 and labels[:8] == [lab for _, lab in BUILTIN_PHOTOS] and len(set(labels)) == 16
    data = load_data(DataConfig(source=str(tmp_path / "tune16"), size=32, batch_size=16))
    assert data.images.shape == (16, 3, 32, 32)
    assert data.labels.tolist() == [lab for _, lab in rows]
    diff = (data.images[:8] - data.images[8:]).abs().flatten(1).mean(1)
    assert bool((diff > 0.02).all()), diff  # the quarter crop is another image, not a copy of the centre
