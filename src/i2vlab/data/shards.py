"""Writing WebVid-style webdataset shards: ``<key>.mp4`` + ``<key>.txt`` (caption) + ``<key>.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from i2vlab.errors import UserError


class ShardsNotFoundError(UserError, FileNotFoundError):
    """A shard specification that names no readable shard, or only some of them."""


def shard_pattern(out_dir: str | os.PathLike, prefix: str = "shard") -> str:
    return str(Path(out_dir) / f"{prefix}-%06d.tar")


def make_sample(key: str, mp4: bytes, caption: str, meta: dict) -> dict:
    if "." in key:
        raise ValueError(f"sample keys must not contain '.', got {key!r} (webdataset splits on it)")
    return {"__key__": key, "mp4": mp4, "txt": caption, "json": json.dumps(meta, sort_keys=True)}


#: URL schemes that are streamed as given (not checked on the local file system)
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://")


def list_shards(spec: str | os.PathLike | Sequence[str], key: str = "data.train_shards") -> list[str]:
    """Resolve a shard specification to the list of shard files, checked up front.

    ``spec`` is one of, or a list of:

    - a folder (its ``*.tar``, sorted);
    - a ``.tar`` file;
    - a brace pattern (``/data/shard-{000000..000099}.tar``) or a glob (``/data/*/shard-*.tar``);
    - a text file (``.txt`` / ``.list``) naming one shard per line (relative paths are taken
      from the file's folder; ``#`` starts a comment);
    - a remote URL (``pipe:``, ``http(s)://``, ``s3://`` ...), streamed as given.

    Local shards must exist: a pattern that matches nothing, or only in part, fails here with the
    pattern, how many shards were found and the first missing file (``key`` names the config
    entry in the message), instead of failing later inside the data-loader workers.
    """
    if isinstance(spec, (str, os.PathLike)):
        specs = [os.fspath(spec)]
    else:
        specs = [os.fspath(s) for s in spec]
    if not specs:
        raise ShardsNotFoundError(f"{key} is an empty list: name at least one shard, folder or pattern")
    out: list[str] = []
    for one in specs:
        out.extend(_resolve_one(one, key))
    return out


def _resolve_one(spec: str, key: str) -> list[str]:
    import glob

    from braceexpand import braceexpand

    hint = (
        f"set {key} to a folder of .tar shards, a tar file, a brace pattern or glob, or a text file "
        "listing shards (build toy shards with `make toy-data`, or convert videos with "
        "scripts/videos_to_shards.py)"
    )
    if spec.startswith(REMOTE_PREFIXES):
        return list(braceexpand(spec))
    p = Path(spec).expanduser()
    if p.is_dir():
        shards = sorted(str(s) for s in p.glob("*.tar"))
        if not shards:
            raise ShardsNotFoundError(f"{key}={spec!r}: no .tar shards in that folder; {hint}")
        return shards
    if p.is_file():
        if p.suffix in (".txt", ".list", ".lst"):
            return _read_shard_list(p, key, hint)
        return [str(p)]
    expanded = list(braceexpand(str(p))) if "{" in spec else [str(p)]
    found: list[str] = []
    missing: list[str] = []
    for e in expanded:
        if any(c in e for c in "*?["):
            hits = sorted(glob.glob(e))
            (found.extend(hits) if hits else missing.append(e))
        elif Path(e).is_file():
            found.append(e)
        else:
            missing.append(e)
    if missing:
        raise ShardsNotFoundError(
            f"{key}={spec!r}: {len(found)} of {len(expanded)} shards found; first missing: {missing[0]}. {hint}"
        )
    return found


def _read_shard_list(path: Path, key: str, hint: str) -> list[str]:
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    entries = [ln for ln in lines if ln]
    if not entries:
        raise ShardsNotFoundError(f"{key}={str(path)!r}: the shard list is empty; {hint}")
    out = []
    for e in entries:
        if e.startswith(REMOTE_PREFIXES):
            out.append(e)
            continue
        q = Path(e).expanduser()
        q = q if q.is_absolute() else path.parent / q
        out.extend(_resolve_one(str(q), key))
    return out
