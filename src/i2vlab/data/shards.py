"""Writing WebVid-style webdataset shards: ``<key>.mp4`` + ``<key>.txt`` (caption) + ``<key>.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import webdataset as wds


def shard_pattern(out_dir: str | os.PathLike, prefix: str = "shard") -> str:
    return str(Path(out_dir) / f"{prefix}-%06d.tar")


def make_sample(key: str, mp4: bytes, caption: str, meta: dict) -> dict:
    if "." in key:
        raise ValueError(f"sample keys must not contain '.', got {key!r} (webdataset splits on it)")
    return {"__key__": key, "mp4": mp4, "txt": caption, "json": json.dumps(meta, sort_keys=True)}


def list_shards(path: str | os.PathLike) -> list[str]:
    """Shards under a folder (``*.tar``, sorted), a single tar, or a brace pattern (returned as is)."""
    p = Path(path)
    if p.is_dir():
        shards = sorted(str(s) for s in p.glob("*.tar"))
        if not shards:
            raise FileNotFoundError(
                f"no .tar shards in {p}; build some with `make toy-data` or scripts/videos_to_shards.py"
            )
        return shards
    if "{" in str(path):
        return list(wds.shardlists.expand_urls(str(path)))
    if p.is_file():
        return [str(p)]
    raise FileNotFoundError(f"shard path {path} does not exist; build toy shards with `make toy-data`")
