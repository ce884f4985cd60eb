"""Frame index sampling and spatial transforms for video clips (layout ``f c h w``)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_center_crop(frames: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the short side so that ``(h, w) = size`` fits, then centre-crop. ``frames``: (f c h w) float."""
    th, tw = int(size[0]), int(size[1])
    h, w = frames.shape[-2:]
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return frames[..., top : top + th, left : left + tw]


def sample_frame_indices(
    num_video_frames: int,
    num_frames: int,
    frame_stride: int | Sequence[int],
    rng: random.Random,
    random_start: bool = True,
) -> tuple[list[int], int] | None:
    """Choose ``num_frames`` indices at a stride.

    ``frame_stride`` is an int (fixed) or ``[lo, hi]`` (uniform integer in the closed range). If the
    video is too short for the drawn stride, the largest stride >= lo that fits is used; if even
    ``lo`` does not fit, returns ``None`` (the caller skips the video). Returns ``(indices, stride)``.
    """
    if isinstance(frame_stride, int):
        lo = hi = frame_stride
    else:
        lo, hi = int(frame_stride[0]), int(frame_stride[-1])
    if lo < 1 or hi < lo:
        raise ValueError(f"frame_stride must be >= 1 and ordered, got {frame_stride}")
    stride = rng.randint(lo, hi)
    max_fit = (num_video_frames - 1) // (num_frames - 1) if num_frames > 1 else hi
    if stride > max_fit:
        if max_fit < lo:
            return None
        stride = max_fit
    span = (num_frames - 1) * stride + 1
    start = rng.randint(0, num_video_frames - span) if random_start else 0
    return [start + i * stride for i in range(num_frames)], stride
