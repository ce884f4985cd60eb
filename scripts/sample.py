#!/usr/bin/env python
"""Sample videos from a trained run.

    python scripts/sample.py --run outputs/smoke/runs/<time> --prompt "a red circle moving left" --out out.mp4
    python scripts/sample.py --run <run> --image first.png --prompt "..." --set num_inference_steps=25 guidance_scale=7.5
    python scripts/sample.py --run <run> --image start.png --image end.png ...        # two-keyframe methods

``--run`` takes a run directory, a checkpoint or an exported safetensors file (its run directory
must hold the config). ``--set key=value`` pairs are passed to the method's ``sample()`` (values
parsed as YAML: numbers, true/false, lists); ``--override key=value`` changes the run config
first (e.g. ``backbone.pretrained=/models/sd15`` on another machine). Writes mp4 (or gif by
suffix) and the prompt beside each video as ``<name>.txt``, and prints the paths.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from i2vlab.utils.runtime import configure_threads

configure_threads()  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402

from i2vlab.errors import report_user_errors  # noqa: E402
from i2vlab.pipelines.loading import find_run_config, load_pipeline  # noqa: E402
from i2vlab.utils.video_io import load_image, write_video  # noqa: E402


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def required_images(cfg) -> tuple[int, str]:
    """(images per video, method description) from a run config, without building the model."""
    from i2vlab.pipelines.loading import pipeline_class

    cls = pipeline_class(cfg)
    n = cls.keyframes_for(cfg.method)
    name = cls.__name__.removesuffix("Pipeline")
    return n, f"{name} interpolation" if n == 2 and name == "DynamiCrafter" else name


def check_images(paths: list[str], prompts: list[str], cfg, sets: dict) -> None:
    """Fail before loading any model, in command-line terms, when the images do not fit the run."""
    from PIL import Image, UnidentifiedImageError

    for p in paths:
        f = Path(p)
        if not f.is_file():
            raise SystemExit(f"--image {p}: no such file")
        try:
            with Image.open(f) as im:
                im.verify()
        except (UnidentifiedImageError, OSError) as e:
            raise SystemExit(f"--image {p}: not a readable image ({e})") from None
    n, what = required_images(cfg)
    k = len(prompts)
    if n == 0 and paths:
        raise SystemExit(f"this run ({what}) is text-to-video: drop --image")
    if n == 1 and len(paths) != k:
        raise SystemExit(
            f"this run ({what}) needs one --image per --prompt: got {len(paths)} image(s) for {k} prompt(s), "
            "e.g. --image first.png --prompt '...'"
        )
    if n == 2:
        loop = bool(sets.get("loop", False))
        if loop and len(paths) == k:
            return
        if k != 1 or len(paths) != 2:
            hint = " (or one image with --set loop=true)" if what.startswith("DynamiCrafter") else ""
            raise SystemExit(
                f"this run ({what}) needs two keyframes for one prompt: --image start.png --image end.png{hint}; "
                f"got {len(paths)} image(s) for {k} prompt(s)"
            )


@report_user_errors
def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run directory, .ckpt or exported .safetensors")
    ap.add_argument("--prompt", action="append", default=[], help="one per video (repeatable)")
    ap.add_argument(
        "--image", action="append", default=[], help="conditioning image(s); two for keyframe methods"
    )
    ap.add_argument("--num-frames", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--out", default=None, help="output .mp4/.gif (default: <run>/samples/sample_<time>.mp4)")
    ap.add_argument("--gif", action="store_true", help="also write a .gif beside the mp4")
    ap.add_argument("--ema", action="store_true", help="use the EMA export if present")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", nargs="*", default=[], help="sample() keyword arguments, key=value")
    ap.add_argument("--override", nargs="*", default=[], help="run config overrides, key=value")
    a = ap.parse_args(argv)

    prompts = a.prompt or [""]
    kwargs = parse_sets(a.set)
    run = Path(a.run)
    if not run.exists():
        raise SystemExit(f"--run {a.run}: no such run directory or file")
    check_images(a.image, prompts, find_run_config(run), kwargs)
    pipe = load_pipeline(a.run, overrides=a.override, use_ema=a.ema, device=a.device)
    size = tuple(pipe.run_config.backbone.get("resolution", (256, 256)))
    images = torch.stack([load_image(p, size) for p in a.image]).to(a.device) if a.image else None
    if images is not None and images.shape[0] == 2 * len(prompts) == 2:  # two keyframes for one video
        kwargs.setdefault("last_images", images[1:])
        images = images[:1]
    t0 = time.perf_counter()
    videos = pipe(prompts, images=images, num_frames=a.num_frames, seed=a.seed, **kwargs)
    dt = time.perf_counter() - t0
    run_dir = Path(a.run) if Path(a.run).is_dir() else Path(a.run).parent.parent
    out = Path(a.out) if a.out else run_dir / "samples" / f"sample_{time.strftime('%Y%m%d-%H%M%S')}.mp4"
    paths = []
    for i, v in enumerate(videos):
        p = out if len(videos) == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        paths.append(write_video(p, v, fps=a.fps))
        p.with_suffix(".txt").write_text(prompts[i % len(prompts)])  # caption beside it, read by evaluate.py
        if a.gif and p.suffix != ".gif":
            paths.append(write_video(p.with_suffix(".gif"), v, fps=a.fps))
    print(f"sampled {len(videos)} video(s) of {videos.shape[1]} frames in {dt:.1f}s")
    for p in paths:
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    main()
