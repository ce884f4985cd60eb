"""Per-video feature cache: one safetensors file per (video, feature signature, clip settings).

Each entry stores its full key and a sha256 of its tensors (names, dtypes, shapes, bytes) in the
safetensors metadata. A read returns the value and a status: ``hit``, ``absent``, ``disabled`` or
``corrupt: <why>`` (unreadable, truncated, foreign key, checksum mismatch). The caller logs every miss
and corruption and recomputes; nothing is unpickled. Files are written atomically (tmp +
``os.replace``), so a killed run leaves whole entries only. Entry paths go through
:func:`i2vlab.utils.safe_load.safe_child`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from i2vlab.utils.safe_load import safe_child

FORMAT = "i2vlab-features/2"


def tensors_digest(value: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and raw bytes of ``value``."""
    h = hashlib.sha256()
    for name in sorted(value):
        t = value[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def text_tensor(text: str) -> torch.Tensor:
    """A string as a uint8 tensor (entries hold tensors only)."""
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8).clone()


def tensor_text(t: torch.Tensor) -> str:
    return bytes(t.tolist()).decode()


def note(reason: str, message: str = "") -> dict[str, torch.Tensor]:
    """An entry meaning "this feature cannot be computed for this input" (kept so warm runs know)."""
    return {"_note": text_tensor(f"{reason}\x1f{message}")}


def read_note(value: dict) -> tuple[str, str] | None:
    if "_note" not in value:
        return None
    reason, _, message = tensor_text(value["_note"]).partition("\x1f")
    return reason, message


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None

    @staticmethod
    def make_key(*parts) -> str:
        return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()

    def path(self, namespace: str, key: str) -> Path:
        return safe_child(
            self.root, f"{namespace}/{key[:2]}/{key}", ".safetensors", what="feature-cache entry"
        )

    def get(self, namespace: str, key: str) -> tuple[dict[str, torch.Tensor] | None, str]:
        if self.root is None:
            return None, "disabled"
        p = self.path(namespace, key)
        if not p.is_file():
            return None, "absent"
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                value = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # truncated, garbage, unreadable: a corrupt entry, recomputed
            return None, f"corrupt: unreadable ({type(e).__name__}: {str(e)[:120]})"
        if meta.get("format") != FORMAT or meta.get("key") != f"{namespace}/{key}":
            return None, "corrupt: foreign or old-format entry"
        if tensors_digest(value) != meta.get("sha256"):
            return None, "corrupt: checksum mismatch"
        return value, "hit"

    def put(self, namespace: str, key: str, value: dict[str, torch.Tensor]) -> None:
        if self.root is None:
            return
        from safetensors.torch import save_file

        p = self.path(namespace, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        value = {k: v.detach().cpu().clone() for k, v in value.items()}  # own storage each
        meta = {"format": FORMAT, "key": f"{namespace}/{key}", "sha256": tensors_digest(value)}
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        save_file(value, str(tmp), metadata=meta)
        os.replace(tmp, p)
