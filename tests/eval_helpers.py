"""Shared helpers for the evaluator tests: tiny extractor configs and small videos on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from i2vlab.utils.video_io import write_video

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8}  # fmt: skip
TINY_EXTRACTORS = {
    "i3d": {"input_size": 64, "width": 0.125},
    "inception": {"input_size": 75},
    "clip": {"tiny": {"vision": TINY_VIT, "text": {**{k: v for k, v in TINY_VIT.items() if k not in ("image_size", "patch_size")},
                                                    "vocab_size": 300}, "projection_dim": 16}},
    "dreamsim": {"tiny": TINY_VIT},
}  # fmt: skip


def textured_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (uint8 h w 3) that optical flow can track."""
    import cv2

    g = np.random.default_rng(seed)
    x = g.random((h // 4 + 2, w // 4 + 2, 3)).astype(np.float32)
    x = cv2.resize(x, (w + 8, h + 8), interpolation=cv2.INTER_CUBIC)
    x = cv2.GaussianBlur(x, (0, 0), 1.0)
    x = (x - x.min()) / (x.max() - x.min())
    return (x[:h, :w] * 255).astype(np.uint8)


def moving_video(num_frames: int, h: int, w: int, dx: int = 0, dy: int = 0, seed: int = 0) -> torch.Tensor:
    """``f c h w`` in [-1, 1]: one texture translated by (dx, dy) pixels per frame (wrap-around)."""
    base = textured_frame(h, w, seed)
    frames = [np.roll(base, (t * dy, t * dx), axis=(0, 1)) for t in range(num_frames)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1


def write_set(
    folder: Path,
    n: int,
    num_frames: int = 6,
    size=(32, 32),
    seed: int = 0,
    noise: float = 0.0,
    fmt: str = "mp4",
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        v = moving_video(num_frames, *size, dx=1 + i % 2, dy=i % 3, seed=seed + i)
        if noise:
            v = (
                v + noise * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed * 100 + i))
            ).clamp(-1, 1)
        out.append(write_video(folder / f"v{i:02d}.{fmt}", v, fps=8))
        (folder / f"v{i:02d}.txt").write_text(f"prompt number {i}")
    return out


def eval_cfg(tmp_path: Path, **over) -> dict:
    cfg = {
        "name": "test",
        "metrics": ["fvd", "kvd", "fid"],
        "num_frames": 4,
        "resolution": [32, 32],
        "batch_size": 2,
        "allow_random_weights": True,
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"),
        "plots": False,
        "kvd": {"num_subsets": 5, "subset_size": 1000},
        "extractors": TINY_EXTRACTORS,
    }
    cfg.update(over)
    return cfg
