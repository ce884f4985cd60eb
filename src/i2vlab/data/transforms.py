"""Frame index sampling and spatial transforms for video clips (layout ``f c h w``)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF


def _resized_size(h: int, w: int, size: Sequence[int]) -> tuple[int, int]:
    th, tw = int(size[0]), int(size[1])
    scale = max(th / h, tw / w)
    return max(th, round(h * scale)), max(tw, round(w * scale))


def resize_center_crop(frames: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize (bilinear, antialiased) so that ``(h, w) = size`` fits inside, then centre-crop
    (torchvision). ``frames``: (f c h w), float or uint8; the dtype is kept."""
    nh, nw = _resized_size(*frames.shape[-2:], size)
    if (nh, nw) != tuple(frames.shape[-2:]):
        frames = TF.resize(frames, [nh, nw], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(frames, [int(size[0]), int(size[1])])


def video_from_uint8(frames: np.ndarray | torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
    """Decoded frames (``f h w c`` uint8) -> ``f c h w`` float in [-1, 1], resized and centre-cropped
    to ``size`` (h, w) *in uint8* first: converting at full size costs more than decoding."""
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    x = x.permute(0, 3, 1, 2)
    if size is not None:
        x = resize_center_crop(x, size)
    return x.float().div_(127.5).sub_(1.0).contiguous()


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
