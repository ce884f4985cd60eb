"""Shards in, motion-captioned shards out, with a report; the motion-control evaluation cases.

Part of :mod:`i2vlab.data.motion_captions` (see there).
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from i2vlab.data.motion_captions.model import ModelMotionCaptioner
from i2vlab.data.motion_captions.rules import RuleBasedMotionCaptioner
from i2vlab.errors import UserError

log = logging.getLogger(__name__)


class OutputExistsError(UserError, FileExistsError):
    """The output folder already holds shards."""


# ----------------------------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------------------------
@dataclass
class MotionCaptionReport:
    """Totals of one :func:`process_shards` run (written as ``report.json``)."""

    shards_read: int = 0
    shards_written: int = 0
    clips: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    data_faults: dict[str, int] = field(default_factory=dict)
    captioner: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def _caption_of(sample: dict[str, Any]) -> tuple[str, bool]:
    raw = sample.get("txt")
    if raw is None:
        return "", False
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8"), True
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace"), False
    return str(raw), True


def _chunks(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def process_shards(
    shards: str | Sequence[str],
    out_dir: str | Path,
    captioner: RuleBasedMotionCaptioner | ModelMotionCaptioner | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> MotionCaptionReport:
    """Filter and re-caption a shard set into ``out_dir``.

    One output shard per input shard that keeps at least one clip (same file name); members other
    than ``.txt`` / ``.json`` are copied byte for byte. ``captions.csv`` lists every clip read
    (key, shard, kept, reason, category, caption, original caption, source, model output) and
    ``report.json`` the totals. Unreadable shards, cut shards and duplicate keys are counted
    (``data_faults``), never fatal. ``limit``: stop after this many clips.
    """
    import webdataset as wds
    from tqdm import tqdm

    from i2vlab.data.health import DataHealth
    from i2vlab.data.shards import list_shards
    from i2vlab.data.tarstream import shard_samples

    captioner = captioner or RuleBasedMotionCaptioner()
    urls = list_shards(shards, key="--shards")
    out = Path(out_dir)
    if out.exists() and any(out.glob("*.tar")) and not overwrite:
        raise OutputExistsError(f"--out {out} already holds shards; pick another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    report = MotionCaptionReport(captioner=type(captioner).__name__)
    dropped, cats, sources = Counter(), Counter(), Counter()
    health = DataHealth()
    names = Counter(Path(u).name for u in urls)
    rows_f = open(out / "captions.csv", "w", newline="")
    rows = csv.writer(rows_f)
    rows.writerow(
        ["key", "shard", "kept", "reason", "category", "caption", "original", "source", "model_output"]
    )
    done = False
    try:
        for n, url in enumerate(tqdm(urls, desc="shards", unit="shard", disable=not progress)):
            report.shards_read += 1
            name = Path(url).name if names[Path(url).name] == 1 else f"{n:06d}-{Path(url).name}"
            if not name.endswith(".tar"):
                name += ".tar"
            tmp, final = out / f".{name}.tmp", out / name
            written = 0
            with wds.TarWriter(str(tmp)) as sink:
                for chunk in _chunks(shard_samples(url, health), batch_size):
                    if limit is not None:
                        chunk = chunk[: max(0, limit - report.clips)]
                    if not chunk:
                        done = True
                        break
                    caps = []
                    for s in chunk:
                        c, ok = _caption_of(s)
                        if not ok:
                            health.add("missing_caption" if s.get("txt") is None else "bad_caption")
                        caps.append(c)
                    decisions = captioner.batch(caps)
                    for s, cap, d in zip(chunk, caps, decisions):
                        report.clips += 1
                        rows.writerow(
                            [
                                s["__key__"],
                                Path(url).name,
                                int(d.keep),
                                d.reason,
                                d.category or "",
                                d.caption,
                                cap,
                                d.source,
                                d.model_output or "",
                            ]
                        )
                        if not d.keep:
                            dropped[d.reason] += 1
                            continue
                        meta = _meta_of(s)
                        meta.update(
                            motion_caption=d.caption,
                            motion_category=d.category,
                            original_caption=cap,
                            motion_source=d.source,
                        )
                        sample = {k: v for k, v in s.items() if k not in ("__url__", "txt", "json")}
                        sample["txt"] = d.caption
                        sample["json"] = json.dumps(meta, sort_keys=True)
                        sink.write(sample)
                        written += 1
                        report.kept += 1
                        cats[d.category or "none"] += 1
                        sources[d.source] += 1
                    if limit is not None and report.clips >= limit:
                        done = True
                        break
            if written:
                tmp.replace(final)
                report.shards_written += 1
            else:
                tmp.unlink()
            if done:
                break
    finally:
        rows_f.close()
    report.dropped, report.categories, report.sources = dict(dropped), dict(cats), dict(sources)
    report.data_faults = {k: v for k, v in health.snapshot().items() if v}
    (out / "report.json").write_text(report.to_json())
    return report


def _meta_of(sample: dict[str, Any]) -> dict[str, Any]:
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError):
        return {"bad_meta": True}
    return meta if isinstance(meta, dict) else {"meta": meta}


# ----------------------------------------------------------------------------------------------
# motion-control evaluation cases
# ----------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_motions(path: str | Path) -> list[str]:
    """Motion prompts, one a line (``#`` comments); ``{subject}`` stands for the image's subject."""
    lines = Path(path).read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]


def motion_control_cases(
    images: Sequence[str | Path],
    motions: Sequence[str],
    subjects: dict[str, str] | None = None,
    default_subject: str = "a person",
) -> list[dict[str, str]]:
    """Every image crossed with every motion prompt: rows ``key, image, prompt, motion``.

    ``subjects``: image stem -> subject words ("a man", "a woman"); ``{subject}`` in a motion is
    replaced by it (default ``default_subject``). Keys are ``<image stem>__<motion index>``."""
    subjects = subjects or {}
    rows = []
    for img in images:
        p = Path(img)
        subj = subjects.get(p.stem, default_subject)
        for j, m in enumerate(motions):
            prompt = m.replace("{subject}", subj).strip()
            prompt = prompt[0].upper() + prompt[1:] if prompt else prompt
            rows.append({"key": f"{p.stem}__{j:02d}", "image": str(p), "prompt": prompt, "motion": m})
    return rows


def write_cases(rows: Sequence[dict[str, str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "image", "prompt", "motion"])
        w.writeheader()
        w.writerows(rows)
    return path
