#!/usr/bin/env python
"""Write synthetic WebVid-style webdataset shards (shapes moving over textured backgrounds).

    python scripts/make_toy_shards.py --out data/toy --num-videos 64 --frames 24 --size 64 --seed 0

Writes ``<out>/train/shard-000000.tar ...`` and ``<out>/val/...``; each sample has ``<key>.mp4``,
``<key>.txt`` (caption describing the motion) and ``<key>.json`` (fps, frame count, size, source id).
Output is deterministic given ``--seed``.
"""

from __future__ import annotations

import argparse

from i2vlab.data.toy import write_toy_shards


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/toy")
    ap.add_argument("--num-videos", type=int, default=64)
    ap.add_argument("--num-val", type=int, default=8)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = write_toy_shards(a.out, a.num_videos, a.num_val, a.frames, a.size, a.per_shard, a.seed)
    print(f"toy shards written to {out.resolve()} ({a.num_videos} train, {a.num_val} val videos)")


if __name__ == "__main__":
    main()
