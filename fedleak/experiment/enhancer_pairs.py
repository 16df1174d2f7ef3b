"""Training pairs for the learned ROG enhancer: the real ``rog`` attack run on simulated clients.

:func:`make_pairs` runs the ``rog`` attack on batches of random training crops (:mod:`fedleak.enhance.data`)
under a mix of obfuscations (:data:`OBFUSCATIONS`) and stores (attack output, clean crop) pairs -- the
degradation the enhancer has to undo, measured rather than guessed. It builds :class:`~fedleak.experiment.case.Case`s
and scores with :mod:`fedleak.metrics`, so it sits in the experiment layer; the enhancer's training
(:mod:`fedleak.enhance.train`) only reads the cache (:func:`fedleak.enhance.data.load_pairs`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from fedleak.attacks import attack
from fedleak.client.data import ImageSet
from fedleak.enhance.data import crops_tensor, load_pairs, load_photos
from fedleak.experiment.case import Case
from fedleak.metrics import evaluate

#: obfuscations used for training pairs; the same settings as benchmarks/enhancer.py
OBFUSCATIONS: dict[str, dict] = {
    "none": {"obfuscation": []},
    "qsgd16": {"obfuscation": [{"name": "qsgd", "levels": 16}]},
    "qsgd4": {"obfuscation": [{"name": "qsgd", "levels": 4}]},
    "topk99": {"obfuscation": [{"name": "topk", "sparsity": 0.99}]},
    "sign": {"obfuscation": [{"name": "sign"}], "attack": {"sign_iterations": 100}},
    "fedavg5": {"obfuscation": [], "protocol": {"name": "fedavg", "local_steps": 5, "lr": 0.003}},
}
#: default pair batches: (obfuscation, batch size); sign (300 iterations) and FedAvg (5 unrolled steps) are
#: several times slower per image, so they get batches of 8 (the benchmark has a batch of 8 too)
DEFAULT_PAIR_PLAN: list[tuple[str, int]] = [
    ("none", 16), ("qsgd4", 16), ("sign", 8), ("topk99", 16), ("fedavg5", 8), ("qsgd16", 16),
]


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


def make_pairs(data: str, path: str | Path, plan: Optional[list[tuple[str, int]]] = None, seed: int = 0,
               size: int = 128, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Run the ``rog`` attack on random training crops and append (attack output, crop) batches to ``path``.

    ``plan`` lists (obfuscation, batch size) per batch. Batch ``i`` uses crops drawn with seed
    ``(seed, i)``, random labels and a LeNet initialised with seed ``1000 + seed * 100 + i`` (never the
    evaluation's model seed 0). Already cached batches (same index, obfuscation and size) are kept, so an
    interrupted run resumes. Returns the cache dict ``{"batches": [{"obf", "inputs", "targets", ...}]}``.
    """
    plan = list(plan or DEFAULT_PAIR_PLAN)
    path = Path(path)
    blob = load_pairs(path) if path.is_file() else {"batches": [], "data": data, "seed": seed}
    photos, names = load_photos(data)
    bar = None
    if progress:
        from fedleak.progress import Bar  # a bar on a terminal, a plain line every N seconds otherwise

        bar = Bar(len(plan), "attack pairs", unit="batch")
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
        rec = attack(cfg["attack"], case.server_view(), update)
        dt = time.perf_counter() - t0
        m = evaluate(x, rec)
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
