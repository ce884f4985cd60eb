"""I2V-Adapter's sampling priors: the Frame Similarity Prior (starting latents) and the official
colour post-processing (LAB a/b histogram matching to frame 0). Used by
:class:`~i2vlab.pipelines.i2v_adapter.I2VAdapterPipeline`; see its module for the method.

Layouts: latents b c f h w; videos f c h w in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler
from einops import rearrange


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
