#!/usr/bin/env python
"""Sampling latency of each method's ``sample()`` against stock diffusers AnimateDiff on the same networks.

    python scripts/bench/bench_sampling.py                                  # tiny configs, CPU
    python scripts/bench/bench_sampling.py --experiments toy_i2v_adapter --steps 25 --frames 16 \
        --overrides backbone=sd15_animatediff_ipplus ...                    # full size, GPU

reference: ``diffusers.AnimateDiffPipeline`` (text-to-video, CFG) on the experiment's own UNet, VAE and
text encoder, same steps, frames and resolution. The ratio is the method's latency over it: the cost
of the method's own sampling loop. UNets the stock pipeline cannot drive (IP-Adapter image
projection, SVD, VideoCrafter) are timed without a ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import device_name, print_table  # noqa: E402
from param_report import compose_train_config  # noqa: E402

from i2vlab.pipelines.animatediff import sample_t2v  # noqa: E402
from i2vlab.training import instantiate_model  # noqa: E402


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--experiments",
        nargs="+",
        default=["smoke", "toy_i2v_adapter", "toy_dynamicrafter_stage3", "toy_inbetween"],
    )
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    rows = []
    for exp in a.experiments:
        cfg = compose_train_config([f"experiment={exp}", *a.overrides])
        torch.manual_seed(0)
        m = instantiate_model(cfg)
        m.configure_trainable()
        m.to(device).eval()
        h, w = (int(x) for x in cfg.backbone.resolution)
        image = torch.rand(1, 3, h, w, device=device) * 2 - 1
        kw = {"num_inference_steps": a.steps}
        if type(m).__name__ == "GenerativeInbetweening":
            kw["last_images"] = image.flip(-1)
        prompt = ["a red circle moving left"]
        ours = timed(
            partial(m.sample, prompt, images=image, num_frames=a.frames, seed=0, **kw), a.repeats, device
        )
        ref = None
        # the stock pipeline cannot feed IP-Adapter UNets (image projection)
        plain_t2v = getattr(m.unet, "encoder_hid_proj", None) is None
        if type(m.unet).__name__ == "UNetMotionModel" and m.text_encoder is not None and plain_t2v:
            ref = timed(
                partial(
                    sample_t2v,
                    m,
                    prompt,
                    num_frames=a.frames,
                    height=h,
                    width=w,
                    num_inference_steps=a.steps,
                    seed=0,
                ),
                a.repeats,
                device,
            )
        rows.append([exp, type(m).__name__, ours, ref if ref else "n/a", ours / ref if ref else "n/a"])
    print_table(
        f"sampling latency: {a.steps} steps, {a.frames} frames, batch 1 {' '.join(a.overrides)}",
        device_name(device),
        ["experiment", "method", "ours s", "AnimateDiffPipeline s", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
