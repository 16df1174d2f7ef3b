"""Issue 7: fuzzed inputs. Random configs, ``--set`` overrides, YAML bytes and image files: there is never a
traceback, only one clear error line (``FedleakError`` from the API, exit 2 + one stderr line from the CLI)."""
from __future__ import annotations

import contextlib
import io
import os
import random
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fedleak import cli
from fedleak.attacks import ATTACKS, Reconstruction
from fedleak.config.schema import apply_override, load_config
from fedleak.client.data import load_folder, load_image
from fedleak.errors import ConfigError, DataError, FedleakError

from conftest import GREY_ATTACK as FAKE  # noqa: E402


@pytest.fixture(autouse=True)
def _threads(keep_threads):
    yield


#: examples per fuzz test; raise it for a longer hunt, e.g. FEDLEAK_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py
N = int(os.environ.get("FEDLEAK_FUZZ_EXAMPLES", "150"))
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=N)


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, repr(msg)
    return msg


def _load(**kw):
    """load_config must succeed or raise a FedleakError with a one-line message; nothing else escapes."""
    try:
        return load_config(**kw)
    except FedleakError as e:
        _one_line(e)
        return None


# ------------------------------------------------------------------------------------------ configs
NAMES = ["rog", "dlg", "idlg", "inverting-gradients", "lenet", "resnet18", "convnet", "qsgd", "topk", "sign",
         "gaussian", "fedavg", "fedsgd", "crop", "stretch", "none", "honest", "malicious-imprint", "relu", "nope"]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 1, 2, 3, 4096, 10**9, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.5, 1e-300, 1e300]),
    st.text(max_size=10), st.sampled_from(NAMES + ["1e400", "-1", "nan", "", "qsgd(8) -> topk(0.5)", "clip("]),
)
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.sampled_from(["name", "levels", "x"]) | st.text(max_size=6), c, max_size=3)),
                      max_leaves=6)
SECTIONS = {
    "seed": None, "threads": None, "obfuscation": ["name", "levels", "sparsity", "sigma", "max_norm"],
    "data": ["source", "size", "batch_size", "start", "seed", "shuffle", "labels", "resize", "subject_only", "segmenter",
             "sam_checkpoint", "bogus"],
    "model": ["name", "num_classes", "width", "activation", "seed", "options", "bogus"],
    "protocol": ["name", "lr", "local_steps", "local_batch_size", "epochs", "share_labels", "send"],
    "attack": ["name", "iterations", "lr", "restarts", "scale", "on_nan", "dtype", "checkpoint", "checkpoint_every",
               "callback_every", "seed", "layer_weights", "threads", "big_threshold", "optimizer", "tv", "labels"],
    "enhancer": ["name"], "metrics": ["psnr_cap", "match"], "server": ["name", "bins"],
    "output": ["dir", "name", "save_update"], "bogus": None,
}


@st.composite
def raw_configs(draw):
    raw = {}
    for top in draw(st.lists(st.sampled_from(list(SECTIONS)), max_size=5, unique=True)):
        keys = SECTIONS[top]
        if keys is None or draw(st.integers(0, 4)) == 0:
            raw[top] = draw(values)  # anything at all, also where a mapping belongs
        else:
            sec = {k: draw(values) for k in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))}
            if top in ("attack", "model", "server", "enhancer") and draw(st.booleans()):
                sec["name"] = draw(st.sampled_from(NAMES))
            raw[top] = [sec] if top == "obfuscation" else sec
    return raw


@FUZZ
@given(raw_configs())
def test_fuzz_config_dicts(raw):
    _load(base=raw)


keys = st.lists(st.sampled_from(["seed", "data", "size", "batch_size", "model", "name", "attack", "iterations",
                                 "obfuscation", "0", "5", "-1", "levels", "protocol", "lr", "metrics", "x", "",
                                 " ", "checkpoint_every", "output"]), min_size=1, max_size=4).map(".".join)
texts = st.one_of(st.text(max_size=16), st.sampled_from([
    "[1, 2", "{a: 1}", "1e999", "-5", "0", "null", "[]", "{}", "&a [*a]", "{name: qsgd, levels: 1e10}", "nan",
    "999999999999999999999999", ".inf", "qsgd(8) -> topk(", "a=b=c", "topk(0.5, 1)", "qsgd(levels=)", "rog",
    "!!python/object/apply:os.getcwd []", "{name: rog, iterations: 0}", "- x"]))
assignments = st.one_of(st.tuples(keys, texts).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=16))


