"""Synthetic videos for smoke runs, tests and the toy pre-trained models: coloured shapes that move,
zoom or rotate over textured backgrounds while the camera pans, each with a caption describing the
shape's motion. Deterministic given a seed.

Everything is drawn from analytic functions of the pixel position, so the toy world is learnable by
tiny models and its motion is real sub-pixel motion:

- backgrounds ``striped`` (soft-edged stripes at a random angle), ``checkered`` (soft-edged checks),
  ``gradient`` (a slow triangle-wave ramp in a random direction) and ``cloudy`` (smooth noise: a sum
  of a few random low-frequency sinusoids, periods of 18-64 px at 64 px);
- the camera pans: the background moves by 0.6-1.2 px per frame (at 64 px) in a random direction,
  so every pixel moves and optical flow over the whole frame is well above zero;
- shapes (circle with a notch, square, triangle) are anti-aliased (4x4 supersampled coverage).

Sizes and speeds scale with the frame size (the numbers above are for the default 64x64).
"""

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
BACKGROUNDS = ("striped", "checkered", "gradient", "cloudy")
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "zooming in", "zooming out", "rotating")
#: supersampling factor of the shape coverage (anti-aliasing)
SUPERSAMPLE = 4


@dataclass
class ToyVideo:
    frames: np.ndarray  # f h w c uint8
    caption: str
    fps: float
    meta: dict


def _soft_square(s: np.ndarray, period: float, edge: float = 1.2) -> np.ndarray:
    """A square wave in [0, 1] from ``s = sin(phase)`` whose edges are about ``edge`` px wide."""
    k = period / (math.pi * edge)
    return np.clip(0.5 + 0.5 * k * s, 0.0, 1.0)


def _texture(kind: str, size: float, rng: np.random.Generator):
    """A background texture: ``f(xx, yy) -> t`` in [0, 1] over canvas coordinates (pixels), analytic
    so that it can be sampled at any (panned, sub-pixel) position."""
    period = float(rng.uniform(8.0, 16.0)) * size / 64
    if kind == "striped":
        a = rng.uniform(0, math.pi)
        ca, sa = math.cos(a), math.sin(a)
        phase = rng.uniform(0, 2 * math.pi)
        return lambda xx, yy: _soft_square(np.sin(2 * math.pi * (ca * xx + sa * yy) / period + phase), period)
    if kind == "checkered":
        px, py = rng.uniform(0, 2 * math.pi, size=2)

        def checks(xx, yy):
            s = np.sin(math.pi * xx / period + px) * np.sin(math.pi * yy / period + py)
            return _soft_square(s, 2 * period)

        return checks
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        ca, sa = math.cos(a), math.sin(a)
        wave = float(rng.uniform(1.5, 2.5)) * size  # triangle-wave period: a ramp across the frame
        off = rng.uniform(0, wave)

        def ramp(xx, yy):
            u = ((ca * xx + sa * yy + off) / wave) % 1.0
            return 1.0 - np.abs(2.0 * u - 1.0)

        return ramp
    # cloudy: smooth low-frequency noise
    n = 6
    freq = rng.uniform(1.0, 3.5, size=n) / size  # cycles per pixel
    ang = rng.uniform(0, 2 * math.pi, size=n)
    amp = rng.uniform(0.5, 1.0, size=n)
    phase = rng.uniform(0, 2 * math.pi, size=n)
    norm = amp.sum()

    def clouds(xx, yy):
        t = np.zeros_like(xx)
        for f, a, m, p in zip(freq, ang, amp, phase):
            t = t + m * np.sin(2 * math.pi * f * (math.cos(a) * xx + math.sin(a) * yy) + p)
        return np.clip(0.5 + 0.9 * t / norm, 0.0, 1.0)

    return clouds


def _shape_coverage(shape: str, h: int, w: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Fraction (h, w) of each pixel covered by the shape (centre ``cx, cy`` in pixels, size ``r``)."""
    s = SUPERSAMPLE
    yy, xx = np.mgrid[0 : h * s, 0 : w * s].astype(np.float32)
    xx, yy = (xx + 0.5) / s - 0.5, (yy + 0.5) / s - 0.5  # sub-pixel sample positions
    dx, dy = xx - cx, yy - cy
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    if shape == "circle":
        # a circle with a notch so that rotation is visible
        m = ((u**2 + v**2) <= r**2) & ~((u > r * 0.4) & (np.abs(v) < r * 0.25))
    elif shape == "square":
        m = (np.abs(u) <= r) & (np.abs(v) <= r)
    else:  # triangle pointing along +u
        m = (u >= -r) & (u <= r) & (np.abs(v) <= (r - u) * 0.6)
    return m.reshape(h, s, w, s).mean(axis=(1, 3))


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
    size = min(height, width)
    c1 = rng.integers(20, 120, size=3).astype(np.float32)
    c2 = rng.integers(120, 235, size=3).astype(np.float32)
    texture = _texture(bg, size, rng)
    pan_speed = prng.uniform(0.6, 1.2) * size / 64  # px per frame
    pan_angle = prng.uniform(0, 2 * math.pi)
    pvx, pvy = pan_speed * math.cos(pan_angle), pan_speed * math.sin(pan_angle)
    r0 = size * prng.uniform(0.14, 0.22)
    speed = size * prng.uniform(0.5, 0.9) / max(num_frames - 1, 1)
    cx0, cy0 = width / 2 + prng.uniform(-0.1, 0.1) * width, height / 2 + prng.uniform(-0.1, 0.1) * height
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    colour_rgb = np.asarray(COLOURS[colour], dtype=np.float32)
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
        # the camera pans by (pvx, pvy) per frame: the scene moves the other way
        tex = texture(xx + pvx * t, yy + pvy * t).astype(np.float32)
        img = c1 + (c2 - c1) * tex[..., None]
        cov = _shape_coverage(shape, height, width, cx, cy, r, angle)[..., None]
        img = img * (1 - cov) + colour_rgb * cov
        frames[t] = img.round().clip(0, 255).astype(np.uint8)
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
