"""DynamiCrafter sampling: DDIM (50 steps, eta 1) with classifier-free guidance on a trained module.

Follows ``lvdm/models/samplers/ddim.py`` / ``ddim_multiplecond.py`` and ``scripts/evaluation/inference.py``
``image_guided_synthesis`` (Doubiiu/DynamiCrafter); verified against them in
``tests/test_parity_dynamicrafter.py``:

- timesteps as LVDM's ``make_ddim_timesteps`` (:func:`~i2vlab.models.dynamicrafter.schedule.ddim_timesteps`):
  ``leading`` + offset 1 = LVDM "uniform" [1, 21, ..., 981] for the 256 model; ``trailing`` =
  "uniform_trailing" [19, 39, ..., 999] for 512/1024; cumulative alphas in float64
  (:func:`~i2vlab.models.dynamicrafter.schedule.alphas_cumprod`);
- the LVDM DDIM update, written here (:func:`ddim_step`) because the dynamic rescale multiplies the
  predicted x0 by ``scale_arr[t_prev] / scale_arr[t]`` inside the step (1 on the last step, as
  LVDM's ``ddim_scale_arr_prev``);
- standard CFG: uncond = ("" text, CLIP of a zero image, the *same* concatenated latent); guidance only
  when the text scale is not 1 (as the official samplers);
- multi-condition CFG: ``e(0,0) + s_img [e(img,0) - e(0,0)] + s_txt [e(img,txt) - e(img,0)]``;
- ``guidance_rescale`` (0.7 for the v-prediction models) against the conditional output;
- interpolation (``last_images``: first and last latents concatenated, zeros between) and loop mode
  (the same image at both ends).

:func:`ddim_sample` is the step loop on any model callable (no Lightning); :func:`sample_dynamicrafter`
builds the conditions from a trained module and runs it. The initial noise and the per-step noise
(eta > 0) come from a seeded generator, or are given (``x_T``, ``step_noise``) to replay a run.

Layouts: images b c h w in [-1, 1]; latents b c f h w; returns b f c h w in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from i2vlab.models.dynamicrafter.schedule import alphas_cumprod, ddim_timesteps, dynamic_rescale_table

__all__ = ["combine_guidance", "ddim_sample", "ddim_step", "ddim_timesteps", "sample_dynamicrafter"]


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


def ddim_sample(
    model_fn: Callable[[torch.Tensor, int], Sequence[torch.Tensor]],
    x: torch.Tensor,
    alphas: torch.Tensor,
    timesteps: Sequence[int],
    prediction_type: str,
    guidance_scale: float = 1.0,
    cfg_img: float | None = None,
    guidance_rescale: float = 0.0,
    eta: float = 1.0,
    x0_scale: torch.Tensor | None = None,
    step_noise: Callable[[int, torch.Size], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The LVDM DDIM loop (``DDIMSampler.ddim_sampling`` / ``p_sample_ddim``).

    Args:
        model_fn: ``(x_t, t) ->`` model outputs, one per condition: ``[cond]`` (no guidance),
            ``[cond, uncond]`` (standard CFG) or ``[cond, uncond, image-only]`` (multi-condition CFG).
        x: the initial noise x_T (b c f h w).
        alphas: cumulative alphas of the training schedule (float64, indexed by timestep).
        timesteps: descending DDIM timesteps.
        guidance_scale / cfg_img / guidance_rescale: s_txt (s), s_img (default s_txt), rescale phi.
        x0_scale: the dynamic-rescale table ``scale_arr`` (None when off); pred x0 is multiplied by
            ``scale_arr[t_prev] / scale_arr[t]``, and by 1 on the last step.
        step_noise: ``(step index, shape) ->`` the noise added at that step when eta > 0.
    """
    for i, t in enumerate(timesteps):
        last = i + 1 == len(timesteps)
        t_prev = None if last else timesteps[i + 1]
        a_t = float(alphas[t])
        a_prev = float(alphas[0]) if last else float(alphas[t_prev])
        out = [o.to(x.dtype) for o in model_fn(x, t)]
        if len(out) == 1:
            model_out = out[0]
        else:
            model_out = combine_guidance(
                out[0], out[1], guidance_scale, out[2] if len(out) == 3 else None, cfg_img
            )
            if guidance_rescale > 0:
                model_out = rescale_noise_cfg(model_out, out[0], guidance_rescale=guidance_rescale)
        rescale = 1.0
        if x0_scale is not None and not last:
            rescale = float(x0_scale[t_prev]) / float(x0_scale[t])
        noise = step_noise(i, x.shape) if eta > 0 and step_noise is not None else None
        x = ddim_step(x, model_out, a_t, a_prev, eta, prediction_type, rescale, noise)
    return x


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
    x_T: torch.Tensor | None = None,
    step_noise: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate videos with a trained :class:`~i2vlab.methods.dynamicrafter.DynamiCrafter`.

    Args:
        images: conditioning images (b c h w in [-1, 1]); the video size follows them.
        num_frames: frames (the context learner's ``video_length`` for per-frame image tokens).
        guidance_scale: s_txt (and s for standard CFG); 1 disables guidance.
        multiple_cond_cfg / cfg_img: multi-condition CFG and its image scale s_img (default s_txt).
        fs: frame stride (256) or fps (512/1024); smaller -> more motion; the UNet's ``default_fs`` if None.
        last_images: end keyframes (interpolation); ``loop``: the start image at both ends.
        x_T / step_noise: the initial latents and the noise of each step (eta > 0) instead of drawing
            them from ``seed`` (to replay another sampler's run).
    """
    dev = module.device
    b = len(prompts)
    images = images.to(dev)
    images = images.to(torch.promote_types(images.dtype, torch.float32))  # float64 stays float64
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
    img_tokens = module.image_context(images)
    ctx_dtype = torch.promote_types(img_tokens.dtype, torch.float32)
    img_tokens = img_tokens.to(ctx_dtype)
    text = module.encode_prompt(list(prompts)).to(ctx_dtype)
    z0 = module.encode_image(images)  # b c h w
    concat = None
    if module.vdg:
        zf = z0[:, :, None].expand(-1, -1, f, -1, -1)
        if interp:
            zl = z0 if last_images is None else module.encode_image(last_images.to(dev, images.dtype))
            concat = module.concat_latents(
                zf.contiguous(), torch.zeros(b, dtype=torch.long, device=dev), last=zl
            )
        else:
            concat = zf.contiguous()
    fs_t = None if fs is None else torch.full((b,), int(fs), device=dev, dtype=torch.long)
    contexts = [torch.cat([text, img_tokens], 1)]
    if guidance_scale != 1.0:
        null = module.encode_prompt([negative_prompt] * b).to(ctx_dtype)
        uncond_img = module.image_context(torch.zeros_like(images)).to(ctx_dtype)
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
    scale = None
    if module.use_dynamic_rescale:
        T = sched_cfg.num_train_timesteps
        scale = dynamic_rescale_table(T, module.base_scale, module.turning_step)

    def model_fn(x: torch.Tensor, t: int) -> Sequence[torch.Tensor]:
        tt = torch.full((b * n,), t, device=dev, dtype=torch.long)
        return module.denoise(x.repeat(n, 1, 1, 1, 1), tt, cond).chunk(n)

    g = torch.Generator(device="cpu").manual_seed(int(seed))
    h, w = z0.shape[-2:]
    shape = (b, module.latent_channels, f, h, w)
    if x_T is None:
        x = torch.randn(shape, generator=g).to(dev)
    else:
        x = x_T.to(dev)
        if tuple(x.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x.shape)}, expected {shape}")
    if step_noise is None:
        noise_fn = lambda i, s: torch.randn(tuple(s), generator=g).to(dev, x.dtype)  # noqa: E731
    else:
        noise_fn = lambda i, s: step_noise[i].to(dev, x.dtype)  # noqa: E731
    x = ddim_sample(
        model_fn,
        x,
        alphas_cumprod(sched_cfg),
        ddim_timesteps(sched_cfg, num_inference_steps),
        sched_cfg.prediction_type,
        guidance_scale=guidance_scale,
        cfg_img=cfg_img,
        guidance_rescale=guidance_rescale,
        eta=eta,
        x0_scale=scale,
        step_noise=noise_fn,
    )
    if return_latents:
        return x
    return module.decode_latents(x)
