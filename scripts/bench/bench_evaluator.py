"""Evaluator throughput: batched feature extraction vs a straightforward per-video loop.

    python scripts/bench/bench_evaluator.py                    # tiny extractors (CPU friendly)
    python scripts/bench/bench_evaluator.py --full --videos 32 # published architectures (GPU)

Random-init weights (throughput does not depend on the weights). Prints a table with the device
name; ratios compare the two paths measured in this same run.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from i2vlab.metrics import build_extractor
from i2vlab.metrics import functional as Fm


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, dev, repeat: int) -> float:
    fn()  # warm-up
    _sync(dev)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(dev)
    return (time.perf_counter() - t) / repeat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="published-size networks and input sizes")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=None, help="frame size (default 64 tiny / 256 full)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    size = a.size or (256 if a.full else 64)
    tiny_vit = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "image_size": 64,
        "patch_size": 16,
    }
    kw = (
        {}
        if a.full
        else {
            "i3d": {"input_size": 112, "width": 0.25},
            "inception": {"input_size": 139},
            "clip": {
                "tiny": {
                    "vision": tiny_vit,
                    "text": {
                        "vocab_size": 1000,
                        "hidden_size": 64,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 2,
                        "intermediate_size": 128,
                    },
                    "projection_dim": 32,
                }
            },
        }
    )
    ex = {
        n: build_extractor(n, allow_random_weights=True, **kw.get(n, {})).to(dev).eval()
        for n in ("i3d", "inception", "clip")
    }
    flow = build_extractor("opencv_flow")
    g = torch.Generator().manual_seed(0)
    videos = (torch.rand(a.videos, a.frames, 3, size, size, generator=g) * 2 - 1).to(dev)

    def batched(fn, flat=False):
        def run():
            with torch.no_grad():
                for s in range(0, a.videos, a.batch):
                    x = videos[s : s + a.batch]
                    fn(x.flatten(0, 1) if flat else x)

        return run

    def loop(fn, flat=False):
        def run():
            with torch.no_grad():
                for v in videos:
                    fn(v if flat else v[None])

        return run

    cases = [
        ("I3D logits (FVD/KVD)", batched(ex["i3d"]), loop(ex["i3d"])),
        ("Inception pool3 (FID)", batched(ex["inception"], True), loop(ex["inception"], True)),
        (
            "CLIP image (CLIPTemp)",
            batched(ex["clip"].embed_images, True),
            loop(ex["clip"].embed_images, True),
        ),
        (
            "OpenCV DIS FlowScore",
            lambda: [Fm.flow_magnitudes(v.cpu(), flow, batch_pairs=64) for v in videos],
            lambda: [Fm.flow_magnitudes(v.cpu(), flow, batch_pairs=1) for v in videos],
        ),
    ]
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"device: {name} | torch {torch.__version__} | {'full' if a.full else 'tiny'} networks | "
        f"{a.videos} videos x {a.frames} frames x {size}^2 | batch {a.batch}"
    )
    print(
        f"{'extractor':<26}{'per-video loop s':>18}{'batched s':>12}{'videos/s batched':>18}{'speed-up':>10}"
    )
    for label, fast, ref in cases:
        t_fast, t_ref = _time(fast, dev, a.repeat), _time(ref, dev, a.repeat)
        print(f"{label:<26}{t_ref:>18.3f}{t_fast:>12.3f}{a.videos / t_fast:>18.1f}{t_ref / t_fast:>9.2f}x")


if __name__ == "__main__":
    main()
