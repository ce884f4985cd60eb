"""LVDM's DDIM sampling maths (DynamiCrafter's ``lvdm/models/samplers/ddim.py`` and
``ddim_multiplecond.py``), on any model callable: the update with eta, the dynamic-rescale factor on
the predicted x0 (1 on the last step, as LVDM's ``ddim_scale_arr_prev``), standard and
multi-condition classifier-free guidance, guidance rescale. Verified against the official samplers
in ``tests/test_parity_dynamicrafter.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
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
