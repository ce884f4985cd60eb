"""Generate-then-score: run a trained method's sampling on a prompt/image list, write the videos
and a manifest the evaluator then reads. Uses ``i2vlab.pipelines.load_pipeline``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .inputs import read_manifest


def _load_prompt_list(path: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"eval.generate.prompts={path!r} does not exist")
    if p.suffix.lower() == ".txt":
        return [
            {"key": f"sample_{i:05d}", "prompt": line.strip(), "image": None}
            for i, line in enumerate(p.read_text().splitlines())
            if line.strip()
        ]
    rows = []
    if p.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    else:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
    out = []
    for i, r in enumerate(rows):
        img = r.get("image") or None
        if img and not Path(img).is_absolute():
            img = str(p.parent / img)
        out.append(
            {
                "key": r.get("key") or f"sample_{i:05d}",
                "prompt": r.get("prompt") or "",
                "image": img,
                "real": r.get("real") or None,
            }
        )
    return out


def generate_videos(gen_cfg: dict, out_dir: str | Path, resolution=None) -> Path:
    """Sample one video per row of ``gen_cfg['prompts']`` and write ``out_dir/generated/<key>.mp4``
    plus ``out_dir/generated/manifest.csv``. Returns the manifest path."""
    from i2vlab.pipelines import load_pipeline
    from i2vlab.utils.video_io import load_image, write_video

    rows = _load_prompt_list(gen_cfg["prompts"])
    out = Path(out_dir) / "generated"
    out.mkdir(parents=True, exist_ok=True)
    module = load_pipeline(gen_cfg["checkpoint"])
    bs = int(gen_cfg.get("batch_size", 1))
    size = tuple(resolution) if resolution is not None else None
    for s in range(0, len(rows), bs):
        chunk = [r for r in rows[s : s + bs] if not (out / f"{r['key']}.mp4").exists()]
        if not chunk:
            continue
        images = None
        if all(r["image"] for r in chunk):
            images = torch.stack([load_image(r["image"], size) for r in chunk])
        with torch.no_grad():
            videos = module(
                [r["prompt"] for r in chunk],
                images,
                num_frames=int(gen_cfg["num_frames"]),
                seed=int(gen_cfg.get("seed", 0)) + s,
                **dict(gen_cfg.get("kwargs") or {}),
            )
        for r, v in zip(chunk, videos):
            write_video(out / f"{r['key']}.mp4", v.cpu(), float(gen_cfg.get("fps", 8)))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "generated", "real", "image", "prompt"])
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    "key": r["key"],
                    "generated": str(out / f"{r['key']}.mp4"),
                    "real": r.get("real") or "",
                    "image": r["image"] or "",
                    "prompt": r["prompt"],
                }
            )
    read_manifest(manifest)  # validate
    return manifest
