#!/usr/bin/env python
"""Realistic test media for the benchmarks: H.264 mp4 videos at >= 480p, 25 fps, long GOP (one keyframe
every ``--gop`` frames, B-frames on), with textured content that moves (a camera pan over a smooth
texture and a moving shape), so decoders and codecs do the work real footage makes them do.

    python scripts/bench/make_media.py --out /tmp/media --videos 8 --frames 48            # 854x480 mp4s
    python scripts/bench/make_media.py --out /tmp/media --size 1280x720 --shards 2          # + webdataset shards

Writes ``<out>/videos/<key>.mp4`` + ``<key>.txt`` (a caption) and, with ``--shards N``,
``<out>/shards/shard-00000N.tar`` holding the same videos. Deterministic for a given ``--seed``; reused
when already there (``--overwrite`` to rebuild). Needs PyAV with libx264 (the project's video stack).
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np


def texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth colour texture (float32 h w 3 in [0, 1]) with detail at several scales."""
    import cv2

    out = np.zeros((h, w, 3), np.float32)
    for cell, weight in ((64, 0.6), (16, 0.3), (4, 0.1)):
        small = rng.random((h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        out += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0, 1)


def frames(num: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``f h w 3`` uint8: a pan over a texture 1.5x the frame, plus a disc moving across it."""
    h, w = size
    tex = texture(int(h * 1.5), int(w * 1.5), rng)
    vx, vy = rng.uniform(-3, 3, size=2)
    cx, cy, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.05, 0.15) * h
    color = rng.random(3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    ox, oy = rng.uniform(0, w * 0.5 - abs(vx) * num - 1), rng.uniform(0, h * 0.5 - abs(vy) * num - 1)
    out = np.empty((num, h, w, 3), np.uint8)
    for t in range(num):
        x0, y0 = int(max(0, ox + vx * t)), int(max(0, oy + vy * t))
        f = tex[y0 : y0 + h, x0 : x0 + w].copy()
        disc = (xx - (cx + 2 * vx * t) % w) ** 2 + (yy - (cy + 2 * vy * t) % h) ** 2 < r * r
        f[disc] = color
        out[t] = (f * 255).round().astype(np.uint8)
    return out


def encode(video: np.ndarray, fps: int = 25, gop: int = 250, crf: int = 23, bframes: int = 3) -> bytes:
    """H.264 mp4 bytes with a keyframe every ``gop`` frames (x264 ``keyint``; scene cuts off)."""
    import av

    buf = io.BytesIO()
    f, h, w, _ = video.shape
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": str(crf), "preset": "veryfast", "g": str(gop), "keyint_min": str(gop),
                     "sc_threshold": "0", "bf": str(bframes)}  # fmt: skip
        for i, fr in enumerate(video):
            vf = av.VideoFrame.from_ndarray(fr, format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def make_media(out: str | Path, videos: int = 8, frames_per_video: int = 48, size=(480, 854), fps: int = 25,
               gop: int = 250, shards: int = 0, seed: int = 0, overwrite: bool = False) -> Path:  # fmt: skip
    """Write the media set (see the module docstring); returns ``<out>/videos``."""
    out = Path(out)
    vdir = out / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        p = vdir / f"clip{i:04d}.mp4"
        if p.exists() and not overwrite:
            continue
        rng = np.random.default_rng([seed, i])
        data = encode(frames(frames_per_video, size, rng), fps=fps, gop=gop)
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(p)
        p.with_suffix(".txt").write_text(f"synthetic clip {i}: a disc moving over a panning texture")
    if shards:
        sdir = out / "shards"
        sdir.mkdir(exist_ok=True)
        keys = sorted(q.stem for q in vdir.glob("*.mp4"))
        for s in range(shards):
            with tarfile.open(sdir / f"shard-{s:06d}.tar", "w") as tar:
                for k in keys[s::shards]:
                    for suffix in (".mp4", ".txt"):
                        tar.add(vdir / f"{k}{suffix}", arcname=f"{k}{suffix}")
    return vdir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="854x480", help="WxH (>= 854x480 for realistic decoding cost)")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--gop", type=int, default=250, help="frames between keyframes")
    ap.add_argument("--shards", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    w, h = map(int, a.size.lower().split("x"))
    vdir = make_media(a.out, a.videos, a.frames, (h, w), a.fps, a.gop, a.shards, a.seed, a.overwrite)
    print(f"{a.videos} videos ({w}x{h}, {a.frames} frames at {a.fps} fps, GOP {a.gop}) in {vdir}")


if __name__ == "__main__":
    main()
