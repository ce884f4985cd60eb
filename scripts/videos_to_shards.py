#!/usr/bin/env python
"""Convert a WebVid-style CSV + a folder of mp4 files into webdataset shards.

    python scripts/videos_to_shards.py --csv results_2M_train.csv --videos /data/webvid/videos \
        --out /data/webvid/shards/train --target-size-mb 1000 --workers 16

CSV columns: ``videoid``, ``name`` (the caption), ``page_dir`` and optionally ``duration`` (others
are kept in the json). Videos are looked up as ``<videos>/<page_dir>/<videoid>.mp4`` and then
``<videos>/<videoid>.mp4``. Each sample: ``<videoid>.mp4``, ``<videoid>.txt`` (caption),
``<videoid>.json`` (fps, num_frames, height, width, source_id, ...).

Rows are cut into fixed chunks (``--videos-per-shard``, or estimated from ``--target-size-mb`` and
the mean size of a sample of the files), one shard per chunk, written in parallel and renamed
into place when complete, so an interrupted conversion resumes where it stopped (finished shards
are skipped). Missing and unreadable videos, and ids that would point outside ``--videos``
(``../x``, absolute paths), are listed in ``<out>/_reports/`` and summed at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from i2vlab.data.shards import make_sample
from i2vlab.utils.safe_load import UnsafePathError, safe_child
from i2vlab.utils.video_io import VideoDecodeError, open_video


def find_video(root: Path, row: dict) -> Path | None:
    """The row's video under ``root``; ``UnsafePathError`` for ids that would read outside it."""
    vid = str(row["videoid"]).strip()
    page = str(row.get("page_dir", "") or "").strip()
    names = ([f"{page}/{vid}"] if page else []) + [vid]
    for name in names:
        cand = safe_child(root, name, ".mp4", what="videoid/page_dir")
        if cand.is_file():
            return cand
    return None


def probe(data: bytes) -> dict:
    """Open the video (decord, PyAV fallback) to check it decodes; returns its metadata."""
    reader = open_video(data)
    h, w = reader.get([0]).shape[1:3]
    return {"fps": reader.fps, "num_frames": len(reader), "height": int(h), "width": int(w)}


def write_shard(index: int, rows: list[dict], videos: str, out: str) -> dict:
    out_dir = Path(out)
    final = out_dir / f"shard-{index:06d}.tar"
    report = {"shard": final.name, "written": 0, "missing": [], "unreadable": [], "unsafe": []}
    tmp = out_dir / f".shard-{index:06d}.tar.tmp"
    with wds.TarWriter(str(tmp)) as sink:
        for row in rows:
            vid = str(row["videoid"]).strip().replace(".", "_")
            try:
                path = find_video(Path(videos), row)
            except UnsafePathError as e:
                report["unsafe"].append(str(e))
                continue
            if path is None:
                report["missing"].append(vid)
                continue
            data = path.read_bytes()
            try:
                meta = probe(data)
            except (VideoDecodeError, IndexError) as e:
                report["unreadable"].append(f"{vid}: {e}")
                continue
            meta.update(source_id=vid, **{k: v for k, v in row.items() if k not in ("videoid", "name")})
            sink.write(make_sample(vid, data, str(row.get("name", "")).strip(), meta))
            report["written"] += 1
    os.replace(tmp, final)
    (out_dir / "_reports").mkdir(exist_ok=True)
    (out_dir / "_reports" / f"{final.stem}.json").write_text(json.dumps(report, indent=1))
    return report


def _find_quiet(root: Path, row: dict) -> Path | None:
    try:
        return find_video(root, row)
    except UnsafePathError:
        return None


def videos_per_shard(rows: list[dict], videos: Path, target_mb: float, sample: int = 64) -> int:
    sizes = [
        p.stat().st_size
        for r in random.Random(0).sample(rows, min(sample, len(rows)))
        if (p := _find_quiet(videos, r)) is not None
    ]
    mean = sum(sizes) / len(sizes) if sizes else 2**20
    return max(1, int(target_mb * 2**20 / mean))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--videos", required=True, help="folder with <page_dir>/<videoid>.mp4 or <videoid>.mp4")
    ap.add_argument("--out", required=True)
    ap.add_argument("--videos-per-shard", type=int, default=None)
    ap.add_argument(
        "--target-size-mb", type=float, default=1000.0, help="used when --videos-per-shard is not given"
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)

    with open(a.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "videoid" not in rows[0]:
        raise SystemExit(f"{a.csv}: expected a WebVid-style CSV with a 'videoid' column")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    per = a.videos_per_shard or videos_per_shard(rows, Path(a.videos), a.target_size_mb)
    chunks = [rows[i : i + per] for i in range(0, len(rows), per)]
    todo = [i for i in range(len(chunks)) if not (out / f"shard-{i:06d}.tar").exists()]
    print(f"{len(rows)} rows -> {len(chunks)} shards of {per} videos; {len(chunks) - len(todo)} already done")
    with ProcessPoolExecutor(max_workers=max(1, a.workers)) as pool:
        futures = [pool.submit(write_shard, i, chunks[i], a.videos, str(out)) for i in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="shards", unit="shard"):
            fut.result()
    totals = {"shards": len(chunks), "written": 0, "missing": 0, "unreadable": 0, "unsafe": 0}
    for rep in sorted((out / "_reports").glob("shard-*.json")):
        r = json.loads(rep.read_text())
        totals["written"] += r["written"]
        totals["missing"] += len(r["missing"])
        totals["unreadable"] += len(r["unreadable"])
        totals["unsafe"] += len(r.get("unsafe", []))
    (out / "_reports" / "summary.json").write_text(json.dumps(totals, indent=1))
    print(
        f"written {totals['written']} videos; missing {totals['missing']}, unreadable {totals['unreadable']}, "
        f"refused (ids pointing outside --videos) {totals['unsafe']} "
        f"(lists in {out / '_reports'})"
    )
    return totals


if __name__ == "__main__":
    main()
