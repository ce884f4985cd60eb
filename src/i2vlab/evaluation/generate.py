"""Generate-then-score: sample one video per row of a prompt list, write them and a manifest the
evaluator then reads.

One seeding policy (:mod:`i2vlab.utils.seeding`): each video is sampled **alone**, from
``derive_seed(eval.generate.seed, key)``. A batched call would differ from an unbatched one by ~1e-6
(other kernels), which the mp4 encoding can turn into other bytes, so one call per video is what makes a
video the same whatever else is generated and after a killed-and-resumed generation (written videos are
kept; files are written atomically). ``generation.json`` records the settings: resuming into a folder
made with other settings is refused. Every key is checked before anything is sampled: it must name a
file inside ``<output_dir>/generated``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from i2vlab.errors import UserError
from i2vlab.utils.safe_load import safe_child
from i2vlab.utils.seeding import derive_seed

from .inputs import EvalInputError, EvalInputNotFoundError, read_manifest, read_rows


class GenerationMismatchError(UserError, RuntimeError):
    """The output folder holds videos generated with other settings."""


def load_generator(path: str):
    """The one place generation is loaded: the inference pipeline of a trained run (run dir, checkpoint
    or export; no Lightning), ``gen(prompts, images=None, num_frames=None, seed=0, **opts)`` -> ``b f c h w``
    in [-1, 1]."""
    from i2vlab.pipelines import load_pipeline

    return load_pipeline(path)


def load_prompt_list(path: str) -> list[dict]:
    """Rows ``{key, prompt, image, real}`` of a ``.txt`` (one prompt per line, keys ``sample_00000``...)
    or ``.csv`` / ``.jsonl`` (columns ``key``, ``prompt``, ``image``, ``real``; relative image paths are
    resolved against the list's folder)."""
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise EvalInputNotFoundError(f"eval.generate.prompts={path!r} does not exist")
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        return [
            {"key": f"sample_{i:05d}", "prompt": t, "image": None, "real": None} for i, t in enumerate(lines)
        ]
    rows = read_rows(p, "eval.generate.prompts")
    out = []
    for i, r in enumerate(rows):
        img = r.get("image") or None
        if img and not Path(img).is_absolute():
            img = str(p.parent / img)
        out.append({"key": str(r.get("key") or f"sample_{i:05d}"), "prompt": r.get("prompt") or "",
                    "image": img, "real": r.get("real") or None})  # fmt: skip
    keys = [r["key"] for r in out]
    if len(set(keys)) != len(keys):
        raise EvalInputError(
            f"eval.generate.prompts={path!r}: duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}"
        )
    return out


def _stamp(gen_cfg: dict, resolution) -> dict:
    keep = ("checkpoint", "prompts", "num_frames", "seed", "fps", "kwargs")
    return {
        **{k: gen_cfg.get(k) for k in keep},
        "resolution": resolution,
        "seeding": "derive_seed(seed, key)",
    }


def generate_videos(gen_cfg: dict, out_dir: str | Path, resolution=None) -> Path:
    """Sample one video per row of ``gen_cfg['prompts']`` into ``out_dir/generated/<key>.mp4`` (videos
    already there are kept) and write ``out_dir/generated/manifest.csv``. Returns the manifest path."""
    from i2vlab.utils.video_io import load_image, write_video

    rows = load_prompt_list(gen_cfg["prompts"])
    out = Path(out_dir) / "generated"
    paths = {r["key"]: safe_child(out, r["key"], ".mp4", what="eval.generate.prompts key") for r in rows}
    out.mkdir(parents=True, exist_ok=True)
    stamp, stamp_file = _stamp(gen_cfg, resolution), out / "generation.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) != json.loads(json.dumps(stamp)):
        raise GenerationMismatchError(
            f"{out} holds videos generated with other settings ({stamp_file}); use another eval.output_dir "
            "or delete that folder to generate again"
        )
    stamp_file.write_text(json.dumps(stamp, indent=2))
    todo = [r for r in rows if not paths[r["key"]].exists()]
    if todo:
        gen = load_generator(gen_cfg["checkpoint"])
        size = tuple(resolution) if resolution is not None else None
        for r in todo:
            images = load_image(r["image"], size)[None] if r["image"] else None
            video = gen([r["prompt"]], images, num_frames=int(gen_cfg["num_frames"]),
                        seed=derive_seed(int(gen_cfg["seed"]), r["key"]), **dict(gen_cfg.get("kwargs") or {}))  # fmt: skip
            write_video(paths[r["key"]], video[0].cpu(), float(gen_cfg["fps"]))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "generated", "real", "image", "prompt"])
        w.writeheader()
        for r in rows:
            w.writerow({"key": r["key"], "generated": str(paths[r["key"]]), "real": r.get("real") or "",
                        "image": r["image"] or "", "prompt": r["prompt"]})  # fmt: skip
    read_manifest(manifest)  # validate
    return manifest
