"""Updates on disk as they are sent: a small versioned, tensors-only format, and the reader of foreign update files.

A fedleak update file is a safetensors file (no code can run when it is read) whose JSON metadata carries the
update's protocol metadata (``fedleak_update``) and, since version 1, a codec header (``fedleak_codec``) that
says how each tensor was written. Each tensor is stored in the form its obfuscation puts on the wire:

========== ================================================================ ===============================
codec      stored parts (``NAME:part`` in the file)                          written for
========== ================================================================ ===============================
``dense``  ``values``: the tensor as is                                      no compressing step, noise, DP
``sparse`` ``values`` (the non-zero entries) and their positions: ``index``   ``topk``, ``randk``, ``prune``
           (int32) or ``mask`` (a packed bitmap), whichever is smaller
``sign``   ``bits`` (one packed bit per entry) and ``scale`` (float32)       ``sign``
``levels`` ``codes``: the signed level index of every entry, offset to be    ``uniform``, ``qsgd``
           non-negative and packed at ``ceil(log2(2 levels - 1))`` bits,
           and ``scale`` (float32: max|g| for uniform, the step N/q for qsgd)
========== ================================================================ ===============================

Every encoding is checked when it is written: the decoded tensor must equal the in-memory one exactly
(``torch.equal``), or the tensor is written dense instead. A file without ``fedleak_codec`` (before version 1)
holds dense tensors under their own names and is read as such.

This module is pure tensors and dicts (:func:`encode`, :func:`decode`); :meth:`fedleak.client.update.Update.save`
and :meth:`~fedleak.client.update.Update.load` use it. :func:`read_tensor_file` reads an update saved by any
PyTorch FL code (safetensors, or ``torch.save`` read with ``weights_only=True``: a pickle is never executed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import torch

from fedleak.errors import DataError

FORMAT = "fedleak-update"
VERSION = 1
#: metadata keys of a fedleak update file
META_KEY, CODEC_KEY, SERVER_KEY = "fedleak_update", "fedleak_codec", "fedleak_server"
#: codes packed per chunk (a multiple of 8, so every chunk starts on a byte boundary)
_CHUNK = 1 << 20
#: the obfuscation whose output each codec writes (the last update step of the pipeline decides)
_CODEC_OF = {"uniform": "levels", "qsgd": "levels", "sign": "sign", "topk": "sparse", "randk": "sparse",
             "prune": "sparse"}
SAFETENSORS_SUFFIXES = (".safetensors", ".st")

Parts = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------- bit packing
def pack(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Non-negative integer ``codes`` (< 2**width) packed little-endian at ``width`` bits each into uint8."""
    flat = codes.reshape(-1).to(torch.int64)
    shifts = torch.arange(width, dtype=torch.int64)
    weights = (1 << torch.arange(8, dtype=torch.int64))
    out = []
    for s in range(0, flat.numel(), _CHUNK):
        bits = ((flat[s:s + _CHUNK].unsqueeze(1) >> shifts) & 1).reshape(-1)
        pad = (-bits.numel()) % 8
        if pad:
            bits = torch.cat([bits, bits.new_zeros(pad)])
        out.append((bits.view(-1, 8) * weights).sum(1).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def unpack(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """The ``n`` codes of :func:`pack` (int64)."""
    if data.dtype != torch.uint8 or data.numel() * 8 < n * width:
        raise DataError(f"packed codes too short: {data.numel()} byte(s) for {n} code(s) of {width} bit(s)")
    shifts8 = torch.arange(8, dtype=torch.int64)
    shifts = torch.arange(width, dtype=torch.int64)
    out = []
    step = _CHUNK * width // 8  # bytes per chunk of _CHUNK codes
    for i, s in enumerate(range(0, n, _CHUNK)):
        m = min(_CHUNK, n - s)
        chunk = data[i * step: i * step + math.ceil(m * width / 8)].to(torch.int64)
        bits = ((chunk.unsqueeze(1) >> shifts8) & 1).reshape(-1)[: m * width].view(m, width)
        out.append((bits << shifts).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def level_bits(levels: int) -> int:
    """Bits of one signed level index in {-(levels-1), ..., levels-1} (as the obfuscations count them)."""
    return max(1, math.ceil(math.log2(2 * levels - 1)))


# ----------------------------------------------------------------------------------------- the codecs
def _enc_sparse(t: torch.Tensor) -> tuple[Parts, dict]:
    flat = t.reshape(-1)
    pos = torch.nonzero(flat != 0).reshape(-1)
    parts: Parts = {"values": flat[pos].contiguous()}
    n, k = flat.numel(), pos.numel()
    if k * 32 < n:  # a list of 32-bit indices is cheaper than an n-bit bitmap
        parts["index"] = pos.to(torch.int32 if n < 2**31 else torch.int64)
        return parts, {"positions": "index"}
    mask = torch.zeros(n, dtype=torch.int64)
    mask[pos] = 1
    parts["mask"] = pack(mask, 1)
    return parts, {"positions": "mask"}


def _dec_sparse(parts: Parts, h: dict, n: int, dtype: torch.dtype) -> torch.Tensor:
    pos = parts["index"].to(torch.int64) if h.get("positions") == "index" else \
        torch.nonzero(unpack(parts["mask"], 1, n)).reshape(-1)
    vals = parts["values"]
    if pos.numel() != vals.numel() or (pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= n)):
        raise DataError("sparse tensor: positions do not match the values or the shape")
    out = torch.zeros(n, dtype=dtype)
    out[pos] = vals.to(dtype)
    return out


def _enc_sign(t: torch.Tensor) -> Optional[tuple[Parts, dict]]:
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return None
    scale = flat[0].abs().reshape(1)
    return {"bits": pack((flat > 0).to(torch.int64), 1), "scale": scale.contiguous()}, {}


def _dec_sign(parts: Parts, h: dict, n: int, dtype: torch.dtype) -> torch.Tensor:
    pos = unpack(parts["bits"], 1, n).bool()
    s = torch.where(pos, torch.ones(n, dtype=dtype), -torch.ones(n, dtype=dtype))
    return s * parts["scale"].to(dtype).reshape(())


def _step_candidates(flat: torch.Tensor, form: str) -> list[torch.Tensor]:
    """The scale of a quantised tensor, from its values: uniform's M is max|g| exactly (its top entry has
    level q); QSGD's step N/q is the smallest non-zero magnitude when level 1 occurs, else max|g| / K."""
    mag = flat.abs()
    b = mag.max()
    if form == "uniform":
        return [b]
    nz = mag[mag > 0]
    if nz.numel() == 0:
        return []
    a = nz.min()
    cands = [a]
    k = torch.round(b / a)
    if k > 0:
        c = b / k
        up, down = c.clone(), c.clone()
        cands.append(c)
        for _ in range(2):  # a few ulps either way (the division rounds)
            up, down = torch.nextafter(up, b * 2), torch.nextafter(down, torch.zeros_like(b))
            cands += [up, down]
    return cands


def _dequant(codes: torch.Tensor, scale: torch.Tensor, q: int, form: str) -> torch.Tensor:
    """Signed level codes -> values, with the very float operations of the obfuscation (bit-identical)."""
    c = codes.to(scale.dtype)
    if form == "uniform":
        return torch.sign(c) * ((c.abs() / q) * scale)
    return c * scale


def _enc_levels(t: torch.Tensor, q: int, form: str) -> Optional[tuple[Parts, dict]]:
    flat = t.reshape(-1)
    if flat.numel() == 0 or q < 1:
        return None
    for scale in _step_candidates(flat, form):
        if not (scale > 0 and torch.isfinite(scale)):
            continue
        ratio = flat.abs() / scale * (q if form == "uniform" else 1)
        codes = (torch.sign(flat) * torch.round(ratio)).to(torch.int64)
        if codes.abs().max() > q:
            continue
        if torch.equal(_dequant(codes, scale, q, form), flat):
            width = level_bits(q + 1)
            return ({"codes": pack(codes + q, width), "scale": scale.reshape(1).contiguous()},
                    {"q": q, "form": form, "width": width})
    return None


def _dec_levels(parts: Parts, h: dict, n: int, dtype: torch.dtype) -> torch.Tensor:
    q, width, form = int(h["q"]), int(h["width"]), str(h["form"])
    codes = unpack(parts["codes"], width, n) - q
    return _dequant(codes, parts["scale"].to(dtype).reshape(()), q, form)


_DECODERS = {"sparse": _dec_sparse, "sign": _dec_sign, "levels": _dec_levels}


def _last_step(obfuscation: list[dict]) -> dict:
    steps = [s for s in (obfuscation or []) if isinstance(s, dict) and s.get("name") != "dpsgd"]
    return steps[-1] if steps else {}


def _try(codec: str, t: torch.Tensor, step: dict) -> Optional[tuple[Parts, dict]]:
    if codec == "sparse":
        return _enc_sparse(t)
    if codec == "sign":
        return _enc_sign(t)
    if codec == "levels":
        return _enc_levels(t, int(step.get("levels", 0)) - 1, str(step.get("name")))
    return None


def _nbytes(parts: Parts) -> int:
    return sum(p.numel() * p.element_size() for p in parts.values())


def encode(tensors: dict[str, torch.Tensor], obfuscation: Optional[list[dict]] = None) -> tuple[Parts, dict]:
    """``(parts, header)``: each tensor in the wire form of the pipeline's last update step (see the module
    table), or dense when that form is not smaller or does not decode to exactly the same tensor."""
    step = _last_step(obfuscation or [])
    want = _CODEC_OF.get(str(step.get("name")), "dense")
    parts: Parts = {}
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "tensors": {}}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        entry = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "codec": "dense"}
        chosen: Parts = {"values": t}
        for codec in ([want] if want != "dense" else []) + (["sparse"] if want != "sparse" else []):
            if t.dtype != torch.float32:
                break
            got = _try(codec, t, step)
            if got is None or _nbytes(got[0]) >= _nbytes(chosen):
                continue
            dec = _DECODERS[codec](got[0], got[1], t.numel(), t.dtype).view(t.shape)
            if torch.equal(dec, t):
                chosen, entry = got[0], {**entry, "codec": codec, **got[1]}
                break
        header["tensors"][name] = entry
        for part, v in chosen.items():
            parts[f"{name}:{part}"] = v
    return parts, header


