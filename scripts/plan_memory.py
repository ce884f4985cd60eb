#!/usr/bin/env python
"""Will it fit? Peak GPU memory of one full-size training step, estimated without a GPU.

    python scripts/plan_memory.py experiment=i2v_adapter_webvid256
    python scripts/plan_memory.py experiment=dynamicrafter_stage3 backbone=dynamicrafter_1024 \
        data.batch_size=1 --gpu-gb 24,32,40,80
    python scripts/plan_memory.py experiment=inbetween_paper trainer.precision=bf16-mixed \
        method.gradient_checkpointing=true --strategy zero2 --world 8

Takes the same overrides as ``train.py`` (precision ``trainer.precision``, batch ``data.batch_size``,
frames ``data.num_frames``, resolution ``backbone.resolution``, ``method.gradient_checkpointing``,
``method.frozen_dtype``) and builds the model on the meta device: no weights are read, no memory is
used. The step (the method's loss, backward, clipping, AdamW) runs on fake tensors with every
allocation tracked (:mod:`i2vlab.training.memory`: CUDA's autocast policy and 512-byte blocks), and the
largest batch that fits each ``--gpu-gb`` size (after ``--reserve-gb`` for the CUDA context,
workspaces and fragmentation) is found by measuring candidate batches. ``--strategy`` / ``--world``:
per-GPU memory under DDP, FSDP or DeepSpeed ZeRO with that many ranks. Prints the breakdown at
``data.batch_size`` and one row per GPU size. ``--validate-cuda`` (needs a GPU) also runs the real
step on CUDA (random weights) and prints the measured peak beside the estimate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GB = 2**30


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="train.py overrides (experiment=..., data.batch_size=...)")
    ap.add_argument("--gpu-gb", default="24,40,80", help="GPU sizes in GiB, comma-separated")
    ap.add_argument("--reserve-gb", type=float, default=1.0, help="kept free per GPU (context, workspaces)")
    ap.add_argument("--strategy", default="single", help="single, ddp, fsdp_grad_op, fsdp_full, zero2, zero3")
    ap.add_argument("--world", type=int, default=1, help="ranks the strategy shards over")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--no-search", action="store_true", help="only the breakdown at data.batch_size")
    ap.add_argument("--validate-cuda", action="store_true", help="also measure the real step on a GPU")
    a = ap.parse_args(argv)

    from i2vlab.utils.runtime import configure_threads

    configure_threads()
    from param_report import compose_train_config

    from i2vlab.training import memory

    cfg = compose_train_config(a.overrides)
    s = memory.setting_of(cfg)
    t0 = time.perf_counter()
    built = memory.fake_model(cfg, s.precision)
    est = memory.estimate(cfg, built=built)
    per_gpu = memory.shard(est, a.strategy, a.world)
    name = f"{type(built[0]).__name__} [{cfg.backbone.name}]"
    print(f"{name}: {s.describe()}; strategy {a.strategy} x{a.world}")
    print(f"  peak of one training step: {per_gpu / GB:.2f} GiB per GPU (allocated; + CUDA context etc.)")
    ap_ = est.at_peak
    print(
        "  at the peak: "
        + ", ".join(
            f"{k} {ap_[k] / GB:.2f}"
            for k in ("param", "buffer", "grad", "opt", "act", "temp", "other")
            if ap_.get(k)
        )
        + " GiB"
    )
    print(f"  weights {est.weights / GB:.2f} GiB (trainable {est.trainable_weights / GB:.3f}), "
          f"optimizer state {est.optimizer / GB:.3f} GiB")  # fmt: skip
    out = {"setting": est.setting, "peak_gb": per_gpu / GB, "at_peak": est.at_peak, "fits": {}}
    if not a.no_search:
        sizes = [float(x) for x in a.gpu_gb.split(",") if x.strip()]
        fits, runs = memory.largest_batch(
            cfg, sizes, a.reserve_gb, a.strategy, a.world, a.max_batch, built=built
        )
        print(f"  largest batch per GPU ({s.num_frames} frames @ {s.resolution[0]}x{s.resolution[1]}, "
              f"{a.reserve_gb:g} GiB reserved):")  # fmt: skip
        for gb in sizes:
            b = fits[gb]
            print(f"    {gb:>6g} GiB: {'does not fit at batch 1' if b == 0 else f'batch {b}'}")
        measured = ", ".join(f"b{r.batch_size}={memory.shard(r, a.strategy, a.world) / GB:.2f}" for r in runs)
        print(f"  measured peaks (GiB): {measured}")
        out["fits"] = fits
    print(f"  ({time.perf_counter() - t0:.0f} s on the CPU)")
    if a.validate_cuda:
        real = memory.cuda_peak(cfg)
        print(f"  CUDA: measured peak {real / GB:.2f} GiB allocated; estimate {est.peak / GB:.2f} GiB "
              f"({est.peak / real - 1:+.1%})")  # fmt: skip
        out["cuda_peak_gb"] = real / GB
    return out


if __name__ == "__main__":
    main()