@FUZZ
@given(st.lists(assignments, max_size=4))
def test_fuzz_set_overrides(overrides):
    cfg = _load(base={"attack": {"name": "rog", "iterations": 2}}, overrides=overrides)
    if cfg is not None:  # what validated is a complete, consistent config
        assert cfg.data.size >= 4 and cfg.data.batch_size >= 1 and cfg.attack["name"] in ATTACKS


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 raw_configs().map(lambda r: yaml.safe_dump(r).encode())))
def test_fuzz_yaml_files(data):
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        p = Path(d) / "c.yaml"
        p.write_bytes(data)
        _load(path=p)


@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=max(1, N // 3))
@given(st.lists(assignments, max_size=3), raw_configs())
def test_fuzz_cli_check(overrides, raw):
    """``fedleak run CONFIG --check --set=...``: exit 0, or exit 2 with exactly one stderr line; never writes."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        raw = dict(raw)
        raw["output"] = {"dir": str(Path(d) / "out")}
        p = Path(d) / "c.yaml"
        p.write_text(yaml.safe_dump(raw))
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = cli.main(["run", str(p), "--check", *[f"--set={o}" for o in overrides]])
        e = err.getvalue()
        assert rc in (0, 2), (rc, e)
        if rc == 2:
            assert e.startswith("fedleak: error: ") and e.count("\n") == 1, e
        else:
            assert e == "" and out.getvalue().startswith("config OK")
        assert not (Path(d) / "out").exists()


# values that used to pass validation and then crash deep inside the attack with a traceback
@pytest.mark.parametrize("override, needle", [
    ("attack.callback_every=0", "callback_every must be >= 1"),
    ("attack.checkpoint_every=0", "checkpoint_every"),
    ("attack.big_threshold=x", "big_threshold must be an integer"),
    ("attack.seed=x", "seed must be an integer"),
    ("attack.seed=-1", "seed must be between"),
    ("attack.checkpoint=123", "checkpoint must be a string"),
    ("attack.layer_weights=[1, 2]", "layer_weights must map"),
    ("attack.layer_weights={fc: x}", "layer_weights must map"),
    ("attack.threads=-1", "threads must be >= 1"),
    ("attack.max_nan_restarts=x", "max_nan_restarts must be an integer"),
    ("attack.lr=true", "lr must be a finite number"),
    ("attack.line_search=foo", "line_search"),
    ("attack.final_lr_factor=-1", "final_lr_factor must be >= 0"),
    ("attack.iterations=2.5", "iterations"),
    ("attack.resume=maybe", "resume must be true or false"),
    ("data.size=0", "data.size"),
    ("data.batch_size=-3", "data.batch_size"),
    ("data.size=100000", "data.size"),
    ("model.num_classes=1e12", "num_classes"),
    ("protocol.local_steps=0", "local_steps"),
    ("seed=1e400", "seed"),
    ("obfuscation.3.levels=2", "not a valid index"),
    ("seed.x=1", "seed"),
    ("nonsense", "key=value"),
    ("model.nmae=lenet", "unknown key"),
])
def test_bad_values_fail_at_load_in_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(base={"attack": {"name": "rog"}, "obfuscation": []}, overrides=[override])
    assert needle in _one_line(e.value)


@pytest.mark.parametrize("override", ["obfuscation.0.levels.x=1", "data.size.x=3", "=3", "a..b=1", "obfuscation.x=1",
                                      "obfuscation.0=", "attack=[1, 2]", "data=oops"])
def test_overrides_on_odd_structures(override):
    raw = {"obfuscation": ["qsgd(8)"], "data": {"size": 16}, "attack": {"name": "rog"}}
    with pytest.raises(ConfigError) as e:
        load_config(base=raw, overrides=[override])
    _one_line(e.value)


def test_override_into_a_non_mapping_root():
    with pytest.raises(ConfigError, match="not a valid index"):
        apply_override([], "x=1")
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, 42)


# ------------------------------------------------------------------------------------------- images
def _png_header_only(path: Path, w: int, h: int) -> None:
    """A tiny PNG that declares w x h pixels (a decompression bomb as far as the header goes)."""
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _rgb(h=20, w=26):
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def _jpeg_bytes():
    b = io.BytesIO()
    Image.fromarray(_rgb()).save(b, "JPEG", quality=95)
    return b.getvalue()


BAD_IMAGES = {
    "corrupt": (lambda d: (d / "a.png").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(400))),
                "not a readable image"),
    "truncated": (lambda d: (d / "a.jpg").write_bytes(_jpeg_bytes()[:400]), "cannot read image"),
    "zero-byte": (lambda d: (d / "a.png").write_bytes(b""), "not a readable image"),
    "bomb": (lambda d: _png_header_only(d / "a.png", 30_000, 30_000), "image too large"),
    "bomb-1x-2x": (lambda d: _png_header_only(d / "a.png", 11_000, 10_000), "image too large"),
    "empty-folder": (lambda d: None, "has no images"),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_images_are_one_line_data_errors(tmp_path, capsys, kind):
    make, needle = BAD_IMAGES[kind]
    d = tmp_path / "imgs"
    d.mkdir()
    make(d)
    with pytest.raises(DataError) as e:
        load_folder(d, 16, labels="none")
    assert needle in _one_line(e.value)
    rc = cli.main(["run", "--out", str(tmp_path / "run"), "-q", "--set", f"data.source={d}", "--set", "data.labels=none",
                   "--set", "data.size=16", "--set", f"attack.name={FAKE}", "--set", "threads=1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("fedleak: error: ") and err.count("\n") == 1 and needle in err
    assert not (tmp_path / "run" / "COMPLETE").exists()


@pytest.mark.parametrize("kind", ["gray", "gray16", "rgba", "huge-but-allowed"])
def test_unusual_but_valid_images_load_as_rgb(tmp_path, kind):
    d = tmp_path / kind
    d.mkdir()
    if kind == "gray":
        Image.fromarray(_rgb()[..., 0]).save(d / "a.png")
    elif kind == "gray16":
        Image.fromarray(np.full((20, 26), 1000, dtype=np.uint16)).save(d / "a.png")
    elif kind == "rgba":
        Image.fromarray(np.dstack([_rgb(), np.zeros((20, 26), np.uint8)])).save(d / "a.png")
    else:  # 4000 x 3000 = 12 Mpixel: below the bomb limit, decoded then resized
        Image.new("RGB", (4000, 3000), (10, 200, 30)).save(d / "a.png")
    x = load_folder(d, 16, labels="none").images
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    if kind == "gray":
        assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])
    elif kind == "gray16":
        assert torch.allclose(x, torch.full_like(x, 1000 / 65535), atol=1 / 255)  # scaled by 65535, not by max
    elif kind == "rgba":
        assert torch.all(x == 1.0)  # fully transparent: composited on white
    else:
        assert torch.allclose(x[0, :, 8, 8], torch.tensor([10, 200, 30]) / 255.0, atol=1 / 255)


@FUZZ
@given(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"]), st.data())
def test_fuzz_damaged_image_files(fmt, data):
    """Bit flips, truncation and overwritten runs in valid files of every format: load or DataError."""
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, fmt)
    b = bytearray(buf.getvalue())
    how = data.draw(st.sampled_from(["flip", "truncate", "overwrite"]))
    if how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=20)):
            b[i] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        b = b[: data.draw(st.integers(0, len(b) - 1))]
    else:
        i = data.draw(st.integers(0, len(b) - 1))
        b[i: i + 16] = data.draw(st.binary(min_size=16, max_size=16))
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        p = Path(d) / f"x.{fmt.lower()}"
        p.write_bytes(bytes(b))
        try:
            x = load_image(p, 16)
        except DataError as e:
            _one_line(e)
        else:
            assert x.shape == (3, 16, 16) and torch.isfinite(x).all()


def test_recursive_and_exponential_yaml_anchors_are_refused(tmp_path):
    """Found by the fuzzer: ``--set metrics.seed='&0 [*0]'`` (a list containing itself) escaped as a pydantic
    ValueError. The exponential cousin ("billion laughs": 9 levels of 9 aliases = 387 M values from 432 bytes)
    would hang the serialiser; both are refused up front."""
    with pytest.raises(ConfigError, match="contains itself") as e:
        load_config(base={}, overrides=["metrics.seed=&0 [*0]"])
    _one_line(e.value)
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    p = tmp_path / "laughs.yaml"
    p.write_text("model:\n  options:\n" + "".join(f"    {line}\n" for line in lines))
    assert len(p.read_bytes()) < 500
    with pytest.raises(ConfigError, match="too large"):
        load_config(p)
    deep = "x"
    for _ in range(200):
        deep = f"[{deep}]"
    with pytest.raises(ConfigError, match="nested more than"):
        load_config(base={}, overrides=[f"model.options={{a: {deep}}}"])


# ------------------------------------------- issue 16: deep nesting, huge numbers, duplicate keys, obfuscation
#: the issue-16 generators make big inputs (5000-deep YAML): fewer examples keep the file CI-sized (a few s)
FUZZ16 = settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=max(1, N // 5))


def _nest(depth: int, kind: str, leaf: str = "1") -> str:
    """``depth`` levels of YAML: flow ``[[[1]]]``, ``{a: {a: 1}}``, alternating, or block ``- - - 1``."""
    if kind == "-":
        return "- " * depth + leaf
    s = leaf
    for i in range(depth):
        k = kind if kind != "mixed" else "[{"[i % 2]
        s = f"[{s}]" if k == "[" else f"{{a: {s}}}"
    return s


deep_values = st.builds(_nest, st.sampled_from([1, 49, 51, 200, 999, 1001, 5000]) | st.integers(0, 6000),
                        st.sampled_from(["[", "{", "mixed", "-"]))
huge_numbers = st.builds(lambda sign, n, tail: sign + "9" * n + tail, st.sampled_from(["", "-", "+"]),
                         st.sampled_from([300, 401, 4300, 4301, 5000]) | st.integers(1, 6000),
                         st.sampled_from(["", ".5", "e5", "e-3", ".0e400"]))
#: values 16/4 are valid, everything else makes the step malformed or wrong
OBF_TOKENS = ["qsgd", "gaussian", "topk", "clip", "ldp", "sign", "none", "nope", "(", ")", ",", "=", "->", "→",
              "levels", "sigma", "sparsity", "max_norm", "16", "4", "1e-3", "0.5", "-1", "'", '"', "[", "]", "{",
              "}", " ", "x", "1e999", "levels=8", "sigma=0.01"]
obf_strings = st.lists(st.sampled_from(OBF_TOKENS), max_size=12).map("".join)


def _fedleak_error_only(fn):
    """``fn()`` returns, or raises a FedleakError with a one-line message; nothing else (no RecursionError,
    ValueError, TypeError) escapes."""
    try:
        return fn()
    except FedleakError as e:
        _one_line(e)
        return None


@FUZZ16
@given(st.sampled_from(["seed", "data", "model.options", "attack", "obfuscation", "protocol.lr"]),
       deep_values | huge_numbers)
def test_fuzz_deep_nesting_and_huge_numbers(key, value):
    """Through a config file, a ``--set`` value and a sweep file (the three YAML entry points)."""
    from fedleak.experiment.sweep import load_sweep

    _fedleak_error_only(lambda: load_config(base={}, overrides=[f"{key}={value}"]))
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        top, _, rest = key.partition(".")
        text = f"{top}:\n  {rest}: {value}\n" if rest else f"{top}: {value}\n"
        (Path(d) / "c.yaml").write_text(text)
        _fedleak_error_only(lambda: load_config(Path(d) / "c.yaml"))
        (Path(d) / "s.yaml").write_text(f"set: ['{key}={value}']\ngrid:\n  {key}: [{value}]\n")
        _fedleak_error_only(lambda: load_sweep(Path(d) / "s.yaml"))


@FUZZ16
@given(st.lists(st.sampled_from(["seed", "data", "model", "threads", "size", "name", "lr", "1", "true", "null"]),
                min_size=1, max_size=6), st.integers(0, 5), st.booleans())
def test_fuzz_duplicate_keys_are_refused(keys, dup, nested):
    """A mapping with a key given twice (top level or nested) is refused, never silently takes the last value."""
    keys = keys + [keys[dup % len(keys)]]  # at least one duplicate
    body = "".join(f"{'  ' if nested else ''}{k}: 1\n" for k in keys)
    text = ("data:\n" + body) if nested else body
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        p = Path(d) / "c.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match="given twice") as e:
            load_config(p)
        _one_line(e.value)


@FUZZ16
@given(obf_strings)
def test_fuzz_malformed_obfuscation_strings(text):
    """The obfuscation parser (directly, and as a ``--set`` value through the config) returns steps or raises a
    one-line ConfigError; what it accepts has balanced brackets and no argument given twice."""
    from fedleak.config.schema import parse_pipeline

    steps = _fedleak_error_only(lambda: parse_pipeline(text))
    if steps is not None:
        assert text.count("(") == text.count(")") or "'" in text or '"' in text
        for s in steps:
            assert isinstance(s, dict) and isinstance(s.get("name"), str)
    _fedleak_error_only(lambda: load_config(base={}, overrides=[f"obfuscation={text}"]))
