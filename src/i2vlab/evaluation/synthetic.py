"""Small synthetic video sets for ``eval=smoke`` (no data needed): moving textured shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from i2vlab.utils.video_io import write_video

_PROMPTS = [
    "a red square drifting right",
    "a blue disc moving down",
    "a green bar sliding left",
    "a yellow blob wandering",
    "waves over a striped floor",
    "a checkerboard panning",
]


def synthetic_video(seed: int, num_frames: int, size: tuple[int, int], noise: float = 0.0) -> torch.Tensor:
    """One video ``f c h w`` in [-1, 1]: a smooth background and a coloured square moving at a
    seed-dependent velocity; ``noise`` adds per-frame Gaussian noise (a 'generated' look)."""
    g = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / (5 + 3 * g.random()) + c) * 0.4 for c in range(3)], 0)
    color = g.uniform(-1, 1, size=3).astype(np.float32)
    vx, vy = g.uniform(-2, 2, size=2)
    x0, y0 = g.uniform(0.2, 0.6) * w, g.uniform(0.2, 0.6) * h
    s = max(4, min(h, w) // 4)
    frames = []
    for t in range(num_frames):
        f = base.copy()
        cx, cy = int(x0 + vx * t) % w, int(y0 + vy * t) % h
        f[:, cy : cy + s, cx : cx + s] = color[:, None, None]
        if noise:
            f = f + g.normal(0, noise, size=f.shape).astype(np.float32)
        frames.append(f)
    return torch.from_numpy(np.stack(frames)).clamp(-1, 1)


def make_synthetic_sets(
    root: str | Path, num_videos: int = 6, num_frames: int = 10, size=(48, 64), fps: float = 8.0
) -> tuple[Path, Path]:
    """Write ``root/real`` and ``root/generated`` (same keys; generated = same scene + noise),
    with ``<key>.txt`` captions. Returns the two folders. Existing files are reused."""
    root = Path(root)
    real, gen = root / "real", root / "generated"
    for i in range(num_videos):
        key = f"video_{i:03d}"
        v = synthetic_video(i, num_frames, tuple(size))
        if not (real / f"{key}.mp4").exists():
            write_video(real / f"{key}.mp4", v, fps)
        if not (gen / f"{key}.mp4").exists():
            noisy = (
                v + torch.randn(v.shape, generator=torch.Generator().manual_seed(1000 + i)) * 0.08
            ).clamp(-1, 1)
            write_video(gen / f"{key}.mp4", noisy, fps)
        for d in (real, gen):
            (d / f"{key}.txt").write_text(_PROMPTS[i % len(_PROMPTS)])
    return gen, real
