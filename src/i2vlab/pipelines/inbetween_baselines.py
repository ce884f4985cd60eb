"""The baselines of the Generative Inbetweening paper's Table 1, on this project's SVD components:

- :func:`sample_trf` (Time Reversal Fusion, Feng et al. 2024, ``method=trf``): the unmodified SVD in
  both directions; the two Euler-stepped latents are blended after each step with per-frame linear
  weights (forward 1 -> 0, backward 0 -> 1); per-frame CFG 1 -> 3 per path; RePaint-style jumps back
  (``jump_length``, ``jump_n_sample``, ``repeat_step_ratio``, ``noise_scale_ratio``).
- :func:`flow_interpolate` (``method=flow``): classical bidirectional optical-flow interpolation
  (OpenCV DIS or Farneback flow, backward warping with the linear-motion flow approximation of
  Super SloMo, occlusion-agnostic blending). Needs no weights; a stand-in for FILM.
"""

from __future__ import annotations

import math

import torch

from i2vlab.diffusion.edm import (
    denoised,
    euler_step,
    sampling_sigmas,
    work_dtype,
)
from i2vlab.pipelines.svd_common import (
    _check_keyframes,
    _initial_latents,
    encode_keyframes,
    frame_ramp,
    guided_prediction,
)


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
