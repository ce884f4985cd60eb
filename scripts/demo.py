#!/usr/bin/env python
"""The toy-world demo (what ``make demo`` runs): fine-tune, sample and score the three image-to-video
methods, starting from the pre-trained toy models published in ``assets/toy``.

    python scripts/demo.py --out outputs/demo
    python scripts/demo.py --out /tmp/demo --steps 2 --videos 1 --sample-steps 4 --no-eval   # quick look

What it does, printing where everything goes:

1. the toy shards (``data/toy``: built if missing);
2. the published toy VAE's reconstruction PSNR on the toy validation videos (every frame);
3. a short fine-tune of each method, in parallel, with the project's own command
   ``python train.py experiment=demo_<method> hydra.run.dir=<out>/<method>/train``
   (I2V-Adapter: the first-frame branch; DynamiCrafter: the stage-3 selection; Generative
   Inbetweening: the temporal value / output projections);
4. samples from each fine-tuned run (``i2vlab.pipelines.load_pipeline``, the API ``scripts/sample.py``
   uses), conditioned on the toy validation clips: their first frame (I2V-Adapter, DynamiCrafter) or
   their first and last frames (Inbetweening, clips at double rate); each video as mp4 with a
   contact sheet PNG beside it (row 1: the real clip, row 2: the sample);
5. the numbers: frame-0 PSNR against the conditioning image, mean optical-flow magnitude (OpenCV
   DIS, the evaluator's ``OpenCVFlow``: mean over frame pairs and pixels, in 64x64 pixels; the real
   clips' value beside it), keyframe PSNR for Inbetweening; each against its threshold;
6. ``python evaluate.py eval=smoke eval.generated=<out>/<method>/samples`` per method (the smoke
   suite: tiny random-init extractors, numbers not comparable with papers);
7. ``<out>/summary.md`` and ``<out>/summary.json``.

Exit status 0 when every step ran; a number that misses its threshold is marked MISSED in the table
and named in a last line (``--strict``: exit 1 then; the toy DynamiCrafter and Inbetweening models
do not meet theirs yet, see docs/toy_world.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from i2vlab.utils.runtime import configure_threads

configure_threads()

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("i2v_adapter", "dynamicrafter", "inbetween")
TITLES = {
    "i2v_adapter": "I2V-Adapter",
    "dynamicrafter": "DynamiCrafter",
    "inbetween": "Generative Inbetweening",
}
#: the issue's thresholds
THRESHOLDS = {"vae_psnr": 25.0, "frame0_psnr": 25.0, "flow": 0.5, "keyframe_psnr": 25.0}


# ----------------------------------------------------------------------------------------------
# measurements (also used by tests/test_toy_world.py)
# ----------------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images / videos in [-1, 1] (on [0, 1]), over all their values."""
    mse = ((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2).pow(2).mean()
    return float(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))


def mean_flow(video: torch.Tensor, method: str = "dis") -> float:
    """Mean optical-flow magnitude (pixels) of a video (f c h w in [-1, 1]): over consecutive frame
    pairs and pixels, with the evaluator's OpenCV flow (FlowScore's definition)."""
    from i2vlab.metrics.extractors.flow import OpenCVFlow

    fl = OpenCVFlow(method)(video[:-1].float(), video[1:].float())
    return float(fl.norm(dim=1).mean())


def toy_clips(split_dir: str | Path, num_frames: int, stride: int, limit: int | None = None, size: int = 64):
    """The toy clips of a shard folder, as the data module decodes them (frame 0 on, fixed stride):
    a list of {video: f c h w in [-1, 1], caption, key}."""
    from i2vlab.data.datamodule import VideoShardDataset

    ds = VideoShardDataset(
        str(split_dir),
        num_frames=num_frames,
        frame_stride=stride,
        resolution=(size, size),
        shuffle_buffer=0,
        resampled=False,
        random_start=False,
        shards_key="toy clips",
    )
    out = []
    for s in ds:
        out.append({"video": s["video"], "caption": s["caption"], "key": s["key"]})
        if limit and len(out) >= limit:
            break
    return out


