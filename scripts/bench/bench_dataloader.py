#!/usr/bin/env python
"""Data-loader throughput: i2vlab's shard pipeline against a straightforward reference, same shards.

    python scripts/bench/bench_dataloader.py [--shards data/toy/train] [--clips 64] [--workers 0 2]

ours:      webdataset stream, decord decodes only the sampled frames from memory, resize + crop
reference: the common naive loader: PyAV decodes every frame of the video, then frames are picked

Prints clips/s for each and the ratio ours / reference (same shards, frames, stride, resolution).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, print_table  # noqa: E402

from i2vlab.data.datamodule import VideoShardDataset  # noqa: E402
from i2vlab.data.shards import list_shards  # noqa: E402
from i2vlab.data.transforms import resize_center_crop, sample_frame_indices  # noqa: E402
from i2vlab.utils.video_io import from_uint8_frames  # noqa: E402


def ours(shards: str, n: int, workers: int, num_frames: int, stride: int, res: int) -> float:
    ds = VideoShardDataset(shards, num_frames, stride, (res, res), shuffle_buffer=16, resampled=True)
    dl = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers)
    it = iter(dl)
    next(it)  # worker start-up excluded
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return n / (time.perf_counter() - t0)


def reference(shards: str, n: int, num_frames: int, stride: int, res: int) -> float:
    import av

    blobs = []
    for url in list_shards(shards):
        with tarfile.open(url) as tf:
            blobs += [tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".mp4")]
    rng = random.Random(0)
    t0 = time.perf_counter()
    for i in range(n):
        with av.open(io.BytesIO(blobs[i % len(blobs)])) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        idx, _ = sample_frame_indices(len(frames), num_frames, stride, rng)
        resize_center_crop(from_uint8_frames(frames[idx]), (res, res))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="data/toy/train")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    a = ap.parse_args()
    if not list(Path(a.shards).glob("*.tar")):
        from i2vlab.data.toy import write_toy_shards

        write_toy_shards(Path(a.shards).parent, progress=False)
    ref = reference(a.shards, a.clips, a.frames, a.stride, a.resolution)
    rows = [["reference (PyAV, all frames)", 0, ref, 1.0]]
    for w in a.workers:
        c = ours(a.shards, a.clips, w, a.frames, a.stride, a.resolution)
        rows.append(["i2vlab (decord, sampled frames)", w, c, c / ref])
    print_table(
        f"data loader: {a.frames} frames, stride {a.stride}, {a.resolution}px, shards {a.shards}",
        device_name("cpu"),
        ["loader", "workers", "clips/s", "ratio vs ref"],
        rows,
    )


if __name__ == "__main__":
    main()
