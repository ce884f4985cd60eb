#!/usr/bin/env python
"""Evaluator throughput against the work it cannot avoid, per metric, cold and warm feature cache.

    python scripts/bench/bench_evaluator.py                           # tiny networks, CPU friendly
    python scripts/bench/bench_evaluator.py --full --videos 32        # published architectures (use a GPU)
    python scripts/bench/bench_evaluator.py --media /data/clips       # your own videos (mp4 folder)

Media: realistic H.264 clips (854x480, 25 fps, one keyframe per 250 frames) made by
``scripts/bench/make_media.py`` into a temporary folder, half as the generated set, half as the real set.
For each metric group the same extractor objects (random-init weights: throughput does not depend on
them) are timed three ways, interleaved and repeated (``--repeat``), medians reported:

- ``decode+net``: the reference, the work any evaluator must do: decode every clip (the evaluator's own
  ``load_clip``: decord, only the needed frames, resize + crop), stack them in batches of ``--batch``
  videos, one extractor call per batch, then the metric from the features;
- ``cold``: ``Evaluator.run()`` with an empty feature cache (decode, fixed-size batched calls, cache
  writes with checksums, ordered metric updates, result files);
- ``warm``: ``Evaluator.run()`` again on the filled cache (nothing is decoded).

Ratios in the same run: ``cold eff.`` = decode+net / cold (1.0 = no overhead), ``warm x`` = cold / warm.
A last row times the Fréchet trace of FID over 64 videos x 16 frames (N = 1024 < d = 2048): sample space
(one N x N SVD) against the d x d eigendecompositions. No assertion is made on the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, print_table  # noqa: E402
from make_media import make_media  # noqa: E402

from i2vlab.evaluation import Evaluator, load_clip  # noqa: E402
from i2vlab.evaluation.cache import FeatureCache  # noqa: E402
from i2vlab.evaluation.inputs import collect_videos  # noqa: E402
from i2vlab.metrics import frechet_distance, frechet_distance_from_features, polynomial_mmd  # noqa: E402
from i2vlab.metrics import functional as Fm  # noqa: E402
from i2vlab.metrics.distances import stats_from_sums  # noqa: E402

TINY_VIT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
            "image_size": 64, "patch_size": 16}  # fmt: skip
TINY = {
    "i3d": {"input_size": 112, "width": 0.25},
    "inception": {"input_size": 139},
    "clip": {
        "tiny": {
            "vision": TINY_VIT,
            "projection_dim": 32,
            "text": {
                **{k: v for k, v in TINY_VIT.items() if k not in ("image_size", "patch_size")},
                "vocab_size": 1000,
            },
        }
    },  # fmt: skip
}
# group -> (metrics, extractor name in Evaluator.extractors)
GROUPS = {"FVD+KVD": (["fvd", "kvd"], "i3d"), "FID": (["fid"], "inception"), "CLIPTemp": (["clip_temp"], "clip"),
          "FlowScore": (["flow_score"], "flow")}  # fmt: skip


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def reference(ev: Evaluator, metrics: list[str], gen: list, real: list, batch: int) -> float:
    """Decode + batched network + metric, the straightforward way. Returns the metric's value."""
    c, ex = ev.cfg, ev.extractors
    clips = [load_clip(r, c["num_frames"], 1, 0, c["resolution"]) for r in gen]
    rclips = (
        [load_clip(r, c["num_frames"], 1, 0, c["resolution"]) for r in real]
        if metrics[0] in ("fvd", "fid")
        else []
    )
    dev = ev.device

    def batched(fn, vids, flat):
        out = []
        with torch.inference_mode():
            for i in range(0, len(vids), batch):
                x = torch.stack(vids[i : i + batch]).to(dev)
                out.append(fn(x.flatten(0, 1) if flat else x).cpu())
        return torch.cat(out)

    if metrics[0] == "fvd":
        f, r = batched(ex["i3d"], clips, False).double(), batched(ex["i3d"], rclips, False).double()
        polynomial_mmd(r, f)
        return frechet_distance_from_features(r, f, ddof=0)
    if metrics[0] == "fid":
        f, r = batched(ex["inception"], clips, True).double(), batched(ex["inception"], rclips, True).double()
        return frechet_distance_from_features(r, f, ddof=1)
    if metrics[0] == "clip_temp":
        e = batched(ex["clip"].embed_images, clips, True).view(len(clips), c["num_frames"], -1)
        return float(torch.stack([Fm.clip_adjacent(v).mean() for v in e]).mean())
    a = torch.cat([v[:-1] for v in clips])
    b = torch.cat([v[1:] for v in clips])
    mags = torch.cat(
        [Fm.mean_flow_magnitude(ex["flow"](a[i : i + 64], b[i : i + 64])) for i in range(0, len(a), 64)]
    )
    return float(mags.view(len(clips), -1).mean(1).mean())


