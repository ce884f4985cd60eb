"""I2V-Adapter sampling: image + prompt -> video.

What is new here (I2V-Adapter §3.3 and the official pipeline), on diffusers' ``DDIMScheduler`` and
this project's components:

- the clean first-frame latent z1 = VAE(image) is frame 0 of the latents at *every* step: the
  scheduler steps frames 1..F-1 only, frame 0 is never touched;
- Frame Similarity Prior (FSP): instead of pure noise, start at t0 from
  ``x_t0^i = sqrt(a_t0) D(z1) + sqrt(1 - a_t0) eps^i`` with ``D(z) = M_p * z + (1 - M_p) * GaussianBlur(z)``,
  M_p ~ Bernoulli(p) elementwise over (b c f h w), blur kernel 9 / sigma 18, all in latent space.
  ``fsp_t0`` in (0, 1] picks the first DDIM timestep <= t0·T (later steps only, as in SDEdit); ``None``
  starts at the first timestep of the schedule (961 for 25 "leading" steps, as the official code);
  ``fsp_p`` is the keep-probability (official 0.5);
- classifier-free guidance with one scale over text and image: the unconditional branch is the
  negative prompt + the CLIP embedding of an all-zero image;
- optional LAB a/b histogram matching of every frame to frame 0 (official post-processing);
- optional ControlNet (diffusers ``ControlNetModel``, run per frame, residuals added to the UNet).

Returns videos (b f c h w) in [-1, 1]; ``scripts/sample.py`` writes them as mp4 (``--gif`` for gif).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from einops import rearrange

from i2vlab.diffusion.schedules import sampling_scheduler
from i2vlab.models.content_adapter import encode_clip_image, has_content_adapter


# ----------------------------------------------------------------------------------------------
# Frame Similarity Prior
# ----------------------------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, kernel_size: int = 9, sigma: float = 18.0) -> torch.Tensor:
    """Gaussian blur over the last two axes: torchvision's ``gaussian_blur`` (reflect padding), what the
    official ``GaussianBlur(kernel_size=(9, 9), sigma=(18, 18))`` computes."""
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    shape = x.shape
    y = tv_blur(x.reshape(-1, 1, *shape[-2:]), [kernel_size, kernel_size], [float(sigma), float(sigma)])
    return y.reshape(shape)


def degrade(
    z: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
    kernel_size: int = 9,
    sigma: float = 18.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``D(z) = M_p * z + (1 - M_p) * blur(z)``; M_p ~ Bernoulli(p) elementwise (p = keep-probability),
    drawn as ``u >= 1 - p`` with u ~ U(0, 1) (at p = 0.5 the official ``rand >= 0.5``), or given as
    ``mask`` (1 = keep). Frame 0 is left un-degraded (it is the clean first frame). ``z``: b c f h w."""
    if mask is None:
        u = torch.rand(
            z.shape, generator=generator, device=z.device if generator is None else generator.device
        )
        keep = (u.to(z.device) >= 1 - p).to(z.dtype)
    else:
        if mask.shape != z.shape:
            raise ValueError(
                f"fsp_mask must have the latents' shape {tuple(z.shape)}, got {tuple(mask.shape)}"
            )
        keep = mask.to(z.device, z.dtype)
    blurred = rearrange(
        gaussian_blur(rearrange(z, "b c f h w -> b f c h w"), kernel_size, sigma), "b f c h w -> b c f h w"
    )
    out = keep * z + (1 - keep) * blurred
    out[:, :, 0] = z[:, :, 0]
    return out


def fsp_start_index(timesteps: torch.Tensor, t0: float | None, num_train_timesteps: int) -> int:
    """Index of the first sampling step for FSP start ``t0`` in (0, 1] (``None``: the first step)."""
    if t0 is None:
        return 0
    if not 0 < t0 <= 1:
        raise ValueError(f"fsp_t0 must be in (0, 1], got {t0}")
    idx = (timesteps <= t0 * num_train_timesteps).nonzero()
    if len(idx) == 0:
        raise ValueError(f"fsp_t0={t0} is below the last sampling timestep {int(timesteps[-1])}")
    return int(idx[0])


