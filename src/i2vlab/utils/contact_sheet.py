"""Contact sheets: the frames of one or more videos side by side in one PNG (one row per video,
an optional label above each row), to look at a clip at a glance.

    contact_sheet([real, generated], "sheet.png", labels=["input clip", "sample"], scale=2)
    contact_sheet_for_video("outputs/demo/samples/x.mp4")   # writes x.png beside it
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from i2vlab.utils.video_io import to_uint8_frames


def contact_sheet(
    videos: Sequence[torch.Tensor | np.ndarray],
    path: str | Path,
    labels: Sequence[str] | None = None,
    scale: int = 2,
    gap: int = 2,
) -> Path:
    """Write the videos' frames as rows of one PNG (frames upscaled ``scale``x, nearest neighbour).
    Rows may have different frame counts; ``labels`` (one per row) are written above the rows."""
    from PIL import Image, ImageDraw

    rows = [to_uint8_frames(v) for v in videos]
    if not rows:
        raise ValueError("contact_sheet needs at least one video")
    h = max(r.shape[1] for r in rows) * scale
    w = max(r.shape[2] for r in rows) * scale
    n = max(r.shape[0] for r in rows)
    label_h = 12 if labels else 0
    sheet = Image.new("RGB", (n * (w + gap) + gap, len(rows) * (h + gap + label_h) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, frames in enumerate(rows):
        y = gap + i * (h + gap + label_h)
        if labels:
            draw.text((gap, y), str(labels[i])[: max(8, n * (w + gap) // 6)], fill=(0, 0, 0))
            y += label_h
        for j, f in enumerate(frames):
            img = Image.fromarray(f[..., :3] if f.shape[-1] == 3 else f[..., 0]).convert("RGB")
            img = img.resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
            sheet.paste(img, (gap + j * (w + gap), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def contact_sheet_for_video(video_path: str | Path, scale: int = 2, out: str | Path | None = None) -> Path:
    """The contact sheet of a video file (``<name>.png`` beside it unless ``out``)."""
    from i2vlab.utils.video_io import read_video

    frames, _ = read_video(video_path)
    return contact_sheet([frames], out or Path(video_path).with_suffix(".png"), scale=scale)