def timed(fn, dev, *args) -> tuple[float, object]:
    _sync(dev)
    t = time.perf_counter()
    out = fn(*args)
    _sync(dev)
    return time.perf_counter() - t, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="published-size networks")
    ap.add_argument("--media", default=None, help="a folder of videos (split in two: generated / real)")
    ap.add_argument("--videos", type=int, default=8, help="generated videos (as many real)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=256, help="clip resolution (square)")
    ap.add_argument("--batch", type=int, default=8, help="videos per decoding batch / reference network call")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--groups", nargs="*", default=list(GROUPS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    if a.media:
        refs, _ = collect_videos(a.media)
        gen_refs, real_refs = refs[: len(refs) // 2], refs[len(refs) // 2 :]
        gen_spec, real_spec = [r.path for r in gen_refs], [r.path for r in real_refs]
    else:
        gen_spec = str(make_media(tmp / "gen", a.videos, max(a.frames, 24), seed=0))
        real_spec = str(make_media(tmp / "real", a.videos, max(a.frames, 24), seed=1))
        gen_refs, real_refs = collect_videos(gen_spec)[0], collect_videos(real_spec)[0]
    rows = []
    for name in a.groups:
        metrics, exname = GROUPS[name]
        fb = a.batch * (a.frames if exname in ("inception", "clip") else 1)
        ext = {k: {**(v if not a.full else {}), "forward_batch": fb} for k, v in TINY.items()}
        ext["flow"] = {"forward_batch": a.batch * (a.frames - 1)}
        cfg = {"metrics": metrics, "generated": gen_spec, "real": real_spec, "num_frames": a.frames,
               "resolution": [a.size, a.size], "batch_size": a.batch, "allow_random_weights": True, "plots": False,
               "device": a.device, "output_dir": str(tmp / "out" / name), "cache_dir": None, "extractors": ext,
               "kvd": {"num_subsets": 10}}  # fmt: skip
        ev = Evaluator(cfg)
        times = {"ref": [], "cold": [], "warm": []}
        reference(ev, metrics, gen_refs[:2], real_refs[:2], a.batch)  # warm-up (lazy inits, allocator)
        for r in range(a.repeat):
            times["ref"].append(timed(reference, dev, ev, metrics, gen_refs, real_refs, a.batch)[0])
            ev.cache = FeatureCache(tmp / "cache" / f"{name}-{r}")
            times["cold"].append(timed(ev.run, dev)[0])
            times["warm"].append(timed(ev.run, dev)[0])
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append([name, len(gen_refs), med["ref"], med["cold"], med["warm"], med["ref"] / med["cold"],
                     med["cold"] / med["warm"]])  # fmt: skip
    print_table(
        f"evaluator vs decode + network ({'full' if a.full else 'tiny'} networks, {a.frames} frames at "
        f"{a.size}^2, batch {a.batch}, median of {a.repeat} interleaved runs)",
        device_name(dev),
        ["metric", "videos", "decode+net s", "cold s", "warm s", "cold eff.", "warm x"],
        rows,
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 2048, generator=g, dtype=torch.float64)
    y = torch.randn(1024, 2048, generator=g, dtype=torch.float64) * 1.1 + 0.1
    sums = [(len(z), z.sum(0), z.T @ z) for z in (x, y)]
    t_s = statistics.median(
        timed(lambda: frechet_distance_from_features(x, y, 1), dev)[0] for _ in range(a.repeat)
    )
    t_e = statistics.median(
        timed(lambda: frechet_distance(*stats_from_sums(*sums[0], 1), *stats_from_sums(*sums[1], 1)), dev)[0]
        for _ in range(a.repeat)
    )
    print_table("Fréchet trace, FID of 64 videos x 16 frames (N=1024, d=2048)", "CPU (numpy float64)",
                ["method", "s", "speed-up"], [["d x d eigh (sums)", t_e, 1.0], ["sample space (SVD)", t_s, t_e / t_s]])  # fmt: skip


if __name__ == "__main__":
    main()