@torch.no_grad()
def vae_psnr(vae_dir: str | Path, clips: list[dict]) -> float:
    """Mean per-frame PSNR of the VAE's reconstructions (posterior mode) of ``clips``."""
    from diffusers import AutoencoderKL

    from i2vlab.methods.vae import psnr as frame_psnr

    vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    vals = []
    for c in clips:
        x = c["video"]
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        vals.append(frame_psnr(rec, x))
    return float(torch.cat(vals).mean())


@torch.no_grad()
def sample_method(pipe, name: str, clips: list[dict], seed: int, steps: int | None) -> list[torch.Tensor]:
    """One video (f c h w in [-1, 1]) per clip: conditioned on its first frame (and, for Inbetweening,
    its last frame), with the clip's caption; seed ``seed + i`` for clip i."""
    out = []
    kw = {} if steps is None else {"num_inference_steps": int(steps)}
    for i, c in enumerate(clips):
        v = c["video"]
        extra = {"last_images": v[-1:]} if name == "inbetween" else {}
        video = pipe([c["caption"]], images=v[:1], num_frames=v.shape[0], seed=seed + i, **kw, **extra)
        out.append(video[0].float().cpu())
    return out


def method_numbers(name: str, clips: list[dict], videos: list[torch.Tensor]) -> dict:
    """The issue's numbers for one method: frame-0 PSNR, mean flow (and the real clips' mean flow),
    keyframe PSNR (first and last, Inbetweening), PSNR of the in-between frames against the real ones."""
    f0 = [psnr(v[0], c["video"][0]) for v, c in zip(videos, clips)]
    res = {
        "frame0_psnr": sum(f0) / len(f0),
        "flow": sum(mean_flow(v) for v in videos) / len(videos),
        "flow_real": sum(mean_flow(c["video"]) for c in clips) / len(clips),
        "per_video_frame0_psnr": f0,
    }
    if name == "inbetween":
        last = [psnr(v[-1], c["video"][-1]) for v, c in zip(videos, clips)]
        res["last_psnr"] = sum(last) / len(last)
        res["keyframe_psnr"] = min(res["frame0_psnr"], res["last_psnr"])
        res["middle_psnr"] = sum(psnr(v[1:-1], c["video"][1:-1]) for v, c in zip(videos, clips)) / len(clips)
    return res


def checks(numbers: dict) -> list[tuple[str, float, str, float, bool]]:
    """(what, value, relation, threshold, ok) for every number with a threshold."""
    rows = [("VAE reconstruction PSNR (dB)", numbers["vae_psnr"], ">=", THRESHOLDS["vae_psnr"])]
    for m in METHODS:
        n = numbers.get(m)
        if not n:
            continue
        if m == "inbetween":
            rows.append(
                (
                    f"{TITLES[m]}: first keyframe PSNR (dB)",
                    n["frame0_psnr"],
                    ">=",
                    THRESHOLDS["keyframe_psnr"],
                )
            )
            rows.append(
                (f"{TITLES[m]}: last keyframe PSNR (dB)", n["last_psnr"], ">=", THRESHOLDS["keyframe_psnr"])
            )
        else:
            rows.append(
                (f"{TITLES[m]}: frame-0 PSNR (dB)", n["frame0_psnr"], ">=", THRESHOLDS["frame0_psnr"])
            )
            rows.append((f"{TITLES[m]}: mean flow (px)", n["flow"], ">", THRESHOLDS["flow"]))
    return [(w, v, r, t, v >= t if r == ">=" else v > t) for w, v, r, t in rows]


