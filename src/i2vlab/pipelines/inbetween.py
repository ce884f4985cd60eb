"""Keyframe interpolation with Stable Video Diffusion: Generative Inbetweening, TRF, optical flow.

- :func:`sample_inbetween` (Generative Inbetweening §3.3, ``method=ours``): at every Euler step,
  the frozen forward UNet predicts from frame 0 on ``z`` (recording its temporal attention maps),
  the fine-tuned backward UNet predicts from the last frame on ``flip_T(z)`` with the rotated maps;
  the predictions are fused ``0.5·v0 + 0.5·flip_T(v1)`` (optionally per-frame weights
  ``linspace(1, 0)``), each path with its own CFG (uncond = zero CLIP embedding + zero image
  latent; scale ``(linspace(1, 3, F) + reversed) / 2``). Noise re-injection: after each of the
  first ``noise_injection_ratio`` of the steps, ``noise_injection_steps`` times re-noise back to σ_i
  and redo the step (:func:`i2vlab.diffusion.edm.euler_with_reinjection`).
- :func:`sample_trf` (Time Reversal Fusion, Feng et al. 2024, ``method=trf``): the unmodified SVD in
  both directions; the two Euler-stepped latents are blended after each step with per-frame linear
  weights (forward 1 -> 0, backward 0 -> 1); per-frame CFG 1 -> 3 per path; RePaint-style jumps back
  (``jump_length``, ``jump_n_sample``, ``repeat_step_ratio``, ``noise_scale_ratio``).
- :func:`flow_interpolate` (``method=flow``): classical bidirectional optical-flow interpolation
  (OpenCV DIS or Farneback flow, backward warping with the linear-motion flow approximation of
  Super SloMo, occlusion-agnostic blending). Needs no weights; a stand-in for FILM in the paper's table.

Tensors: keyframes (b c h w) in [-1, 1]; latents (b f c h w) as the SVD UNet takes them; videos
(b f c h w) in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from i2vlab.diffusion.edm import (
    denoised,
    euler_step,
    euler_with_reinjection,
    init_noise_sigma,
    sampling_sigmas,
    work_dtype,
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


@torch.no_grad()
def sample_inbetween(
    module,
    first: torch.Tensor,
    last: torch.Tensor,
    num_frames: int,
    num_inference_steps: int = 50,
    fps: float = 7,
    motion_bucket_id: float = 127,
    noise_aug_strength: float = 0.02,
    min_guidance_scale: float = 1.0,
    max_guidance_scale: float = 3.0,
    weighted_average: bool = False,
    noise_injection_steps: int = 5,
    noise_injection_ratio: float = 0.5,
    seed: int = 0,
    latents: torch.Tensor | None = None,
    forward_unet=None,
    backward_unet=None,
    noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cond_noise: torch.Tensor | None = None,
    step_callback: Callable[[int, torch.Tensor], None] | None = None,
    return_latents: bool = False,
) -> torch.Tensor:
    """Bidirectional fused sampling. ``forward_unet`` defaults to ``module.ref_unet`` (frozen SVD,
    records maps), ``backward_unet`` to ``module.unet`` (fine-tuned, rotated maps); ``latents``:
    initial unit noise (b f c h w); ``noise_sampler``: re-injection noise (default: seeded Gaussian);
    ``cond_noise``: the keyframes' augmentation noise (b c h w; default: seeded Gaussian);
    ``step_callback(i, z)``: sees the latents after each step. Computed in float32 (float64 for
    float64 keyframes). Returns the video (b f c h w) in [-1, 1], or the final latents with
    ``return_latents``."""
    _check_keyframes(first, last, module)
    fwd = forward_unet if forward_unet is not None else module.ref_unet
    bwd = backward_unet if backward_unet is not None else module.unet
    device, b, dt = first.device, first.shape[0], work_dtype(first.dtype)
    g = torch.Generator(device=device).manual_seed(int(seed))
    cfg = max_guidance_scale > 1.0
    c0, c1 = encode_keyframes(
        module, first.to(dt), last.to(dt), g, cfg, fps, motion_bucket_id, noise_aug_strength, cond_noise
    )
    sigmas = sampling_sigmas(module.noise_scheduler, num_inference_steps)
    z = _initial_latents(
        module, b, num_frames, first.shape[-2], first.shape[-1], sigmas, g, device, latents, dt
    )

    ramp = frame_ramp(num_frames, min_guidance_scale, max_guidance_scale, b, device, dt)
    if weighted_average:  # per-frame fusion weights, unsymmetrised CFG ramp
        guidance, w = ramp, frame_ramp(num_frames, 1.0, 0.0, b, device, dt)
    else:  # symmetrised ramp (constant (min + max) / 2), equal weights
        guidance, w = (ramp + ramp.flip(1)) / 2, 0.5
    guidance = guidance if cfg else None

    def fused_denoised(x: torch.Tensor, i: int) -> torch.Tensor:
        s = float(sigmas[i])
        v0 = guided_prediction(fwd, x, s, c0, guidance)  # forward pass first: fills the attention store
        v1 = guided_prediction(bwd, x.flip(1), s, c1, guidance)
        return denoised(w * v0 + (1 - w) * v1.flip(1), x, s)

    z = euler_with_reinjection(
        fused_denoised,
        z,
        sigmas,
        noise_injection_steps,
        noise_injection_ratio,
        noise_sampler=noise_sampler,
        generator=g,
        callback=step_callback,
    )
    if return_latents:
        return z
    return module.decode_latents(z.transpose(1, 2))


def trf_step_schedule(
    num_steps: int, jump_length: int = 5, jump_n_sample: int = 2, repeat_step_ratio: float = 0.8
) -> list[int]:
    """TRF's step-index order with RePaint jumps: ascending indices 0..N-1 where, from
    ``repeat_step_ratio·N`` on, every ``jump_length`` steps the index goes back ``jump_length`` steps
    (``jump_n_sample - 1`` times). A non-increasing index means "re-noise one level"."""
    jumps = {
        j: jump_n_sample - 1
        for j in range(int(num_steps * repeat_step_ratio), num_steps - jump_length, jump_length)
    }
    order, t = [], num_steps
    while t >= 1:
        t -= 1
        order.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                order.append(t)
    return [num_steps - 1 - t for t in order]


@torch.no_grad()
def sample_trf(
    module,
    first: torch.Tensor,
    last: torch.Tensor,
    num_frames: int,
    num_inference_steps: int = 50,
    fps: float = 7,
    motion_bucket_id: float = 127,
    noise_aug_strength: float = 0.02,
    min_guidance_scale: float = 1.0,
    max_guidance_scale: float = 3.0,
    jump_length: int = 5,
    jump_n_sample: int = 2,
    repeat_step_ratio: float = 0.8,
    noise_scale_ratio: float = 1.0,
    seed: int = 0,
    latents: torch.Tensor | None = None,
    unet=None,
    return_latents: bool = False,
) -> torch.Tensor:
    """Time Reversal Fusion with the unmodified SVD (``unet`` defaults to ``module.ref_unet``)."""
    _check_keyframes(first, last, module)
    net = unet if unet is not None else module.ref_unet
    device, b, dt = first.device, first.shape[0], work_dtype(first.dtype)
    g = torch.Generator(device=device).manual_seed(int(seed))
    cfg = max_guidance_scale > 1.0
    c_fwd, c_bwd = encode_keyframes(
        module, first.to(dt), last.to(dt), g, cfg, fps, motion_bucket_id, noise_aug_strength
    )
    sigmas = sampling_sigmas(module.noise_scheduler, num_inference_steps)
    z = _initial_latents(
        module, b, num_frames, first.shape[-2], first.shape[-1], sigmas, g, device, latents, dt
    )
    guidance = frame_ramp(num_frames, min_guidance_scale, max_guidance_scale, b, device, dt) if cfg else None
    w = frame_ramp(num_frames, 1.0, 0.0, b, device, dt)

    order = trf_step_schedule(num_inference_steps, jump_length, jump_n_sample, repeat_step_ratio)
    last_id = order[0] - 1
    for step in order:
        if step > last_id:  # denoise σ_step -> σ_step+1 in both directions, blend the latents
            s, s_next = float(sigmas[step]), float(sigmas[step + 1])
            zf = euler_step(z, denoised(guided_prediction(net, z, s, c_fwd, guidance), z, s), s, s_next)
            zr = z.flip(1)
            zb = euler_step(zr, denoised(guided_prediction(net, zr, s, c_bwd, guidance), zr, s), s, s_next)
            z = w * zf + (w * zb).flip(1)
        else:  # jump back: re-noise from σ_{last+1} to σ_last
            std = math.sqrt(max(float(sigmas[last_id]) ** 2 - float(sigmas[last_id + 1]) ** 2, 0.0))
            z = z + torch.randn(z.shape, generator=g, device=device).to(dt) * std * noise_scale_ratio
        last_id = step
    if return_latents:
        return z
    return module.decode_latents(z.transpose(1, 2))


# ----------------------------------------------------------------------------------------------
# optical-flow baseline
# ----------------------------------------------------------------------------------------------
def flow_interpolate(
    first: torch.Tensor, last: torch.Tensor, num_frames: int, algorithm: str = "dis"
) -> torch.Tensor:
    """Interpolate ``num_frames`` frames (keyframes included) between ``first`` and ``last`` (b c h w in
    [-1, 1]) by bidirectional optical flow. For t in [0, 1] the flows to the keyframes are
    approximated from the keyframe flows under linear motion (Jiang et al., Super SloMo):
    ``F_t0 = -(1-t)t·F_01 + t²·F_10``, ``F_t1 = (1-t)²·F_01 - t(1-t)·F_10``; the frame is
    ``(1-t)·warp(I0, F_t0) + t·warp(I1, F_t1)``. Returns (b f c h w) in [-1, 1]."""
    if num_frames < 2:
        raise ValueError("flow interpolation needs num_frames >= 2")
    from i2vlab.metrics.extractors.flow import OpenCVFlow
    from i2vlab.metrics.functional import warp

    flow = OpenCVFlow(algorithm)  # the evaluator's OpenCV flow (DIS / Farneback), n 2 h w in pixels
    a, b = first.float(), last.float()
    f01, f10 = flow(a, b).to(a.device), flow(b, a).to(a.device)
    frames = []
    for t in torch.linspace(0.0, 1.0, num_frames).tolist():
        ft0 = -(1 - t) * t * f01 + t * t * f10
        ft1 = (1 - t) ** 2 * f01 - t * (1 - t) * f10
        frames.append((1 - t) * warp(a, ft0) + t * warp(b, ft1))
    return torch.stack(frames, dim=1).clamp(-1, 1)
