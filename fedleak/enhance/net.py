"""The learned ROG enhancer: one compact network that denoises ROG's low-resolution estimate and upsamples it x4.

Input: the attack's output at full resolution (``rec.images``: ROG's 4x-downsampled latent, bicubically
upsampled and clamped to [0, 1]). The network

1. folds every 4x4 pixel block into channels (``pixel_unshuffle``: lossless, 48 channels at 1/4 resolution,
   i.e. at the resolution of ROG's latent, where the attack's noise lives),
2. runs a small U-Net there (residual blocks at 1/4, 1/8 and 1/16 of the image size, additive skips),
3. unfolds a 48-channel residual back to full resolution (``pixel_shuffle``) and adds it to the input,
4. refines the result with a few full-resolution convolutions (sharp edges, no 4x4 block pattern).

The last layer of each branch starts at zero, so an untrained network is the identity (output = raw).

Weights are saved as ``safetensors`` with the architecture in the file's metadata (``fedleak_enhancer``) and
a JSON sidecar (``<file>.json``) describing how they were made. :func:`load` checks both the format and the
architecture and raises a one-line :class:`~fedleak.errors.DataError` / :class:`~fedleak.errors.ConfigError`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fedleak.errors import ConfigError, DataError
from fedleak.io import path_problem

ARCH_NAME = "fedleak-rog-enhancer"
ARCH_VERSION = 1
DEFAULT_ARCH: dict[str, Any] = {"name": ARCH_NAME, "version": ARCH_VERSION, "scale": 4, "width": 32,
                                "blocks": [2, 2, 2], "hr_width": 16}
META_KEY = "fedleak_enhancer"


def default_weights_path() -> Path:
    return Path(__file__).resolve().parent / "assets" / "enhancer.safetensors"


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.leaky_relu(self.c1(x), 0.1))


def _stack(c: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(c) for _ in range(n)])


class EnhancerNet(nn.Module):
    def __init__(self, scale: int = 4, width: int = 32, blocks=(2, 2, 2), hr_width: int = 16, **_ignored):
        super().__init__()
        s, c1, c2, c3 = scale, width, 2 * width, 4 * width
        self.scale = s
        self.multiple = s * 4  # two stride-2 levels below the latent resolution
        self.head = nn.Conv2d(3 * s * s, c1, 3, padding=1)
        self.enc1 = _stack(c1, blocks[0])
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.enc2 = _stack(c2, blocks[1])
        self.down2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.mid = _stack(c3, blocks[2])
        self.up2 = nn.Conv2d(c3, 4 * c2, 1)
        self.dec2 = _stack(c2, blocks[1])
        self.up1 = nn.Conv2d(c2, 4 * c1, 1)
        self.dec1 = _stack(c1, blocks[0])
        self.tail = nn.Conv2d(c1, 3 * s * s, 3, padding=1)
        self.hr = nn.Sequential(nn.Conv2d(6, hr_width, 3, padding=1), nn.LeakyReLU(0.1),
                                nn.Conv2d(hr_width, hr_width, 3, padding=1), nn.LeakyReLU(0.1),
                                nn.Conv2d(hr_width, 3, 3, padding=1))
        for m in (self.tail, self.hr[-1]):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 3, H, W) with H, W multiples of :attr:`multiple`; returns the enhanced images (not clamped)."""
        s = self.scale
        f = self.head(F.pixel_unshuffle(x - 0.5, s))
        e1 = self.enc1(f)
        e2 = self.enc2(self.down1(F.leaky_relu(e1, 0.1)))
        m = self.mid(self.down2(F.leaky_relu(e2, 0.1)))
        d2 = self.dec2(F.pixel_shuffle(self.up2(m), 2) + e2)
        d1 = self.dec1(F.pixel_shuffle(self.up1(F.leaky_relu(d2, 0.1)), 2) + e1)
        y = x + F.pixel_shuffle(self.tail(F.leaky_relu(d1, 0.1)), s)
        return y + self.hr(torch.cat([y, x], 1))

    def enhance(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (reflect) to a multiple of :attr:`multiple`, run, crop, clamp to [0, 1]."""
        h, w = x.shape[-2:]
        k = self.multiple
        ph, pw = (-h) % k, (-w) % k
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
        return self(xp)[..., :h, :w].clamp(0, 1)


def build(arch: Optional[dict] = None) -> EnhancerNet:
    a = dict(DEFAULT_ARCH if arch is None else arch)
    return EnhancerNet(scale=int(a["scale"]), width=int(a["width"]), blocks=tuple(int(b) for b in a["blocks"]),
                       hr_width=int(a["hr_width"]))


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def save(net: EnhancerNet, arch: dict, path: str | Path, info: Optional[dict] = None,
         dtype: torch.dtype = torch.float16) -> Path:
    """Write ``path`` (safetensors, architecture in the metadata) and its JSON sidecar (arch + ``info``).
    Tensors are stored as float16 by default (half the size; loaded back as float32)."""
    from safetensors.torch import save_file

    from fedleak.io import atomic_path, write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(arch, sort_keys=True)})
    sidecar = {"architecture": arch, "parameters": num_parameters(net), "dtype": str(dtype).replace("torch.", ""),
               **(info or {})}
    write_json(sidecar_path(path), sidecar)
    return path


def sidecar_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json") if p.suffix != ".safetensors" else p.with_suffix(".json")


def load(path: str | Path) -> tuple[EnhancerNet, dict]:
    """Load weights saved by :func:`save`. Errors are one line: missing file, not a safetensors file, not an
    enhancer file, or an architecture that this fedleak does not know / that does not match the tensors."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"enhancer weights {str(p)!r} {path_problem(p, 'not found')}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises assorted error types on damaged files
        raise DataError(f"enhancer weights {str(p)!r} are unreadable (not a valid safetensors file: "
                        f"{type(e).__name__})") from None
    if META_KEY not in meta:
        raise DataError(f"{str(p)!r} is a safetensors file but not fedleak enhancer weights (no {META_KEY!r} metadata)")
    try:
        arch = json.loads(meta[META_KEY])
        if arch.get("name") != ARCH_NAME or int(arch.get("version", -1)) != ARCH_VERSION:
            raise ValueError(f"architecture {arch.get('name')!r} v{arch.get('version')}")
        net = build(arch)
    except Exception as e:
        raise DataError(f"enhancer weights {str(p)!r}: unsupported architecture ({e}); expected {ARCH_NAME} "
                        f"v{ARCH_VERSION}") from None
    own = net.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shape = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or extra or shape:
        what = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {extra[:3]}" if extra else "") + \
               (f" wrong shape {shape[:3]}" if shape else "")
        raise DataError(f"enhancer weights {str(p)!r} do not match architecture {arch}: {what.strip()}")
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise DataError(f"enhancer weights {str(p)!r} contain NaN/Inf (in {bad[0]!r})")
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    net.eval()
    return net, arch
