"""DynamiCrafter's (LVDM's) noise-schedule tables: cumulative alphas in float64, DDIM timesteps, and
the dynamic latent rescale of the 512/1024 models.

LVDM (``lvdm/models/ddpm3d.py`` ``register_schedule``, ``lvdm/models/utils_diffusion.py`` in
Doubiiu/DynamiCrafter) computes betas, the zero-terminal-SNR rescale and the cumulative product in
float64 and only then stores float32 buffers. diffusers' ``DDPMScheduler`` computes the same
formulas in float32 throughout, which drifts by up to ~1e-6 relative (4e-5 at t = 998 with
zero-terminal SNR). :func:`alphas_cumprod` recomputes the table in float64 with diffusers'
own ``rescale_zero_terminal_snr``; :func:`use_float64_tables` puts it into a diffusers scheduler, so
training in float32 sees LVDM's float32 values and float64 runs see exact ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def alphas_cumprod(config: Any) -> torch.Tensor:
    """Cumulative alphas (float64, length ``num_train_timesteps``) of a diffusers scheduler config with
    ``beta_schedule`` ``scaled_linear`` (LVDM "linear") or ``linear``, optionally
    ``rescale_betas_zero_snr``."""
    T = int(_get(config, "num_train_timesteps", 1000))
    start, end = float(_get(config, "beta_start", 0.00085)), float(_get(config, "beta_end", 0.012))
    kind = _get(config, "beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule {kind!r}: LVDM tables exist for scaled_linear and linear only")
    if _get(config, "rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def use_float64_tables(scheduler: Any) -> Any:
    """Replace ``betas`` / ``alphas`` / ``alphas_cumprod`` of a diffusers DDPM/DDIM scheduler by the
    float64 tables (its ``add_noise`` / ``get_velocity`` cast them to the sample's dtype). Schedulers
    with another beta schedule are left as they are. Returns the scheduler."""
    cfg = scheduler.config
    if (
        _get(cfg, "beta_schedule") not in ("scaled_linear", "linear")
        or _get(cfg, "trained_betas") is not None
    ):
        return scheduler
    ac = alphas_cumprod(cfg)
    prev = torch.cat([ac.new_ones(1), ac[:-1]])
    scheduler.alphas_cumprod = ac
    scheduler.alphas = ac / prev
    scheduler.betas = 1.0 - scheduler.alphas
    return scheduler


def ddim_timesteps(config: Any, num_inference_steps: int) -> list[int]:
    """Descending DDIM timesteps as LVDM's ``make_ddim_timesteps``.

    ``timestep_spacing`` ``leading`` (LVDM "uniform", the 256 model): ``range(0, T, T // n) +
    steps_offset``, which has *more* than ``n`` steps when ``n`` does not divide ``T`` (31 for 30
    steps, as the official sampler runs; diffusers' ``leading`` would give 30); a step that would
    fall on ``T`` is dropped (LVDM fails there). ``trailing`` (LVDM
    "uniform_trailing", 512/1024): ``round(arange(T, 0, -T / n)) - 1``, as diffusers.
    """
    T = int(_get(config, "num_train_timesteps", 1000))
    n = int(num_inference_steps)
    spacing = _get(config, "timestep_spacing", "leading")
    if spacing == "leading":
        ts = np.arange(0, T, T // n) + int(_get(config, "steps_offset", 0) or 0)
        ts = ts[ts < T]  # e.g. 3 steps -> [1, 334, 667] (LVDM indexes t = 1000 there and fails)
    elif spacing == "trailing":
        ts = np.flip(np.round(np.arange(T, 0, -T / n))).astype(np.int64) - 1
    else:
        raise ValueError(f"timestep_spacing {spacing!r}: use leading (LVDM uniform) or trailing")
    return [int(t) for t in ts[::-1]]


def dynamic_rescale_table(
    num_timesteps: int = 1000, base_scale: float = 0.7, turning_step: int = 400
) -> torch.Tensor:
    """``scale_arr`` (float64): linspace(1 -> base_scale) over t in [0, turning_step), then base_scale."""
    arr = np.concatenate(
        [np.linspace(1.0, base_scale, turning_step), np.full(num_timesteps - turning_step, base_scale)]
    )
    return torch.tensor(arr, dtype=torch.float64)
