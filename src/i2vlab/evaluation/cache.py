"""Per-video feature cache: one small ``.pt`` file per (video, extractor signature, clip settings).

A killed evaluation re-run with the same ``cache_dir`` reads what was already extracted and only
computes the rest. Files are written atomically (tmp + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def make_key(*parts) -> str:
        return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()

    def _path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key[:2] / f"{key}.pt"

    def get(self, namespace: str, key: str):
        if self.root is None:
            self.misses += 1
            return None
        p = self._path(namespace, key)
        if p.exists():
            try:
                out = torch.load(p, map_location="cpu", weights_only=True)
                self.hits += 1
                return out
            except Exception:  # a truncated file from a kill: recompute
                p.unlink(missing_ok=True)
        self.misses += 1
        return None

    def put(self, namespace: str, key: str, value) -> None:
        if self.root is None:
            return
        p = self._path(namespace, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        torch.save(value, tmp)
        os.replace(tmp, p)