# ----------------------------------------------------------------------------------------------
# the steps
# ----------------------------------------------------------------------------------------------
def run(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def wait_all(procs: dict[str, tuple[subprocess.Popen, Path, list[str]]]) -> None:
    failed = []
    for name, (p, log, cmd) in procs.items():
        if p.wait() != 0:
            failed.append(
                f"{name}: `{' '.join(cmd)}` failed; last lines of {log}:\n"
                + "\n".join(log.read_text().splitlines()[-15:])
            )
    if failed:
        raise SystemExit("\n\n".join(failed))


def train_commands(out: Path, steps: int, extra: list[str]) -> dict[str, list[str]]:
    py = sys.executable
    cmds = {}
    for m in METHODS:
        cmds[m] = [
            py,
            "train.py",
            f"experiment=demo_{m}",
            f"hydra.run.dir={out / m / 'train'}",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            f"callbacks.model_checkpoint.every_n_train_steps={steps}",
            "overwrite=true",
            *extra,
        ]
    return cmds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo", help="where everything goes")
    ap.add_argument("--data", default=str(ROOT / "data" / "toy"), help="toy shards (built if missing)")
    ap.add_argument("--steps", type=int, default=8, help="fine-tuning steps per method")
    ap.add_argument("--videos", type=int, default=4, help="toy validation clips to sample per method")
    ap.add_argument(
        "--sample-steps", type=int, default=None, help="sampling steps (default: each demo config's)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-eval", action="store_true", help="skip evaluate.py")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a number misses its threshold")
    ap.add_argument("--override", nargs="*", default=[], help="extra overrides for every train.py run")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data)
    timings: dict[str, float] = {}

    # 1. toy shards
    if not any((data / "train").glob("*.tar")) or not any((data / "val").glob("*.tar")):
        from i2vlab.data.toy import write_toy_shards

        write_toy_shards(data, progress=False)
    print(f"[demo] toy shards: {data}/{{train,val}}/*.tar", flush=True)

    # 3. fine-tunes, in the background while the VAE is measured
    t0 = time.perf_counter()
    overrides = [
        f"data.train_shards={(data / 'train').resolve()}",
        f"data.val_shards={(data / 'val').resolve()}",
    ]
    overrides += list(a.override)
    cmds = train_commands(out, a.steps, overrides)
    procs = {m: (run(c, out / m / "train.log"), out / m / "train.log", c) for m, c in cmds.items()}
    for m, c in cmds.items():
        print(f"[demo] fine-tuning {TITLES[m]}: {' '.join(c[1:])}", flush=True)

    # 2. VAE reconstruction on the toy validation videos (all frames)
    from i2vlab.models.text import byte_level_clip_tokenizer

    val_dir = data / "val"
    assets = _assets_dir(a.override)
    full = toy_clips(val_dir, num_frames=24, stride=1)
    numbers: dict = {"vae_psnr": vae_psnr(assets / "vae", full), "vae_videos": len(full)}
    tok = byte_level_clip_tokenizer(64)
    lengths = [len(tok(c["caption"]).input_ids) for c in full]
    numbers["caption_tokens_max"] = max(lengths)
    print(
        f"[demo] toy VAE ({assets / 'vae'}): {numbers['vae_psnr']:.2f} dB PSNR on {len(full)} toy val videos x 24 frames; "
        f"longest caption {max(lengths)} tokens of the tokenizer's 64",
        flush=True,
    )
    wait_all(procs)
    timings["fine-tune (3 runs in parallel)"] = time.perf_counter() - t0

    # 4. + 5. sampling and numbers
    from i2vlab.pipelines import load_pipeline
    from i2vlab.utils.contact_sheet import contact_sheet
    from i2vlab.utils.video_io import write_video

    clips = {
        "i2v_adapter": toy_clips(val_dir, 8, 1, a.videos),
        "dynamicrafter": toy_clips(val_dir, 8, 1, a.videos),
        "inbetween": toy_clips(val_dir, 8, 2, a.videos),  # keyframes 14 source frames apart
    }
    written: dict[str, list[str]] = {}
    for m in METHODS:
        t0 = time.perf_counter()
        pipe = load_pipeline(out / m / "train", device="cpu")
        videos = sample_method(pipe, m, clips[m], a.seed, a.sample_steps)
        del pipe
        timings[f"sample {TITLES[m]}"] = time.perf_counter() - t0
        numbers[m] = method_numbers(m, clips[m], videos)
        sdir = out / m / "samples"
        written[m] = []
        for i, (v, c) in enumerate(zip(videos, clips[m])):
            p = write_video(sdir / f"{m}_{i}.mp4", v, fps=8)
            p.with_suffix(".txt").write_text(c["caption"])
            sheet = contact_sheet(
                [c["video"], v],
                p.with_suffix(".png"),
                labels=[f"toy clip: {c['caption']}", f"{TITLES[m]} sample"],
            )
            written[m] += [str(p), str(sheet)]
        n = numbers[m]
        extra = (
            f", last keyframe {n['last_psnr']:.2f} dB, in-between frames {n['middle_psnr']:.2f} dB"
            if m == "inbetween"
            else ""
        )
        print(
            f"[demo] {TITLES[m]}: {len(videos)} videos in {sdir}; frame 0 {n['frame0_psnr']:.2f} dB{extra}; "
            f"mean flow {n['flow']:.2f} px (real clips {n['flow_real']:.2f} px)",
            flush=True,
        )

    # 6. the evaluator's smoke suite on each method's samples
    if not a.no_eval:
        t0 = time.perf_counter()
        evals = {}
        for m in METHODS:
            cmd = [
                sys.executable,
                "evaluate.py",
                "eval=smoke",
                f"eval.generated={out / m / 'samples'}",
                f"eval.real={val_dir.resolve()}",
                f"eval.output_dir={out / m / 'eval'}",
                f"hydra.run.dir={out / m / 'eval'}",
            ]
            evals[m] = (run(cmd, out / m / "eval.log"), out / m / "eval.log", cmd)
            print(f"[demo] evaluating {TITLES[m]}: {' '.join(cmd[1:])}", flush=True)
        wait_all(evals)
        timings["evaluate.py (3 in parallel)"] = time.perf_counter() - t0
        for m in METHODS:
            res = json.loads((out / m / "eval" / "results.json").read_text())
            numbers[m]["eval"] = {k: v.get("value") for k, v in res["metrics"].items()}

    # 7. summary
    timings["total"] = time.perf_counter() - t_start
    rows = checks(numbers)
    missed = [r[0] for r in rows if not r[-1]]
    ok = not missed
    lines = summary_lines(out, numbers, rows, timings, written, not a.no_eval)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(
        json.dumps({"numbers": numbers, "timings_s": timings, "ok": ok}, indent=1) + "\n"
    )
    print("\n" + "\n".join(lines), flush=True)
    if missed:
        print(
            f"\n[demo] {len(missed)} of {len(rows)} numbers miss their thresholds: {'; '.join(missed)}. "
            "The toy models are under-trained for these (docs/toy_world.md, 'Numbers').",
            flush=True,
        )
    return 1 if missed and a.strict else 0