def decode(parts: Parts, header: dict) -> dict[str, torch.Tensor]:
    """The tensors of :func:`encode` (exactly the in-memory ones); DataError on a malformed file."""
    if header.get("format") != FORMAT or not isinstance(header.get("tensors"), dict):
        raise DataError("not a fedleak update codec header")
    if int(header.get("version", 0)) > VERSION:
        raise DataError(f"update format version {header.get('version')} is newer than this fedleak reads "
                        f"({VERSION}); upgrade fedleak")
    out = {}
    for name, h in header["tensors"].items():
        shape = [int(s) for s in h["shape"]]
        dtype = getattr(torch, str(h["dtype"]))
        mine = {k.split(":")[-1]: v for k, v in parts.items() if k.rsplit(":", 1)[0] == name}
        codec = h.get("codec")
        try:
            if codec == "dense":
                t = mine["values"]
            elif codec in _DECODERS:
                t = _DECODERS[codec](mine, h, math.prod(shape), dtype)
            else:
                raise DataError(f"unknown codec {codec!r}")
            out[name] = t.reshape(shape).to(dtype)
        except (KeyError, RuntimeError, ValueError) as e:
            raise DataError(f"tensor {name!r} ({codec}) cannot be decoded: {type(e).__name__}: {e}") from None
    return out


