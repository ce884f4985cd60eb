"""Synthetic videos for smoke runs and tests: coloured shapes that move, zoom or rotate over
textured backgrounds, each with a caption describing the motion. Deterministic given a seed."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("striped", "checkered", "gradient", "noisy")
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "zooming in", "zooming out", "rotating")


@dataclass
class ToyVideo:
    frames: np.ndarray  # f h w c uint8
    caption: str
    fps: float
    meta: dict


def _background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1 = rng.integers(20, 120, size=3).astype(np.float32)
    c2 = rng.integers(120, 235, size=3).astype(np.float32)
    period = float(rng.integers(6, 16))
    if kind == "striped":
        t = (np.sin(2 * math.pi * (xx + yy * rng.uniform(-0.5, 0.5)) / period) > 0).astype(np.float32)
    elif kind == "checkered":
        t = ((xx // period + yy // period) % 2).astype(np.float32)
    elif kind == "gradient":
        t = (xx / max(w - 1, 1) * 0.6 + yy / max(h - 1, 1) * 0.4).astype(np.float32)
    else:
        t = rng.random((h, w), dtype=np.float32)
    return (c1 + (c2 - c1) * t[..., None]).astype(np.float32)


def _shape_mask(shape: str, h: int, w: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    if shape == "circle":
        # a circle with a notch so that rotation is visible
        return ((u**2 + v**2) <= r**2) & ~((u > r * 0.4) & (np.abs(v) < r * 0.25))
    if shape == "square":
        return (np.abs(u) <= r) & (np.abs(v) <= r)
    # triangle pointing along +u
    return (u >= -r) & (u <= r) & (np.abs(v) <= (r - u) * 0.6)


def make_toy_video(
    seed: int, num_frames: int = 24, height: int = 64, width: int = 64, fps: float = 8.0
) -> ToyVideo:
    """Render one synthetic clip. The same seed always gives the same pixels and caption."""
    prng = random.Random(seed)
    rng = np.random.default_rng(seed)
    colour = prng.choice(sorted(COLOURS))
    shape = prng.choice(SHAPES)
    bg = prng.choice(BACKGROUNDS)
    motion = prng.choice(MOTIONS)
    background = _background(bg, height, width, rng)
    r0 = min(height, width) * prng.uniform(0.12, 0.2)
    speed = min(height, width) * prng.uniform(0.5, 0.9) / max(num_frames - 1, 1)
    cx0, cy0 = width / 2 + prng.uniform(-0.1, 0.1) * width, height / 2 + prng.uniform(-0.1, 0.1) * height
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        cx, cy, r, angle = cx0, cy0, r0, 0.0
        off = (t - (num_frames - 1) / 2) * speed
        if motion == "moving left":
            cx = cx0 - off
        elif motion == "moving right":
            cx = cx0 + off
        elif motion == "moving up":
            cy = cy0 - off
        elif motion == "moving down":
            cy = cy0 + off
        elif motion == "zooming in":
            r = r0 * (0.6 + 1.0 * t / max(num_frames - 1, 1))
        elif motion == "zooming out":
            r = r0 * (1.6 - 1.0 * t / max(num_frames - 1, 1))
        else:
            angle = 2 * math.pi * t / max(num_frames, 1)
        img = background.copy()
        img[_shape_mask(shape, height, width, cx, cy, r, angle)] = COLOURS[colour]
        frames[t] = img.clip(0, 255).astype(np.uint8)
    caption = f"a {colour} {shape} {motion} over a {bg} background"
    meta = {
        "fps": fps,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "source_id": f"toy-{seed}",
    }
    return ToyVideo(frames=frames, caption=caption, fps=fps, meta=meta)


def write_toy_shards(
    out: str | Path,
    num_videos: int = 64,
    num_val: int = 8,
    frames: int = 24,
    size: int = 64,
    per_shard: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write ``<out>/train/shard-*.tar`` and ``<out>/val/shard-*.tar`` of toy videos (deterministic)."""
    import webdataset as wds
    from tqdm import tqdm

    from i2vlab.data.shards import make_sample, shard_pattern
    from i2vlab.utils.video_io import encode_mp4

    out = Path(out)
    base = seed * 1_000_000
    splits = {
        "train": [base + i for i in range(num_videos)],
        "val": [base + 500_000 + i for i in range(num_val)],
    }
    for split, seeds in splits.items():
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.tar"):
            old.unlink()
        with wds.ShardWriter(shard_pattern(d), maxcount=per_shard, verbose=0) as sink:
            for s in tqdm(seeds, desc=f"toy videos -> {d}", unit="video", disable=not progress):
                v = make_toy_video(s, num_frames=frames, height=size, width=size)
                sink.write(make_sample(f"toy{s:07d}", encode_mp4(v.frames, fps=v.fps), v.caption, v.meta))
    return out
