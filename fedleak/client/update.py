"""What the client sends: :class:`Update`, the upload plus the metadata the server knows about it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from fedleak.errors import DataError

#: key prefix of the uploaded buffers (BatchNorm running statistics) in a saved update file
BUFFER_PREFIX = "buffers::"


@dataclass
class Update:
    """A client's upload plus the metadata the server knows about it.

    ``tensors`` is keyed by parameter name in model order. ``kind`` is ``gradient`` (FedSGD),
    ``delta`` (FedAvg: theta0 - theta_tau) or ``pseudo-gradient`` (FedAvg: (theta0 - theta_tau) / lr).
    ``labels`` is set only when the scenario shares labels with the server. ``buffers`` (FedAvg only): the
    model's buffers after local training, i.e. the BatchNorm running statistics (``running_mean``,
    ``running_var``, ``num_batches_tracked``) the client uploads with its weights; obfuscations apply to
    ``tensors`` only. Saved under the key prefix :data:`BUFFER_PREFIX`.
    """

    tensors: dict[str, torch.Tensor]
    kind: str = "gradient"
    protocol: str = "fedsgd"
    lr: Optional[float] = None
    local_steps: int = 1
    epochs: int = 1
    local_batch_size: Optional[int] = None
    batch_size: int = 1
    num_examples: int = 1
    labels: Optional[torch.Tensor] = None
    obfuscation: list[dict] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def meta(self) -> dict:
        return {
            "kind": self.kind,
            "protocol": self.protocol,
            "lr": self.lr,
            "local_steps": self.local_steps,
            "epochs": self.epochs,
            "local_batch_size": self.local_batch_size,
            "batch_size": self.batch_size,
            "num_examples": self.num_examples,
            "labels": None if self.labels is None else self.labels.tolist(),
            "obfuscation": self.obfuscation,
            "stats": self.stats,
        }

    def save(self, path: str | Path, server: Optional[dict] = None) -> None:
        """Write the update as sent (:mod:`fedleak.client.update_io`: sparse, quantised or sign updates in their
        wire form, verified to decode exactly), with its metadata; ``server``: what the server knows about the
        model it sent (model name, keyword arguments, input shape), so that ``fedleak attack`` can rebuild it."""
        from safetensors.torch import save_file

        from fedleak.client.update_io import CODEC_KEY, META_KEY, SERVER_KEY, encode
        from fedleak.io import atomic_path

        tensors = {**self.tensors, **{BUFFER_PREFIX + k: v for k, v in self.buffers.items()}}  # buffers: dense
        parts, header = encode(tensors, self.obfuscation)
        meta = {META_KEY: json.dumps(self.meta()), CODEC_KEY: json.dumps(header)}
        if server is not None:
            meta[SERVER_KEY] = json.dumps(server)
        with atomic_path(path) as tmp:
            save_file(parts, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "Update":
        from fedleak.client.update_io import read_tensors

        p = Path(path)
        if not p.is_file():
            raise DataError(f"update file {str(p)!r} not found")
        tensors, meta = read_tensors(p)
        meta.pop("server", None)
        labels = meta.pop("labels", None)
        buffers = {k[len(BUFFER_PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(BUFFER_PREFIX)}
        return cls(tensors=tensors, labels=None if labels is None else torch.tensor(labels), buffers=buffers,
                   **meta)
