"""Shared pieces of the SVD keyframe samplers (:mod:`i2vlab.pipelines.inbetween` and its
baselines, :mod:`i2vlab.pipelines.inbetween_baselines`): keyframe conditioning, guided UNet calls,
per-frame ramps, initial latents.

Tensors: keyframes (b c h w) in [-1, 1]; latents (b f c h w) as the SVD UNet takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from i2vlab.diffusion.edm import (
    init_noise_sigma,
)
from i2vlab.models.svd import added_time_ids, svd_unet_forward


@dataclass
class KeyframeCond:
    """Conditioning of one path: CLIP embeds (n, 1, d), image latents (n, c, h, w), time ids (n, 3);
    with CFG, n = 2b with the unconditional half (zeros) first."""

    embeds: torch.Tensor
    latents: torch.Tensor
    time_ids: torch.Tensor


def encode_keyframes(
    module,
    first: torch.Tensor,
    last: torch.Tensor,
    generator: torch.Generator,
    cfg: bool,
    fps: float = 7,
    motion_bucket_id: float = 127,
    noise_aug_strength: float = 0.02,
    cond_noise: torch.Tensor | None = None,
) -> tuple[KeyframeCond, KeyframeCond]:
    """Both keyframes' conditioning with the same noise-augmentation sample (as the official code):
    ``cond_noise`` (b c h w) or drawn from ``generator``. A float16 VAE whose config asks for
    ``force_upcast`` encodes in float32, as the official (and diffusers') SVD pipeline does."""
    if cond_noise is None:
        cond_noise = torch.randn(first.shape, generator=generator, device=first.device, dtype=torch.float32)
    elif cond_noise.shape != first.shape:
        raise ValueError(
            f"cond_noise must have the keyframes' shape {tuple(first.shape)}, got {tuple(cond_noise.shape)}"
        )
    vae = module.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        encoded = [module.encode_condition(img, cond_noise, noise_aug_strength) for img in (first, last)]
    finally:
        if upcast:
            vae.to(torch.float16)
    out = []
    for img, (emb, lat) in zip((first, last), encoded):
        ids = added_time_ids(
            fps - 1,
            motion_bucket_id,
            noise_aug_strength,
            img.shape[0],
            img.device,
            dtype=emb.dtype,
            unet=module.unet,
        )
        if cfg:
            emb, lat, ids = (
                torch.cat([torch.zeros_like(emb), emb]),
                torch.cat([torch.zeros_like(lat), lat]),
                ids.repeat(2, 1),
            )
        out.append(KeyframeCond(emb, lat, ids))
    return out[0], out[1]


def guided_prediction(
    unet, z: torch.Tensor, sigma: float, cond: KeyframeCond, guidance: torch.Tensor | None
) -> torch.Tensor:
    """UNet v-prediction on (b f c h w) latents with classifier-free guidance ``guidance`` (b, f, 1, 1, 1)
    (``None``: no CFG)."""
    x = torch.cat([z, z]) if guidance is not None else z
    out = svd_unet_forward(unet, x, torch.tensor(sigma), cond.embeds, cond.latents, cond.time_ids).to(z.dtype)
    if guidance is None:
        return out
    uncond, c = out.chunk(2)
    return uncond + guidance * (c - uncond)


def frame_ramp(
    num_frames: int, start: float, end: float, batch: int, device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``linspace(start, end, F)`` (made in float32, as the official pipeline) shaped (b, f, 1, 1, 1)
    in ``dtype``."""
    return (
        torch.linspace(start, end, num_frames, device=device)
        .to(dtype)
        .view(1, -1, 1, 1, 1)
        .expand(batch, -1, -1, -1, -1)
    )


def _initial_latents(
    module,
    batch: int,
    num_frames: int,
    height: int,
    width: int,
    sigmas: torch.Tensor,
    generator: torch.Generator,
    device,
    latents: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Initial x: unit Gaussian noise (b f c h w; ``latents`` if given, as in diffusers pipelines)
    times ``init_noise_sigma``, in ``dtype``."""
    c = module.unet.config.out_channels
    f = 2 ** (len(module.vae.config.block_out_channels) - 1)
    shape = (batch, num_frames, c, height // f, width // f)
    if latents is None:
        latents = torch.randn(shape, generator=generator, device=device)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} (b f c h w), got {tuple(latents.shape)}")
    return latents.to(device, dtype) * init_noise_sigma(sigmas)


def _check_keyframes(first: torch.Tensor, last: torch.Tensor, module) -> None:
    if first.shape != last.shape or first.ndim != 4:
        raise ValueError(
            f"keyframes must both be (b c h w), got {tuple(first.shape)} and {tuple(last.shape)}"
        )
    f = 2 ** (len(module.vae.config.block_out_channels) - 1)
    if first.shape[-1] % f or first.shape[-2] % f:
        raise ValueError(f"keyframe height/width must be multiples of {f}, got {tuple(first.shape[-2:])}")