def file_metadata(path: str | Path) -> Optional[dict[str, str]]:
    """The safetensors metadata of ``path`` when it is a safetensors file, else None (nothing is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # not a safetensors file (safetensors raises assorted errors): the caller decides
        return None


def is_fedleak_update(path: str | Path) -> bool:
    """True for a file written by :meth:`~fedleak.client.update.Update.save` (``fedleak simulate``, a run)."""
    meta = file_metadata(path)
    return meta is not None and META_KEY in meta


def read_parts(path: str | Path) -> tuple[Parts, dict[str, str]]:
    """The raw tensors and metadata strings of a safetensors file (one-line DataError when unreadable)."""
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises assorted errors on bad files
        raise DataError(f"{str(p)!r} is not a valid fedleak update file: {e}") from None


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` of a fedleak update file: decoded through its codec header (version 1) or, for an
    older dense file, as stored. ``meta`` is the parsed ``fedleak_update`` JSON (with ``server`` when the
    file carries ``fedleak_server``)."""
    parts, md = read_parts(path)
    try:
        meta = json.loads(md.get(META_KEY, "{}"))
        header = json.loads(md[CODEC_KEY]) if CODEC_KEY in md else None
        if SERVER_KEY in md:
            meta["server"] = json.loads(md[SERVER_KEY])
    except ValueError as e:
        raise DataError(f"{str(path)!r}: the update's metadata is not valid JSON ({e})") from None
    tensors = decode(parts, header) if header is not None else parts
    return tensors, meta


def read_tensor_file(path: str | Path) -> dict[str, torch.Tensor] | list[torch.Tensor]:
    """An update saved by any PyTorch FL code: a safetensors file, or a ``torch.save`` of a ``state_dict``
    (possibly wrapped as ``{"state_dict": ...}``) or of a list of tensors in parameter order. ``torch.save``
    files are read with ``weights_only=True``: a file carrying pickled objects is refused, never executed."""
    from fedleak.io import torch_load_safely

    p = Path(path).expanduser()
    what = f"update file {str(p)!r}"
    if not p.is_file():
        raise DataError(f"{what} not found")
    if p.suffix.lower() in SAFETENSORS_SUFFIXES or file_metadata(p) is not None:
        parts, _ = read_parts(p)
        return parts
    obj = torch_load_safely(p, what, DataError)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return dict(obj)
    if isinstance(obj, (list, tuple)) and obj and all(torch.is_tensor(v) for v in obj):
        return list(obj)
    if isinstance(obj, dict):
        bad = next(((k, v) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))), None)
        if bad is not None:
            raise DataError(f"{what}: entry {bad[0]!r} is {type(bad[1]).__name__}, not a tensor (a parameter "
                            "without a gradient? save only tensors)")
    raise DataError(f"{what} holds {type(obj).__name__}, not a state_dict (names -> tensors) or a list of tensors")