def _assets_dir(overrides: list[str]) -> Path:
    for o in overrides:
        if o.startswith("backbone.assets="):
            return Path(o.split("=", 1)[1])
    return ROOT / "assets" / "toy"


def summary_lines(out: Path, numbers: dict, rows, timings: dict, written: dict, evaluated: bool) -> list[str]:
    lines = ["# Toy-world demo", "", "| number | value | threshold | |", "|---|---|---|---|"]
    for what, value, rel, thr, good in rows:
        lines.append(f"| {what} | {value:.2f} | {rel} {thr:g} | {'ok' if good else 'MISSED'} |")
    for m in METHODS:
        n = numbers.get(m)
        if n and m != "inbetween":
            lines.append(f"| {TITLES[m]}: real clips' mean flow (px, reference) | {n['flow_real']:.2f} | | |")
        if n and m == "inbetween":
            lines.append(
                f"| {TITLES[m]}: in-between frames PSNR (dB, reference) | {n['middle_psnr']:.2f} | | |"
            )
            lines.append(
                f"| {TITLES[m]}: mean flow (px; real clips {n['flow_real']:.2f}) | {n['flow']:.2f} | | |"
            )
    lines += ["", "Where everything went:", ""]
    for m in METHODS:
        lines.append(
            f"- {TITLES[m]}: fine-tuning run {out / m / 'train'} (checkpoints/, export/, samples/, csv/), "
            f"log {out / m / 'train.log'}"
        )
        lines.append(
            f"  - samples + contact sheets: {out / m / 'samples'} ({len(written.get(m, [])) // 2} mp4 + png)"
        )
        if evaluated:
            lines.append(
                f"  - evaluation (smoke suite, not comparable): {out / m / 'eval'} (results.json, results.md)"
            )
    lines += [
        f"- summary: {out / 'summary.md'}, {out / 'summary.json'}",
        "",
        "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
