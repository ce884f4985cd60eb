"""DynamiCrafter sampling: DDIM (50 steps, eta 1) with classifier-free guidance on a trained module.

Follows ``lvdm/models/samplers/ddim.py`` / ``ddim_multiplecond.py`` and ``scripts/evaluation/inference.py``
(Doubiiu/DynamiCrafter):

- timesteps from diffusers' ``DDIMScheduler.set_timesteps`` with the backbone's spacing (``leading`` +
  offset 1 = LVDM "uniform" [1, 21, ..., 981] for the 256 model; ``trailing`` = "uniform_trailing"
  [19, 39, ..., 999] for 512/1024); the update is the LVDM DDIM step, written here because the
  dynamic rescale multiplies the predicted x0 by ``scale_arr[t_prev] / scale_arr[t]`` inside the step;
- standard CFG: uncond = ("" text, CLIP of a zero image, the *same* concatenated latent);
- multi-condition CFG: ``e(0,0) + s_img [e(img,0) - e(0,0)] + s_txt [e(img,txt) - e(img,0)]``;
- ``guidance_rescale`` (0.7 for the v-prediction models) against the conditional output;
- interpolation (``last_images``: first and last latents concatenated, zeros between) and loop mode
  (the same image at both ends).

Layouts: images b c h w in [-1, 1]; latents b c f h w; returns b f c h w in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg


def combine_guidance(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    uncond_text: torch.Tensor | None = None,
    cfg_img: float | None = None,
) -> torch.Tensor:
    """Standard CFG (``uncond_text`` None) or multi-condition CFG with separate image / text scales:
    ``uncond + cfg_img (uncond_text - uncond) + guidance_scale (cond - uncond_text)``, where
    ``uncond_text`` is the output with the image but without text."""
    if uncond_text is None:
        return uncond + guidance_scale * (cond - uncond)
    s_img = guidance_scale if cfg_img is None else cfg_img
    return uncond + s_img * (uncond_text - uncond) + guidance_scale * (cond - uncond_text)


def ddim_step(
    x: torch.Tensor,
    model_out: torch.Tensor,
    a_t: float,
    a_prev: float,
    eta: float,
    prediction_type: str,
    x0_rescale: float = 1.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One LVDM DDIM update x_t -> x_{t_prev} (``a_*`` are cumulative alphas)."""
    if prediction_type == "v_prediction":
        pred_x0 = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * model_out
        eps = math.sqrt(a_t) * model_out + math.sqrt(1 - a_t) * x
    elif prediction_type == "epsilon":
        eps = model_out
        pred_x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    pred_x0 = pred_x0 * x0_rescale
    sigma = eta * math.sqrt(max((1 - a_prev) / max(1 - a_t, 1e-12) * (1 - a_t / a_prev), 0.0))
    out = math.sqrt(a_prev) * pred_x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
    if sigma > 0 and noise is not None:
        out = out + sigma * noise
    return out


def ddim_timesteps(scheduler_config, num_inference_steps: int) -> list[int]:
    """Descending DDIM timesteps with the training scheduler's spacing."""
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(num_inference_steps)
    return [int(t) for t in sched.timesteps]


