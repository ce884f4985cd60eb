"""Reading and writing videos.

Decoding uses decord (only the requested frames are decoded), with PyAV as the fallback for
files decord rejects; encoding uses PyAV (H.264 when
the linked FFmpeg has libx264, else MPEG-4 Part 2). Tensors follow the layouts named below:

- ``f c h w`` float in [-1, 1]  ("model" layout, one video)
- ``f h w c`` uint8               ("numpy" layout, what codecs read and write)
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


def to_uint8_frames(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """Convert ``f c h w`` in [-1, 1] (torch) or ``f h w c`` uint8 (numpy) to ``f h w c`` uint8."""
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8:
            raise TypeError(f"numpy frames must be uint8 (f h w c), got {video.dtype}")
        return video
    if video.ndim != 4:
        raise ValueError(f"expected one video with layout (f c h w), got shape {tuple(video.shape)}")
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8_frames(frames: np.ndarray) -> torch.Tensor:
    """``f h w c`` uint8 -> ``f c h w`` float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _pick_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_mp4(video: torch.Tensor | np.ndarray, fps: float = 8.0, crf: int = 18) -> bytes:
    """Encode one video to mp4 bytes. Width and height are padded to even numbers if needed."""
    import av

    # PyAV reads the array's buffer as packed rows: a strided view (a permuted tensor) would be
    # encoded from whatever memory follows it
    frames = np.ascontiguousarray(to_uint8_frames(video))
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = h + h % 2, w + w % 2
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        codec = _pick_codec()
        rate = _fps_fraction(fps)
        stream = container.add_stream(codec, rate=rate)
        stream.time_base = 1 / rate
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            # mbtree off: x264's macroblock-tree rate control is floating-point and its output changed
            # with the process's floating-point state (after torch/oneDNN had run, the same frames
            # gave different files); the same video must give the same file
            stream.options = {"crf": str(crf), "preset": "veryfast", "mbtree": "0"}
        else:
            stream.bit_rate = 8_000_000
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i  # explicit timestamps in the stream's time base (1/fps)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def write_video(path: str | os.PathLike, video: torch.Tensor | np.ndarray, fps: float = 8.0) -> Path:
    """Write one video as ``.mp4`` or ``.gif`` (chosen by suffix), atomically. Returns the path.

    GIFs are for viewing: Pillow merges identical consecutive frames, so score mp4s, not GIFs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix.lower() == ".gif":
        from PIL import Image

        frames = [Image.fromarray(f) for f in to_uint8_frames(video)]
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0
        )
    else:
        tmp.write_bytes(encode_mp4(video, fps=fps))
    os.replace(tmp, path)
    return path


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded (corrupt, truncated or empty) by any decoder."""


#: decoders tried in order by :func:`open_video` (decord first; PyAV when decord rejects a file)
DECODERS = ("decord", "pyav")


class VideoReader:
    """One open video: ``len(reader)``, ``reader.fps``, ``reader.get(indices)`` -> ``f h w c`` uint8.

    ``decoder`` names what served it (``decord`` or ``pyav``). decord decodes only the requested
    frames; PyAV (the fallback for files decord rejects, e.g. some frame sizes) decodes up to the
    last requested frame."""

    def __init__(self, source: str | os.PathLike | bytes, decoders: Sequence[str] = DECODERS) -> None:
        self.source = source
        self.decoder = ""
        self._reader = None
        self._frames: list[np.ndarray] | None = None
        errors = []
        for name in decoders:
            try:
                self._open(name)
                self.decoder = name
                break
            except Exception as e:  # every decoder raises its own types on bad input
                errors.append(f"{name}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
        if not self.decoder:
            raise VideoDecodeError("cannot open video (" + "; ".join(errors) + ")")

    def _open(self, name: str) -> None:
        src = self.source
        if name == "decord":
            import decord

            f = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else os.fspath(src)
            reader = decord.VideoReader(f, ctx=decord.cpu(0), num_threads=1)
            if len(reader) == 0:
                raise VideoDecodeError("video has no frames")
            self._reader, self._len, self._fps = reader, len(reader), float(reader.get_avg_fps())
        elif name == "pyav":
            import av

            f = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else os.fspath(src)
            with av.open(f) as container:
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate or 0) or 8.0
                frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
            if not frames:
                raise VideoDecodeError("video has no frames")
            self._frames, self._len, self._fps = frames, len(frames), fps
        else:
            raise ValueError(f"unknown decoder {name!r}; choose from {DECODERS}")

    def __len__(self) -> int:
        return self._len

    @property
    def fps(self) -> float:
        return self._fps

    def get_avg_fps(self) -> float:  # decord's name, kept for callers written against decord
        return self._fps

    def get(self, indices: Sequence[int]) -> np.ndarray:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < self._len]
        if bad:
            raise VideoDecodeError(f"frame indices {bad[:4]} out of range for a {self._len}-frame video")
        try:
            if self._frames is not None:
                return np.stack([self._frames[i] for i in idx])
            return self._reader.get_batch(idx).asnumpy()
        except Exception as e:
            # decord opens some files it cannot convert (certain frame sizes) or decode: retry with PyAV
            if self.decoder == "decord" and "pyav" in DECODERS:
                try:
                    self._open("pyav")
                    self.decoder = "pyav"
                    return np.stack([self._frames[i] for i in idx])
                except Exception:  # noqa: BLE001 - report the first decoder's error below
                    pass
            raise VideoDecodeError(f"cannot decode frames {idx[:4]}...: {e}") from e


def open_video(source: str | os.PathLike | bytes) -> VideoReader:
    """Open a video from a path or in-memory bytes (decord, falling back to PyAV). Create it inside
    the worker process that uses it (decord readers must not cross a fork)."""
    return VideoReader(source)


def read_frames(reader: VideoReader, indices: Sequence[int]) -> np.ndarray:
    """Decode only ``indices`` from an open reader -> ``f h w c`` uint8."""
    return reader.get(indices)


def read_video(
    path: str | os.PathLike | bytes, indices: Sequence[int] | None = None
) -> tuple[np.ndarray, float]:
    """Decode a whole video (or ``indices``) from a file, a frame folder or bytes.

    Returns ``(frames f h w c uint8, fps)``. GIFs and folders of images are read with Pillow.
    """
    if not isinstance(path, (bytes, bytearray)):
        p = Path(path)
        if p.is_dir():
            return _read_frame_folder(p, indices), 8.0
        if p.suffix.lower() == ".gif":
            return _read_gif(p, indices)
    reader = open_video(path)
    idx = list(range(len(reader))) if indices is None else list(indices)
    return reader.get(idx), reader.fps


def _read_frame_folder(folder: Path, indices: Sequence[int] | None) -> np.ndarray:
    from PIL import Image

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise VideoDecodeError(f"no image frames in {folder}")
    if indices is not None:
        files = [files[i] for i in indices]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _read_gif(path: Path, indices: Sequence[int] | None) -> tuple[np.ndarray, float]:
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as im:
            duration = im.info.get("duration", 125) or 125
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    except Exception as e:
        raise VideoDecodeError(f"cannot read gif {path}: {e}") from e
    arr = np.stack(frames)
    if indices is not None:
        arr = arr[list(indices)]
    return arr, 1000.0 / duration


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Load an RGB image as ``c h w`` float in [-1, 1]; ``size=(h, w)`` resizes and centre-crops."""
    from PIL import Image

    img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
    img = img.float().div(127.5).sub(1.0)
    if size is not None:
        from i2vlab.data.transforms import resize_center_crop

        img = resize_center_crop(img[None], size)[0]
    return img
