"""Where the videos come from: folders (mp4/gif/frame folders), webdataset tar shards, manifests.

Shards are indexed with ``tarfile`` (member offsets) rather than streamed with webdataset, because
the evaluator needs random access by key: pairing generated with real videos, splitting work
across ranks, and resuming from the feature cache.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from i2vlab.errors import UserError
from i2vlab.utils.video_io import VIDEO_EXTENSIONS, VideoDecodeError, open_video, read_frames, read_video

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class EvalInputError(UserError, ValueError):
    """The inputs cannot be read as configured (missing folder, bad manifest, no videos)."""


class EvalInputNotFoundError(UserError, FileNotFoundError):
    """A configured input path does not exist."""


@dataclass
class VideoRef:
    """One video: a file / frame folder (``member`` None) or a member of a tar shard."""

    key: str
    path: str
    member: str | None = None
    offset: int = 0
    size: int = 0
    identity: str = ""

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass
class EvalItem:
    key: str
    generated: VideoRef
    real: VideoRef | None = None
    image: str | None = None
    prompt: str | None = None
    meta: dict = field(default_factory=dict)


def _file_identity(p: Path) -> str:
    st = p.stat()
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS)
        sig = ",".join(f"{q.name}:{q.stat().st_size}:{q.stat().st_mtime_ns}" for q in files)
        return f"{p.resolve()}|{sig}"
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _is_frame_folder(p: Path) -> bool:
    return p.is_dir() and any(q.suffix.lower() in IMAGE_EXTENSIONS for q in p.iterdir())


def index_shard(path: str | Path) -> tuple[list[VideoRef], dict[str, str]]:
    """Index one tar shard -> (video refs, captions by key from ``<key>.txt``)."""
    path = Path(path)
    refs, captions = [], {}
    ident = _file_identity(path)
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            ext = "." + ext.lower()
            if ext in VIDEO_EXTENSIONS:
                refs.append(VideoRef(key, str(path), m.name, m.offset_data, m.size, f"{ident}|{m.name}"))
            elif ext == ".txt":
                captions[key] = tar.extractfile(m).read().decode("utf-8").strip()
    return refs, captions


def collect_videos(spec: str | os.PathLike | list | None) -> tuple[list[VideoRef], dict[str, str]]:
    """Videos from a folder (files with a video suffix, and sub-folders of image frames), tar
    shard(s) (a path, a glob or a list), or a single video file. Returns (refs sorted by key, captions)."""
    if spec in (None, ""):
        return [], {}
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    refs: list[VideoRef] = []
    captions: dict[str, str] = {}
    for s in specs:
        s = os.path.expanduser(str(s))
        paths = sorted(glob.glob(s)) if any(c in s for c in "*?[") else [s]
        if not paths:
            raise EvalInputNotFoundError(f"no files match {s!r}")
        for p in map(Path, paths):
            if not p.exists():
                raise EvalInputNotFoundError(f"video input {p} does not exist")
            if p.is_file() and p.suffix == ".tar":
                r, c = index_shard(p)
                refs += r
                captions.update(c)
            elif p.is_file():
                refs.append(VideoRef(p.stem, str(p), identity=_file_identity(p)))
            elif _is_frame_folder(p) and not any(
                q.is_dir() or q.suffix.lower() in VIDEO_EXTENSIONS for q in p.iterdir()
            ):
                refs.append(VideoRef(p.name, str(p), identity=_file_identity(p)))
            else:
                for q in sorted(p.iterdir()):
                    if q.is_file() and q.suffix.lower() in VIDEO_EXTENSIONS:
                        refs.append(VideoRef(q.stem, str(q), identity=_file_identity(q)))
                    elif q.is_file() and q.suffix == ".tar":
                        r, c = index_shard(q)
                        refs += r
                        captions.update(c)
                    elif _is_frame_folder(q):
                        refs.append(VideoRef(q.name, str(q), identity=_file_identity(q)))
                    elif q.is_file() and q.suffix == ".txt":
                        captions[q.stem] = q.read_text().strip()
    seen: dict[str, int] = {}
    for r in refs:  # make keys unique
        if r.key in seen:
            seen[r.key] += 1
            r.key = f"{r.key}#{seen[r.key]}"
        else:
            seen[r.key] = 0
    return sorted(refs, key=lambda r: r.key), captions


def read_rows(path: str | os.PathLike, what: str) -> list[dict]:
    """The rows of a CSV (header row) or JSON-lines file (``.jsonl`` / ``.json``)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputNotFoundError(f"{what} {path} does not exist")
    if path.suffix.lower() in (".jsonl", ".json"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """CSV (header row) or JSONL with columns ``generated`` (required), ``real``, ``image``, ``prompt``,
    ``key``. Relative paths are resolved against the manifest's folder."""
    path = Path(path)
    out = []
    for i, r in enumerate(read_rows(path, "manifest")):
        if not r.get("generated"):
            raise EvalInputError(f"{path}: row {i} has no 'generated' column/value")
        row = {k: (v if v not in ("", None) else None) for k, v in r.items()}
        for k in ("generated", "real", "image"):
            if row.get(k) and not os.path.isabs(row[k]):
                row[k] = str(path.parent / row[k])
        row["key"] = row.get("key") or Path(row["generated"]).stem
        out.append(row)
    return out


def ref_from_path(path: str, key: str) -> VideoRef:
    p = Path(path)
    if not p.exists():
        return VideoRef(key, str(p), identity=f"missing:{p}")
    return VideoRef(key, str(p), identity=_file_identity(p))


class ClipError(Exception):
    """A video was skipped; ``reason`` is the counter name (unreadable, too_short, ...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _num_frames(ref: VideoRef) -> tuple[int, object]:
    src = ref.read_bytes() if ref.member else ref.path
    p = Path(ref.path)
    if ref.member is None and (p.is_dir() or p.suffix.lower() == ".gif"):
        frames, _ = read_video(src)
        return len(frames), frames
    if ref.member is not None and ref.member.lower().endswith(".gif"):
        import io

        from PIL import Image, ImageSequence

        with Image.open(io.BytesIO(src)) as im:
            frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
        return len(frames), frames
    reader = open_video(src)
    return len(reader), reader


def load_clip(
    ref: VideoRef, num_frames: int, stride: int = 1, start: int = 0, resolution=None
) -> torch.Tensor:
    """Decode ``num_frames`` frames at ``stride`` from ``start`` -> ``f c h w`` float in [-1, 1],
    resized (short side) and centre-cropped to ``resolution`` (h, w) if given.

    Raises :class:`ClipError` (``unreadable`` / ``too_short``) for the caller to count."""
    from i2vlab.data.transforms import resize_center_crop
    from i2vlab.utils.video_io import from_uint8_frames

    try:
        n, handle = _num_frames(ref)
        need = start + (num_frames - 1) * stride + 1
        if n < need:
            raise ClipError(
                "too_short", f"{ref.key}: {n} frames, need {need} ({num_frames} at stride {stride})"
            )
        idx = list(range(start, need, stride))
        frames = handle[idx] if isinstance(handle, np.ndarray) else read_frames(handle, idx)
    except ClipError:
        raise
    except (VideoDecodeError, OSError, ValueError, RuntimeError) as e:
        raise ClipError("unreadable", f"{ref.key}: {e}") from e
    video = from_uint8_frames(frames)
    if resolution is not None:
        video = resize_center_crop(video, tuple(resolution))
    return video


def load_condition_image(path: str, resolution=None) -> torch.Tensor:
    from i2vlab.utils.video_io import load_image

    try:
        return load_image(path, tuple(resolution) if resolution is not None else None)
    except Exception as e:
        raise ClipError("unreadable_image", f"cannot read condition image {path}: {e}") from e


def read_prompts(path: str) -> dict[str, str]:
    """``.json`` {key: prompt}, ``.jsonl`` / ``.csv`` (key, prompt) or ``.txt`` lines ``key<TAB>prompt``."""
    p = Path(path)
    if not p.is_file():
        raise EvalInputNotFoundError(f"eval.prompts={path!r} does not exist")
    if p.suffix.lower() == ".json":
        return {str(k): str(v) for k, v in json.loads(p.read_text()).items()}
    if p.suffix.lower() in (".jsonl", ".csv"):
        return {r["key"]: r["prompt"] for r in read_rows(p, "eval.prompts")}
    out = {}
    for line in p.read_text().splitlines():
        if "\t" in line:
            k, v = line.split("\t", 1)
            out[k.strip()] = v.strip()
    return out


def index_images(folder: str) -> dict[str, str]:
    """Condition images of a folder by key (file stem)."""
    p = Path(folder)
    if not p.is_dir():
        raise EvalInputNotFoundError(f"eval.images={folder!r} is not a folder")
    return {q.stem: str(q) for q in sorted(p.iterdir()) if q.suffix.lower() in IMAGE_EXTENSIONS}


def collect_items(cfg: dict, need_real: bool) -> tuple[list[EvalItem], list[VideoRef]]:
    """(generated items with their pairing, the real reference set) from ``eval.generated`` / ``manifest``,
    ``real``, ``images``, ``prompts``; ``max_videos`` / ``max_real_videos`` applied."""
    real_refs, real_caps = collect_videos(cfg["real"])
    real_by_key = {r.key: r for r in real_refs}
    prompts = dict(real_caps)
    if cfg["prompts"]:
        prompts.update(read_prompts(cfg["prompts"]))
    items: list[EvalItem] = []
    if cfg["manifest"]:
        for row in read_manifest(cfg["manifest"]):
            k = row["key"]
            real = ref_from_path(row["real"], k) if row.get("real") else real_by_key.get(k)
            prompt = row.get("prompt") or prompts.get(k)
            items.append(EvalItem(k, ref_from_path(row["generated"], k), real, row.get("image"), prompt))
        if not real_refs:
            real_refs = [it.real for it in items if it.real is not None]
    else:
        gen_refs, gen_caps = collect_videos(cfg["generated"])
        for k, v in gen_caps.items():
            prompts.setdefault(k, v)
        images = index_images(cfg["images"]) if cfg["images"] else {}
        items = [
            EvalItem(r.key, r, real_by_key.get(r.key), images.get(r.key), prompts.get(r.key))
            for r in gen_refs
        ]
    if not items:
        raise EvalInputError(
            "no generated videos found: set eval.generated (folder/shards), eval.manifest, "
            "or eval.generate.checkpoint"
        )
    if cfg["max_videos"]:
        items = items[: int(cfg["max_videos"])]
    if cfg["max_real_videos"]:
        real_refs = real_refs[: int(cfg["max_real_videos"])]
    if need_real and not real_refs:
        raise EvalInputError(
            "FVD/KVD/FID need real videos: set eval.real (folder/shards) or a 'real' column in eval.manifest"
        )
    return items, real_refs
