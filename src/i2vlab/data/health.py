"""Counting what the data pipeline skipped, repaired or could not read.

Each data-loader worker keeps a :class:`DataHealth` of running counts and attaches a copy to every
sample it yields; the data module folds the latest copy of each worker into per-epoch totals,
adds what earlier epochs (and, after a resume, the checkpoint) carried, and the training module
logs the totals summed over ranks as ``data/<kind>``.
"""

from __future__ import annotations

from collections.abc import Mapping

#: every count the pipeline keeps, with what it means (the docs and the logger use these names)
KINDS: dict[str, str] = {
    "corrupt": "videos no decoder could read (skipped)",
    "short": "videos too short for num_frames at the smallest frame_stride (skipped)",
    "bad_meta": "samples whose .json is not valid JSON (used, with the video's own fps)",
    "bad_caption": "captions that are not valid UTF-8 (used, decoded with replacement characters)",
    "missing_caption": "samples without a .txt caption (used with an empty caption)",
    "duplicate_key": "samples whose key repeats an earlier one in the same shard (skipped)",
    "truncated_shard": "shards that end early or are damaged after some samples",
    "bad_shard": "shards that cannot be opened or are not tar files",
    "decoded_by_pyav": "videos decord rejected and PyAV decoded (used)",
}


class DataHealth:
    """Running counts, one per :data:`KINDS` entry."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self.counts = {k: 0 for k in KINDS}
        for k, v in (counts or {}).items():
            if k in self.counts:
                self.counts[k] = int(v)

    def add(self, kind: str, n: int = 1) -> None:
        if kind not in self.counts:
            raise KeyError(f"unknown data-health count {kind!r}; known: {sorted(KINDS)}")
        self.counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def __add__(self, other: DataHealth | Mapping[str, int]) -> DataHealth:
        o = other.counts if isinstance(other, DataHealth) else other
        return DataHealth({k: self.counts[k] + int(o.get(k, 0)) for k in KINDS})

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]

    def __repr__(self) -> str:
        nonzero = {k: v for k, v in self.counts.items() if v}
        return f"DataHealth({nonzero})"
