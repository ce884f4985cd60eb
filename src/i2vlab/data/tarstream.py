"""Reading samples out of webdataset tar shards, with every fault counted instead of lost.

webdataset's ``tar_file_iterator`` yields the members of one tar; this module groups them into
samples (``__key__`` + one entry per extension, as ``wds.tarfile_to_samples`` does) and, unlike the
stock pipeline with ``warn_and_continue``, tells the faults apart and counts them in a
:class:`DataHealth`:

- ``bad_shard``: a shard that cannot be opened or is not a tar at all (nothing read);
- ``truncated_shard``: a tar that ends early or is damaged after some samples (the samples
  before the cut are used; how many followed cannot be known);
- ``duplicate_key``: a key seen before in the same shard (the later copy is skipped; the stock
  grouping silently merges adjacent duplicates with different extensions).

Each faulty shard is logged once per process, with its name.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator
from typing import Any

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, reraise_exception, tar_file_iterator

from i2vlab.data.health import DataHealth

log = logging.getLogger(__name__)

_logged: set[tuple[str, str]] = set()


def _log_once(url: str, kind: str, msg: str) -> None:
    if (url, kind) not in _logged:
        _logged.add((url, kind))
        log.warning("%s: %s (%s; counted as data/%s)", url, msg, kind.replace("_", " "), kind)


def _ends_cleanly(url: str) -> bool:
    """A local tar ends with the end-of-archive marker (zero blocks) at a 512-byte boundary; a cut
    file does not. Python's streaming tar reader takes a cut between members for the end, so this
    is checked on the file (remote streams are not checked)."""
    if "://" in url or url.startswith("pipe:"):
        return True
    try:
        size = os.path.getsize(url)
        if size < 1024 or size % 512:
            return False
        with open(url, "rb") as f:
            f.seek(size - 1024)
            return f.read(1024) == bytes(1024)
    except OSError:
        return True  # gopen reports it


def shard_samples(url: str, health: DataHealth) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in order. Faults are counted in ``health`` and never raised."""
    cut = not _ends_cleanly(url)
    try:
        stream = gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - missing file, permission, remote error: count the shard
        health.add("bad_shard")
        _log_once(url, "bad_shard", f"cannot open: {e}")
        return
    members = 0
    seen: set[str] = set()
    current: dict[str, Any] | None = None
    try:
        with stream:
            for member in tar_file_iterator(stream, handler=reraise_exception):
                members += 1
                key, ext = base_plus_ext(member["fname"])
                if key is None:
                    continue
                ext = ext.lower()
                if current is None or key != current["__key__"] or ext in current:
                    if current is not None:
                        yield from _emit(current, seen, url, health)
                    current = {"__key__": key, "__url__": url}
                current[ext] = member["data"]
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        kind = "truncated_shard" if members else "bad_shard"
        health.add(kind)
        _log_once(url, kind, f"{'stops early' if members else 'not a readable tar'} ({e})")
        current = None  # the last group may be cut: drop it
        cut = False
    if cut:
        health.add("truncated_shard" if members else "bad_shard")
        _log_once(url, "truncated_shard" if members else "bad_shard", "the tar file ends early")
        current = None  # the last group may be incomplete: drop it
    if current is not None:
        yield from _emit(current, seen, url, health)


def _emit(sample: dict[str, Any], seen: set[str], url: str, health: DataHealth) -> Iterator[dict[str, Any]]:
    key = sample["__key__"]
    if key in seen:
        health.add("duplicate_key")
        log.warning("%s: duplicate key %s skipped (counted as data/duplicate_key)", url, key)
        return
    seen.add(key)
    yield sample
