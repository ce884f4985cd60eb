"""``report.html``: the results gallery a browser opens beside ``results.md``.

One self-contained page (inline CSS, no script, no network): the results table against the paper's
published rows (the same rows as ``results.md``); per sample the input image(s), the prompt, every
method's video side by side with its per-video metrics; and, when a training run is known, its
training curves and the DynamiCrafter gate lambda per layer. Videos are re-encoded as H.264 mp4
(:func:`i2vlab.utils.video_io.write_video`, libx264, yuv420p: what browsers play) with a PNG poster
of the first frame, under ``report_media/`` next to the page; paths in the page are relative, so the
folder can be moved or served as it is.

:func:`write_gallery` is the page writer (also used by ``scripts/results_table.py`` for several
runs side by side); :func:`report_samples` gathers one evaluation's samples.
"""

from __future__ import annotations

import csv
import html
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1600px}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th:first-child,td:first-child{text-align:left}tr.ours{background:#eef6ff;font-weight:600}
tr.noncomparable td{color:#a33}.banner{background:#fee;border:1px solid #c66;padding:.5em;margin:.5em 0}
.sample{border-top:1px solid #ddd;padding:.8em 0}.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0}figcaption{font-size:.85em;color:#555;max-width:320px}video,img.input{max-width:320px;
min-width:128px;image-rendering:pixelated;background:#000}table.metrics{font-size:.8em}.prompt{font-style:italic}
"""


@dataclass
class GalleryVideo:
    """One video of a sample: a label (the method), the source (file path or bytes) and its metrics."""

    label: str
    source: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    fps: float | None = None


@dataclass
class GallerySample:
    key: str
    prompt: str | None = None
    images: list[Any] = field(default_factory=list)  # paths, or h w c uint8 arrays
    videos: list[GalleryVideo] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _fmt(v: Any) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.1f}"
    return str(v)


def _read_frames(source: Any) -> tuple[np.ndarray, float]:
    from i2vlab.utils.video_io import read_video

    if hasattr(source, "member") and getattr(source, "member", None):  # a tar member (VideoRef)
        return read_video(source.read_bytes())
    return read_video(getattr(source, "path", source))


def encode_media(source: Any, out: Path, fps: float | None = None) -> tuple[Path, Path, int]:
    """``source`` (video file, frame folder, tar member or ``f h w c`` uint8 frames) -> H.264 ``out``
    (.mp4) and a poster PNG beside it; returns (mp4, poster, frame count)."""
    from PIL import Image

    from i2vlab.utils.video_io import write_video

    if isinstance(source, np.ndarray):
        frames, native = source, 8.0
    else:
        frames, native = _read_frames(source)
    frames = np.ascontiguousarray(frames)
    mp4 = write_video(out.with_suffix(".mp4"), frames, float(fps or native or 8.0))
    poster = out.with_suffix(".png")
    Image.fromarray(frames[0]).save(poster)
    return mp4, poster, len(frames)


def _image_png(image: Any, out: Path) -> Path:
    from PIL import Image

    if isinstance(image, np.ndarray):
        img = Image.fromarray(image)
    else:
        img = Image.open(image).convert("RGB")
    img.save(out.with_suffix(".png"))
    return out.with_suffix(".png")


def table_html(header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], table_id: str) -> str:
    """``rows``: (css class, cells); the first cell is the row name."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{cls}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        for cls, cells in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def run_figures(run_dir: str | Path, media: Path) -> list[tuple[str, Path]]:
    """Training curves (train/loss, val/loss of ``csv/*/metrics.csv``) and the learned gate lambda per
    layer (DynamiCrafter runs with learnable gates) of a training run, as PNGs in ``media``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, figs = Path(run_dir), []
    media.mkdir(parents=True, exist_ok=True)
    files = sorted(run_dir.glob("csv/*/metrics.csv"))
    series: dict[str, list[tuple[float, float]]] = {}
    for f in files:
        for r in csv.DictReader(f.open()):
            for k in ("train/loss", "val/loss"):
                if r.get(k) not in (None, "") and r.get("step") not in (None, ""):
                    series.setdefault(k, []).append((float(r["step"]), float(r[k])))
    if series:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for k, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(media / "training_curves.png", dpi=90)
        plt.close(fig)
        figs.append(("training curves", media / "training_curves.png"))
    gates = _run_gates(run_dir)
    if gates:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(range(len(gates)), list(gates.values()))
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xlabel("dual cross-attention layer (forward order)")
        ax.set_ylabel("lambda = tanh(alpha) + 1")
        fig.tight_layout()
        fig.savefig(media / "lambda.png", dpi=90)
        plt.close(fig)
        figs.append(("learned gate lambda per layer (DynamiCrafter Figure 2, left)", media / "lambda.png"))
    return figs


def _run_gates(run_dir: Path) -> dict[str, float]:
    from i2vlab.models.dynamicrafter import gates_from_state_dict

    for cand in (run_dir / "export" / "trainable.safetensors", run_dir / "checkpoints" / "last.ckpt"):
        if not cand.is_file():
            continue
        try:
            if cand.suffix == ".safetensors":
                from safetensors.torch import load_file

                tensors = load_file(str(cand))
            else:
                from i2vlab.utils.safe_load import load_weights

                tensors = load_weights(cand, what="checkpoint", trust_flag=None)
                tensors = tensors.get("state_dict", tensors) if isinstance(tensors, dict) else {}
            return dict(gates_from_state_dict(tensors))
        except Exception as e:  # noqa: BLE001 - a figure must never stop the report
            log.warning("report: no lambda plot from %s: %s", cand, e)
            return {}
    return {}


def write_gallery(
    out_path: str | Path,
    title: str,
    tables: Sequence[tuple[str, Sequence[str], Sequence[tuple[str, Sequence[str]]], str]],
    samples: Sequence[GallerySample],
    figures: Sequence[tuple[str, Path]] = (),
    banner: str | None = None,
    notes: Sequence[str] = (),
    media_dir: str = "report_media",
) -> Path:
    """Write the page. ``tables``: (caption, header, rows, footnote); ``figures``: (caption, PNG)."""
    out_path = Path(out_path)
    root = out_path.parent
    media = root / media_dir
    media.mkdir(parents=True, exist_ok=True)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]  # fmt: skip
    if banner:
        parts.append(f'<div class="banner" id="banner">{html.escape(banner)}</div>')
    for i, (caption, header, rows, foot) in enumerate(tables):
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(table_html(header, rows, "results" if i == 0 else f"results{i}"))
        if foot:
            parts.append(f"<p class='source'>{html.escape(foot)}</p>")
    if notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if samples:
        parts.append(f"<h2>Samples ({len(samples)})</h2><section id='samples'>")
    for s in samples:
        sd = media / _slug(s.key)
        sd.mkdir(parents=True, exist_ok=True)
        cells = []
        for j, img in enumerate(s.images):
            png = _image_png(img, sd / f"input_{j}")
            rel = png.relative_to(root).as_posix()
            cells.append(f"<figure><img class='input' src='{html.escape(rel)}' alt='input {j}'>"
                         f"<figcaption>input image {j + 1}</figcaption></figure>")  # fmt: skip
        for j, v in enumerate(s.videos):
            try:
                mp4, poster, n = encode_media(v.source, sd / f"video_{j}_{_slug(v.label)}", v.fps)
            except Exception as e:  # noqa: BLE001 - an unreadable video is named, not fatal
                cells.append(f"<figure><figcaption>{html.escape(v.label)}: cannot show ({html.escape(str(e)[:200])})"
                             "</figcaption></figure>")  # fmt: skip
                continue
            met = "".join(
                f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(x))}</td></tr>"
                for k, x in v.metrics.items()
            )
            src, pst = mp4.relative_to(root).as_posix(), poster.relative_to(root).as_posix()
            cells.append(
                f"<figure><video src='{html.escape(src)}' poster='{html.escape(pst)}' controls muted loop "
                f"playsinline preload='auto'></video><figcaption>{html.escape(v.label)} ({n} frames)"
                f"</figcaption>{'<table class=metrics>' + met + '</table>' if met else ''}</figure>"
            )
        prompt = f"<p class='prompt'>{html.escape(s.prompt)}</p>" if s.prompt else ""
        parts.append(f"<div class='sample' data-key='{html.escape(s.key)}'><h3>{html.escape(s.key)}</h3>"
                     f"{prompt}<div class='row'>{''.join(cells)}</div></div>")  # fmt: skip
    if samples:
        parts.append("</section>")
    if figures:
        parts.append("<h2>Training run</h2><section id='run' class='row'>")
        for caption, png in figures:
            rel = Path(png).relative_to(root).as_posix()
            parts.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip
        parts.append("</section>")
    parts.append("</body></html>")
    out_path.write_text("\n".join(parts))
    return out_path


def per_video_metrics(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, dict]:
    """``{key: {metric: value}}`` of the generated videos' rows (per_video.csv) for ``metrics``."""
    out = {}
    for r in rows:
        if r.get("role") == "generated":
            out[r["key"]] = {m: r[m] for m in metrics if m in r}
    return out


def report_samples(
    items: Sequence[Any], rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], max_samples: int
) -> list[GallerySample]:
    """The first ``max_samples`` scored items (by key): input image (given, else the paired real
    video's first frame), prompt, the generated video and, when paired, the ground truth."""
    scored = {r["key"] for r in rows if r.get("role") == "generated" and r.get("status") == "ok"}
    per = per_video_metrics(rows, metrics)
    out = []
    for it in sorted((i for i in items if i.key in scored), key=lambda i: i.key)[: max(0, int(max_samples))]:
        images: list[Any] = []
        if it.image:
            images.append(it.image)
        elif it.real is not None:
            try:
                images.append(_read_frames(it.real)[0][0])
            except Exception:  # noqa: BLE001
                pass
        videos = [GalleryVideo("generated", it.generated, per.get(it.key, {}))]
        if it.real is not None:
            videos.append(GalleryVideo("ground truth / real", it.real))
        out.append(GallerySample(it.key, it.prompt, images, videos))
    return out
