#!/usr/bin/env python
"""Training throughput and peak memory: i2vlab's method step against a hand-written reference loop.

    python scripts/bench/bench_training.py                                   # tiny AnimateDiff, CPU
    python scripts/bench/bench_training.py --experiment toy_i2v_adapter
    python scripts/bench/bench_training.py --overrides backbone=sd15_animatediff backbone.pretrained=null \
        backbone.unet.pretrained=null --batch 1 --frames 16 --res 256 --device cuda --bf16   # full size, random init

ours:      the method's ``compute_loss`` (its conditioning, masking, per-step seeds) + backward + AdamW
reference: the diffusers-example loop on the same networks: VAE encode, add_noise, UNet, MSE, AdamW

Both run the same networks and trainable set in one process; the table prints samples/s, peak
memory and the ratios ours / reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import device_name, print_table  # noqa: E402
from param_report import compose_train_config  # noqa: E402

from i2vlab.training import instantiate_model  # noqa: E402
from i2vlab.training.callbacks import peak_memory_gb  # noqa: E402


def make_batch(b: int, f: int, res: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "video": (torch.rand(b, f, 3, res, res, generator=g) * 2 - 1).to(device),
        "caption": ["a red circle moving left over a striped background"] * b,
        "fps": torch.full((b,), 8.0),
        "frame_stride": torch.full((b,), 2),
    }


def ours_step(model, opt, batch, step: int) -> None:
    loss, _ = model.compute_loss(batch, model.step_generator(salt=step))
    loss.mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def reference_step(model, opt, batch, step: int) -> None:
    """The plain diffusers training-example loop (text-to-video, no method specifics)."""
    with torch.no_grad():
        b, f = batch["video"].shape[:2]
        x = batch["video"].flatten(0, 1).to(model.vae.dtype)
        lat = model.vae.encode(x).latent_dist.sample() * model.latent_scale
        lat = lat.unflatten(0, (b, f)).transpose(1, 2).float()
        ids = model.tokenizer(
            batch["caption"],
            padding="max_length",
            max_length=model.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(lat.device)
        ehs = model.text_encoder(ids)[0]
    noise = torch.randn_like(lat)
    t = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (b,), device=lat.device)
    noisy = model.noise_scheduler.add_noise(lat, noise, t)
    pred = model.unet(noisy, t, encoder_hidden_states=ehs.repeat_interleave(f, 0)).sample
    F.mse_loss(pred.float(), noise).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run(fn, model, batch, steps: int, warmup: int, device, amp: bool) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5, fused=device.type == "cuda")
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if amp
        else torch.autocast(device.type, enabled=False)
    )
    for i in range(warmup):
        with ctx:
            fn(model, opt, batch, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        with ctx:
            fn(model, opt, batch, warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return steps * batch["video"].shape[0] / dt, peak_memory_gb(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="smoke")
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--res", type=int, default=None, help="default: the backbone's resolution")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    a = ap.parse_args()
    device = torch.device(a.device)
    cfg = compose_train_config([f"experiment={a.experiment}", *a.overrides])
    torch.manual_seed(0)
    model = instantiate_model(cfg)
    model.gradient_checkpointing = a.gradient_checkpointing
    model.configure_trainable()
    model.to(device).train()
    res = a.res or int(cfg.backbone.resolution[0])
    batch = make_batch(a.batch, a.frames, res, device)
    rows = []
    ref = None
    if type(model).__name__ == "AnimateDiffT2V":  # the reference loop is the plain text-to-video objective
        ref = run(reference_step, model, batch, a.steps, a.warmup, device, a.bf16)
        rows.append(["reference (diffusers example loop)", ref[0], ref[1], 1.0, 1.0])
    got = run(ours_step, model, batch, a.steps, a.warmup, device, a.bf16)
    rows.append(
        [
            f"i2vlab {type(model).__name__}",
            got[0],
            got[1],
            got[0] / ref[0] if ref else "n/a",
            # on CPU the peak is the process's peak RSS, which only grows: no per-loop ratio there
            got[1] / ref[1] if ref and device.type == "cuda" else "n/a",
        ]
    )
    print_table(
        f"training step: {a.experiment} {' '.join(a.overrides)} | batch {a.batch} x {a.frames} frames @ {res}px"
        f"{' bf16' if a.bf16 else ''}{' grad-ckpt' if a.gradient_checkpointing else ''}",
        device_name(device),
        ["loop", "samples/s", "peak mem GB", "speed ratio", "mem ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