def initial_latents(
    z1: torch.Tensor,
    num_frames: int,
    scheduler: DDIMScheduler,
    generator: torch.Generator,
    fsp: bool = True,
    fsp_t0: float | None = None,
    fsp_p: float = 0.5,
    fsp_kernel: int = 9,
    fsp_sigma: float = 18.0,
    noise: torch.Tensor | None = None,
    fsp_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Starting latents (b c f h w, dtype of ``z1``) and the index of the first sampling step; frame 0 is
    ``z1`` exactly.

    FSP on: ``scheduler.add_noise(D(repeat(z1)), eps, t_start)``; off: pure noise at the first step.
    ``noise`` (b c f h w) and ``fsp_mask`` (b c f h w, 1 = keep) replace the draws from ``generator``
    (the official pipeline draws its mask from its generator and its noise from the global RNG)."""
    b, c, h, w = z1.shape
    shape = (b, c, num_frames, h, w)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
    noise = noise.to(z1.device, z1.dtype)
    if fsp:
        start = fsp_start_index(scheduler.timesteps, fsp_t0, scheduler.config.num_train_timesteps)
        t = scheduler.timesteps[start]
        prior = degrade(
            z1[:, :, None].expand(shape).contiguous(), fsp_p, generator, fsp_kernel, fsp_sigma, mask=fsp_mask
        )
        latents = scheduler.add_noise(prior, noise, t.reshape(1).to(z1.device))
    else:
        start = 0
        latents = noise * scheduler.init_noise_sigma
    latents[:, :, 0] = z1
    return latents, start


# ----------------------------------------------------------------------------------------------
# colour matching (post-processing)
# ----------------------------------------------------------------------------------------------
def _match_channel(src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    s_vals, s_idx, s_counts = np.unique(src.ravel(), return_inverse=True, return_counts=True)
    r_vals, r_counts = np.unique(ref.ravel(), return_counts=True)
    s_q = np.cumsum(s_counts) / src.size
    r_q = np.cumsum(r_counts) / ref.size
    return np.interp(s_q, r_q, r_vals)[s_idx].reshape(src.shape)


def color_match(video: torch.Tensor) -> torch.Tensor:
    """Histogram-match the a/b channels (CIELAB) of every frame to frame 0. ``video``: f c h w in [-1, 1]."""
    import cv2

    frames = (
        ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    )
    ref = cv2.cvtColor(frames[0], cv2.COLOR_RGB2LAB)
    out = [frames[0]]
    for fr in frames[1:]:
        lab = cv2.cvtColor(fr, cv2.COLOR_RGB2LAB).astype(np.float64)
        for ch in (1, 2):
            lab[..., ch] = _match_channel(lab[..., ch], ref[..., ch].astype(np.float64))
        out.append(cv2.cvtColor(np.clip(lab.round(), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB))
    arr = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return arr.to(video.device, video.dtype)


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------
def _prepare_control(control: torch.Tensor, b: int, f: int, height: int, width: int, device) -> torch.Tensor:
    """Control frames (b f c h w or f c h w, values in [0, 1]) -> ((b f) c H W) at the pixel size."""
    if control.ndim == 4:
        control = control[None].expand(b, -1, -1, -1, -1)
    if control.shape[:2] != (b, f):
        raise ValueError(f"control frames must be (b={b}, f={f}, c, h, w), got {tuple(control.shape)}")
    x = rearrange(control.float(), "b f c h w -> (b f) c h w")
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.to(device)


def _latent_dtype(unet: Any) -> torch.dtype:
    """Latents and the scheduler's arithmetic: float32, or float64 for a float64 UNet (parity tests)."""
    return torch.float64 if getattr(unet, "dtype", torch.float32) == torch.float64 else torch.float32


@torch.no_grad()
def sample_i2v(
    module: Any,
    prompts: Sequence[str],
    images: torch.Tensor | None,
    num_frames: int = 16,
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    fsp: bool = True,
    fsp_t0: float | None = None,
    fsp_p: float = 0.5,
    fsp_kernel: int = 9,
    fsp_sigma: float = 18.0,
    eta: float = 0.0,
    color_match_frames: bool = False,
    height: int | None = None,
    width: int | None = None,
    controlnet: Any = None,
    control_frames: torch.Tensor | None = None,
    controlnet_scale: float = 1.0,
    scheduler_overrides: dict | None = None,
    return_latents: bool = False,
    output_type: str = "video",
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    negative_image_embeds: torch.Tensor | None = None,
    first_frame_latents: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    fsp_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image(s) (b c h w in [-1, 1]) + prompts -> videos (b f c h w in [-1, 1]) with frame 0 = the image.

    ``module`` is the I2V-Adapter LightningModule (unet with the first-frame processors, vae, text and
    image encoders, training scheduler). ``controlnet``: a diffusers ``ControlNetModel`` with
    ``control_frames`` (b f 3 H W in [0, 1]). ``return_latents``: also return the final latents;
    ``output_type="latent"``: return only the final latents (b c f h w), no decoding.

    Precomputed inputs, as diffusers pipelines accept them (each replaces one encoder call or draw):
    ``prompt_embeds`` / ``negative_prompt_embeds`` (b, L, d: text encoder output); ``image_embeds`` /
    ``negative_image_embeds`` (b, tokens, d: what the UNet's IP-Adapter projection takes, the CLIP
    penultimate hidden states); ``first_frame_latents`` (b c h w: scaled VAE latent of the image,
    ``images`` may then be ``None`` unless the CLIP embedding is computed from it); ``noise`` and
    ``fsp_mask`` (b c f h w, see :func:`initial_latents`)."""
    device = module.device
    if first_frame_latents is not None:
        b = first_frame_latents.shape[0]
    elif images is not None:
        b = images.shape[0]
    else:
        raise ValueError("give images (or first_frame_latents)")
    if len(prompts) != b:
        raise ValueError(f"{len(prompts)} prompts for {b} images")
    if images is not None:
        if height is not None and width is not None and images.shape[-2:] != (height, width):
            images = F.interpolate(images.float(), size=(height, width), mode="bilinear", align_corners=False)
        images = images.to(device)
        height, width = images.shape[-2:]
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    dtype = module.unet.dtype
    lat_dtype = _latent_dtype(module.unet)

    sched = sampling_scheduler(
        module.noise_scheduler, DDIMScheduler, **{"clip_sample": False, **(scheduler_overrides or {})}
    )
    sched.set_timesteps(num_inference_steps, device=device)
    if lat_dtype == torch.float64:  # the step's arithmetic in the latents' dtype (diffusers keeps float32
        sched.alphas_cumprod = sched.alphas_cumprod.to(lat_dtype)  # scalars; 0.11's add_noise cast them)

    if first_frame_latents is None:
        z1 = module.encode_image(images, generator=g)  # b c h w, scaled; a VAE sample as the official code
    else:
        z1 = first_frame_latents
    z1 = z1.to(device, lat_dtype)
    latents, start = initial_latents(
        z1, num_frames, sched, g, fsp, fsp_t0, fsp_p, fsp_kernel, fsp_sigma, noise=noise, fsp_mask=fsp_mask
    )

    cfg = guidance_scale > 1.0
    text = module.encode_prompt(list(prompts)) if prompt_embeds is None else prompt_embeds
    if cfg:
        neg = (
            module.encode_prompt([negative_prompt or ""] * b)
            if negative_prompt_embeds is None
            else negative_prompt_embeds
        )
        text = torch.cat([neg.to(text.device), text])
    unet_kwargs: dict[str, Any] = {}
    if has_content_adapter(module.unet):
        if image_embeds is None and images is None:
            raise ValueError("the content adapter needs images (or image_embeds)")
        img = encode_clip_image(module.image_encoder, images) if image_embeds is None else image_embeds
        if cfg:
            neg_img = (
                encode_clip_image(module.image_encoder, None, batch_size=b)
                if negative_image_embeds is None
                else negative_image_embeds
            )
            img = torch.cat([neg_img.to(img.device), img])
        unet_kwargs["added_cond_kwargs"] = {"image_embeds": [img[:, None].to(device, dtype)]}
    ehs = text.to(device).repeat_interleave(
        num_frames, dim=0
    )  # UNetMotionModel does not repeat it over frames
    control = None
    if controlnet is not None:
        if control_frames is None:
            raise ValueError("controlnet given without control_frames")
        if height is None:
            height, width = (s * 8 for s in z1.shape[-2:])
        control = _prepare_control(control_frames, b, num_frames, height, width, device)
        if cfg:
            control = torch.cat([control, control])

    for t in sched.timesteps[start:]:
        x = torch.cat([latents, latents]) if cfg else latents
        x = sched.scale_model_input(x, t)
        kw = dict(unet_kwargs)
        if control is not None:
            down, mid = controlnet(
                rearrange(x, "b c f h w -> (b f) c h w").to(controlnet.dtype),
                t,
                encoder_hidden_states=ehs.to(controlnet.dtype),
                controlnet_cond=control.to(controlnet.dtype),
                conditioning_scale=controlnet_scale,
                return_dict=False,
            )
            kw["down_block_additional_residuals"] = [r.to(dtype) for r in down]
            kw["mid_block_additional_residual"] = mid.to(dtype)
        eps = module.unet(x.to(dtype), t, encoder_hidden_states=ehs.to(dtype), **kw).sample.to(lat_dtype)
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        # the scheduler steps frames 1..F-1 only; frame 0 stays the clean first-frame latent
        step = sched.step(eps[:, :, 1:], t, latents[:, :, 1:], eta=eta, generator=g if eta > 0 else None)
        latents = torch.cat([latents[:, :, :1], step.prev_sample.to(latents.dtype)], dim=2)

    if output_type == "latent":
        return latents
    if output_type != "video":
        raise ValueError(f"output_type must be 'video' or 'latent', got {output_type!r}")
    video = module.decode_latents(latents)
    if color_match_frames:
        video = torch.stack([color_match(v) for v in video])
    return (video, latents) if return_latents else video