@torch.no_grad()
def sample_dynamicrafter(
    module,
    prompts: Sequence[str],
    images: torch.Tensor,
    num_frames: int | None = None,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 1.0,
    guidance_rescale: float = 0.0,
    multiple_cond_cfg: bool = False,
    cfg_img: float | None = None,
    fs: int | None = None,
    last_images: torch.Tensor | None = None,
    loop: bool = False,
    negative_prompt: str = "",
    return_latents: bool = False,
) -> torch.Tensor:
    """Generate videos with a trained :class:`~i2vlab.methods.dynamicrafter.DynamiCrafter`.

    Args:
        images: conditioning images (b c h w in [-1, 1]); the video size follows them.
        num_frames: frames (the context learner's ``video_length`` for per-frame image tokens).
        guidance_scale: s_txt (and s for standard CFG); 1 disables guidance.
        multiple_cond_cfg / cfg_img: multi-condition CFG and its image scale s_img (default s_txt).
        fs: frame stride (256) or fps (512/1024); smaller -> more motion; the UNet's ``default_fs`` if None.
        last_images: end keyframes (interpolation); ``loop``: the start image at both ends.
    """
    dev = module.device
    b = len(prompts)
    images = images.to(dev).float()
    if images.shape[0] != b:
        raise ValueError(f"{b} prompts but {images.shape[0]} images")
    vl = getattr(module.image_proj_model.config, "video_length", None)
    f = int(num_frames or vl or 16)
    interp = last_images is not None or loop
    if interp and not module.interp_mode:
        raise ValueError("last_images / loop need a model trained with method.interp_mode=true")
    if module.interp_mode and not interp:
        loop = interp = True  # an interpolation model given one image: loop mode

    # conditions: (img, txt), (0, 0) and, for multi-condition CFG, (img, 0)
    text = module.encode_prompt(list(prompts))
    null = module.encode_prompt([negative_prompt] * b)
    img_tokens = module.image_context(images).float()
    uncond_img = module.image_context(torch.zeros_like(images)).float()
    z0 = module.encode_image(images)  # b c h w
    concat = None
    if module.vdg:
        zf = z0[:, :, None].expand(-1, -1, f, -1, -1)
        if interp:
            zl = z0 if last_images is None else module.encode_image(last_images.to(dev).float())
            concat = module.concat_latents(
                zf.contiguous(), torch.zeros(b, dtype=torch.long, device=dev), last=zl
            )
        else:
            concat = zf.contiguous()
    fs_t = None if fs is None else torch.full((b,), int(fs), device=dev, dtype=torch.long)
    contexts = [torch.cat([text, img_tokens], 1)]
    if guidance_scale != 1.0 or multiple_cond_cfg:
        contexts.append(torch.cat([null, uncond_img], 1))
        if multiple_cond_cfg:
            contexts.append(torch.cat([null, img_tokens], 1))
    n = len(contexts)
    cond = {
        "context": torch.cat(contexts),
        "fs": None if fs_t is None else fs_t.repeat(n),
        "concat": None if concat is None else concat.repeat(n, 1, 1, 1, 1),
    }

    sched_cfg = module.noise_scheduler.config
    alphas = module.noise_scheduler.alphas_cumprod.double().cpu()
    pred_type = sched_cfg.prediction_type
    timesteps = ddim_timesteps(sched_cfg, num_inference_steps)
    scale = (
        module.x0_scale(torch.arange(sched_cfg.num_train_timesteps)).cpu()
        if module.use_dynamic_rescale
        else None
    )

    g = torch.Generator(device="cpu").manual_seed(int(seed))
    h, w = z0.shape[-2:]
    x = torch.randn((b, module.latent_channels, f, h, w), generator=g).to(dev)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        a_t = float(alphas[t])
        a_prev = float(alphas[t_prev]) if t_prev is not None else float(alphas[0])
        tt = torch.full((b * n,), t, device=dev, dtype=torch.long)
        out = module.denoise(x.repeat(n, 1, 1, 1, 1), tt, cond).float().chunk(n)
        if n == 1:
            model_out = out[0]
        else:
            model_out = combine_guidance(out[0], out[1], guidance_scale, out[2] if n == 3 else None, cfg_img)
            if guidance_rescale > 0:
                model_out = rescale_noise_cfg(model_out, out[0], guidance_rescale=guidance_rescale)
        rescale = 1.0
        if scale is not None:
            rescale = float((scale[t_prev] if t_prev is not None else scale[0]) / scale[t])
        noise = torch.randn(x.shape, generator=g).to(dev) if eta > 0 else None
        x = ddim_step(x, model_out, a_t, a_prev, eta, pred_type, rescale, noise)
    if return_latents:
        return x
    return module.decode_latents(x)
